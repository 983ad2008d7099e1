"""The live engine: N workers send each request as it comes, under the run's one limiter.

```
requests --> workers (N = concurrency): limiter -> HTTP -> retry by error class --> results
```

A fatal error (bad key, unpaid account) cancels the workers at once; the run journals what finished.
"""

from __future__ import annotations

import dataclasses
import logging

import anyio
import httpx
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from batchrun.engines.base import RunContext
from batchrun.engines.channels import receive
from batchrun.engines.outcomes import Tries, error_result, ok_result
from batchrun.engines.structured import as_json, invalid_json_error, wants_json
from batchrun.errors import ErrorClass, ProviderError
from batchrun.limits.pacing import Limiter
from batchrun.limits.retry import BAD_RESPONSE_TRIES, BackoffWait, final, retrying
from batchrun.net.bodies import MIB
from batchrun.net.endpoint import Contact
from batchrun.net.transport import Answer, Sender, Timeouts, make_transport
from batchrun.records import Request, Result
from batchrun.report.progress import Snapshot

DRAIN_SECONDS = 30.0  # after an interrupt, how long requests in flight may take to finish

log = logging.getLogger("batchrun")


class LiveEngine:
    """Sends every request it is given through one provider, `concurrency` at a time, within the limits."""

    def __init__(
        self,
        context: RunContext,
        transport: httpx.AsyncBaseTransport | None = None,
        limiter: Limiter | None = None,
    ) -> None:
        """`limiter`: another than the run's own (a Ray worker's leases the schedule of the whole cluster)."""
        self.context = context
        limits = context.job.limits
        self.limits = limits
        self.limiter = limiter or Limiter(
            concurrency=limits.concurrency,
            requests_per_minute=limits.requests_per_minute,
            tokens_per_minute=limits.tokens_per_minute,
            adaptive=limits.adaptive,
        )
        self.timeouts = Timeouts(connect_s=limits.connect_timeout_s, total_s=limits.timeout_s)
        self.contact = Contact(context.provider.url())
        self.in_flight = 0
        self._transport = transport
        self._scope = anyio.CancelScope()

    async def run(
        self, requests: MemoryObjectReceiveStream[Request], results: MemoryObjectSendStream[Result]
    ) -> None:
        """Start `concurrency` workers on the stream; return when it ends or the run stops."""
        concurrency = self.limits.concurrency
        transport = self._transport or make_transport(concurrency)
        max_reply = int(self.limits.max_reply_mib * MIB)
        sender = Sender(transport, self.context.provider, self.timeouts, max_reply)
        async with transport, requests, results:
            with self._scope:
                async with anyio.create_task_group() as workers:
                    for _ in range(concurrency):
                        workers.start_soon(self._worker, sender, requests.clone(), results.clone())

    def interrupt(self) -> str:
        """No new requests; those in flight get `DRAIN_SECONDS` to finish."""
        self._scope.deadline = anyio.current_time() + DRAIN_SECONDS
        return f"waiting up to {DRAIN_SECONDS:.0f} s for {self.in_flight} in flight"

    def abort(self) -> None:
        """Stop every worker now."""
        self._scope.cancel()

    def describe(self, snapshot: Snapshot) -> Snapshot:
        """The snapshot with what is in flight and the limiter's state."""
        limiter = self.limiter
        adaptive = limiter.adaptive
        return dataclasses.replace(
            snapshot,
            in_flight=self.in_flight - limiter.waiting,
            cooldown_s=limiter.cooldown_left_s,
            concurrency=adaptive.concurrency if adaptive is not None else None,
            pace_per_s=limiter.pace_per_s,
            header_pace_per_s=limiter.header_pace_per_s,
            down_s=limiter.breaker.down_s if limiter.breaker.is_open else None,
            waiting=limiter.waiting,
            binding=limiter.binding,
        )

    async def _worker(
        self,
        sender: Sender,
        requests: MemoryObjectReceiveStream[Request],
        results: MemoryObjectSendStream[Result],
    ) -> None:
        context = self.context
        async with requests, results:
            while (request := await receive(requests)) is not None:
                if context.draining:
                    return
                reserved = context.reserve(request)
                if reserved is None:
                    return
                tries = Tries(worst_usd=reserved)
                self.in_flight += 1
                try:
                    result = await self._process(sender, request, tries)
                finally:
                    self.in_flight -= 1
                    context.settle(reserved, tries.charged_usd)
                try:
                    results.send_nowait(result)  # the usual case, and no cancel scope to pay for
                except anyio.WouldBlock:
                    # Shielded: a stop that cancels the workers must not drop an answer already paid for.
                    with anyio.CancelScope(shield=True):
                        await results.send(result)

    async def _process(self, sender: Sender, request: Request, tries: Tries) -> Result:
        """One row, with retries; a fatal error stops the run and cancels this task."""
        limits = self.limits
        context = self.context
        json_mode = wants_json(request.body)
        tries.retry_json = json_mode and limits.retry_invalid_json
        try:
            try:
                answer = await self._attempt(sender, request, tries)
            except ProviderError as exc:
                # Most rows succeed at once, so tenacity (a tenth of a row's CPU) steps in only on a failure.
                if not exc.retryable or tries.counted >= limits.max_attempts:
                    raise
                wait = BackoffWait(limits.backoff_base_s, limits.backoff_max_s)
                await anyio.sleep(wait.after(tries.made, exc))
                retry = retrying(
                    limits.max_attempts,
                    limits.backoff_base_s,
                    limits.backoff_max_s,
                    lambda: tries.counted,
                    tries_before=tries.made,
                )
                async for try_ in retry:
                    with try_:
                        answer = await self._attempt(sender, request, tries)
        except ProviderError as exc:
            if exc.retryable:  # out of tries: an endpoint that never answered stops the run now
                exc = self.contact.check(exc, last_try=True) or exc
            if exc.error_class is ErrorClass.FATAL:
                context.fail(exc)
                self._scope.cancel()
            return error_result(request.custom_id, exc, tries)
        result = ok_result(request, answer, tries, context.prices, json_mode=json_mode)
        context.remember(request, result)
        return result

    async def _attempt(self, sender: Sender, request: Request, tries: Tries) -> Answer:
        """One try of one row, through the limiter; failures teach the limiter before they are raised."""
        context = self.context
        ticket = await self.limiter.acquire(request)
        tries.made += 1
        tries.counted += 1
        context.counters.sent += 1
        try:
            answer = await sender.attempt(request)
        except ProviderError as failed:
            exc = self._judge(failed, tries)
            self.limiter.on_failure(ticket, exc, self.limits.backoff_base_s)
            if self.limiter.breaker.is_open:
                tries.counted -= 1  # the provider is down: not this row's fault, nor its budget
                self.limiter.breaker.check_outage(self.limits.max_outage_s)
            context.counters.attempt_failed(exc, retried=tries.counted < self.limits.max_attempts)
            raise exc from None
        except BaseException:
            self.limiter.abandon(ticket)
            raise
        self.limiter.on_success(ticket, answer.reply.usage, answer.rate)
        self.contact.answered()
        if context.budget is not None:
            tries.charge(context.prices.cost(request.body.get("model"), answer.reply.usage))
        text = answer.reply.completion
        if tries.retry_json and tries.counted < self.limits.max_attempts and as_json(text) is None:
            # The answer was paid for even though it is sent again: the row's cost includes it.
            tries.discarded_usd += context.prices.cost(request.body.get("model"), answer.reply.usage) or 0
            raise invalid_json_error(text)
        return answer

    def _judge(self, exc: ProviderError, tries: Tries) -> ProviderError:
        """What a failed try means for the row and the run (see `batchrun.limits.retry`'s classes).

        A reply the server completed (2xx) was most likely billed, readable or not. An unreadable one is
        asked for `BAD_RESPONSE_TRIES` times at most. An endpoint that never answered stops the run.
        """
        if self.context.budget is not None and exc.status is not None and 200 <= exc.status < 300:
            tries.charge(None)
        if exc.error_type == "bad_response":
            tries.unreadable += 1
            if tries.unreadable >= BAD_RESPONSE_TRIES:
                exc = final(exc)
        return self.contact.check(exc, last_try=False) or exc
