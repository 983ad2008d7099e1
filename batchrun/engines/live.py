"""The run: one anyio task group with a producer, N workers and one writer.

```
producer --requests--> workers (N = concurrency) --results--> writer --> journal
   \\--- rows already answered (cache) or that cannot be sent ---/
```

Memory stays flat: the input is read a slice at a time, the request stream is bounded (back-pressure on
the producer), and results leave as they arrive. A fatal error (bad key, unpaid account) cancels the
producer and the workers, never the writer: what finished is always journaled.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import signal
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

import anyio
import httpx
from anyio.abc import TaskStatus
from anyio.lowlevel import checkpoint
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from batchrun.engines.channels import receive, send
from batchrun.engines.gctuning import quiet_gc
from batchrun.engines.outcomes import Counters, Tries, error_result, ok_result
from batchrun.engines.structured import as_json, invalid_json_error, wants_json
from batchrun.errors import (
    EXIT_INTERNAL,
    BatchrunError,
    ErrorClass,
    ProviderError,
    StopRun,
    user_error,
)
from batchrun.inputs.preflight import preflight
from batchrun.inputs.prompts import PromptSet, Slice
from batchrun.job.schema import Job
from batchrun.limits.pacing import Limiter
from batchrun.limits.retry import BAD_RESPONSE_TRIES, BackoffWait, final, retrying
from batchrun.money.budget import Budget, worst_case_usd
from batchrun.money.pricing import PriceBook
from batchrun.net.bodies import MIB
from batchrun.net.endpoint import Contact, cache_scope, fatal_message, open_endpoint, read_key
from batchrun.net.transport import Answer, Sender, Timeouts, make_transport
from batchrun.providers import Provider, make_provider
from batchrun.records import Request, Result
from batchrun.redact import hiding, redact_data, secrets_of
from batchrun.report import runlog
from batchrun.report.progress import Observer, Snapshot, watch
from batchrun.report.summary import Summary, failure_summary, summarize, summary_path, write_summary_json
from batchrun.report.timeline import Timeline
from batchrun.store.cache import ResponseCache
from batchrun.store.runstore import FinishedIds, RunStore, run_lock

WRITE_BATCH = 1_000  # results journaled in one write at most
DRAIN_SECONDS = 30.0  # after an interrupt, how long requests in flight may take to finish
FEED_TURN = 64  # requests queued between two turns of the loop: the first wave goes out as it is queued

log = logging.getLogger("batchrun")


def run_job(
    job: Job,
    *,
    limit: int | None = None,
    fresh: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
    observers: Sequence[Observer] = (),
) -> Summary:
    """Run `job` to the end (or to a stop) and return its summary; the library's entry point.

    Raises `UsageError` before anything is sent when the job, input or environment is wrong, and `StopRun`
    when the run had to stop early (its message says why; a rerun resumes). Either way the outcome is
    written to the summary file beside the output (`summary_path`), for schedulers; so is an unexpected
    exception (a bug), which is raised as it is, the summary saying `exit_code` 4. `transport` replaces
    the network, for tests; `observers` see the run's progress (see `batchrun.report.progress`).
    """
    started = _now()
    provider = job.provider
    key = read_key(provider.api_key_env) if provider.api_key_env else None
    # Every string from a reply, and every message, is redacted of these while the run lasts.
    with hiding(secrets_of(key, provider.base_url, provider.headers)):
        with run_lock(job.output_path):  # before anything else: a second run of the job exits 2 at once
            try:
                summary = anyio.run(
                    _run_async,
                    job,
                    limit,
                    fresh,
                    transport,
                    tuple(observers),
                    backend_options=_loop_options(),
                )
            except BatchrunError as exc:
                outcome = failure_summary(job.name, job.output_path, exc.exit_code, str(exc))
                if isinstance(exc, StopRun) and exc.summary is not None:
                    outcome = exc.summary.as_dict() | outcome  # what the stopped run saved, and why
                _write_summary(job, outcome | {"started_at": started, "ended_at": _now()})
                raise
            except Exception as exc:
                message = f"internal error (a bug in batchrun): {type(exc).__name__}: {exc}"
                outcome = failure_summary(job.name, job.output_path, EXIT_INTERNAL, message[:2000])
                _write_summary(job, outcome | {"started_at": started, "ended_at": _now()})
                raise
        _write_summary(job, summary.as_dict() | {"started_at": started, "ended_at": _now()})
    return summary


def _loop_options() -> dict[str, Any]:
    """uvloop where it is installed (not on Windows): asyncio's own loop cost a fifth more CPU per row."""
    return {"use_uvloop": importlib.util.find_spec("uvloop") is not None}


def _write_summary(job: Job, data: dict[str, Any]) -> None:
    data = data | {"id_column": job.input.id_column}  # the report names failed rows by it
    path = summary_path(job.output_path)
    try:
        write_summary_json(path, redact_data(data))
    except OSError as exc:  # the output is written: a summary file that cannot be is not worth the run
        log.warning("cannot write the summary file %s (%s)", path, exc.strerror or exc)


async def _run_async(
    job: Job,
    limit: int | None,
    fresh: bool,
    transport: httpx.AsyncBaseTransport | None,
    observers: tuple[Observer, ...],
) -> Summary:
    checked = preflight(job, limit=limit)  # the job, key, prices and every input row: exit 2 on a problem
    prompts, key, prices, report = checked.prompts, checked.key, checked.prices, checked.input
    runlog.file_only.info("input checked: %d rows, %d bad, %.1f s", report.rows, report.bad, report.seconds)
    cache = None
    if job.cache.enabled:
        cache = ResponseCache(job.cache.path, kind=job.provider.kind, base_url=cache_scope(job))
    store = RunStore(job.output_path)
    runner: Runner | None = None
    try:
        with open_endpoint(job) as base_url:
            provider = make_provider(
                job.provider.kind, base_url, key, job.provider.headers, job.provider.auth
            )
            runner = Runner(job, prompts, provider, store, prices, cache, observers)
            return await runner.run(fresh=fresh, transport=transport)
    except Exception as exc:
        sent = runner is not None and runner.counters.sent > 0
        error = user_error(exc, sent=sent, folder=store.dir)
        if error is None:
            raise
        raise error from None
    finally:
        if cache is not None:
            cache.close()


class Runner:
    """Sends every pending row of a prompt set through one provider and journals the results."""

    def __init__(
        self,
        job: Job,
        prompts: PromptSet,
        provider: Provider,
        store: RunStore,
        prices: PriceBook,
        cache: ResponseCache | None = None,
        observers: Sequence[Observer] = (),
    ) -> None:
        self.job = job
        self.prompts = prompts
        self.provider = provider
        self.store = store
        self.prices = prices
        self.cache = cache
        self.observers = tuple(observers)
        self._started = time.monotonic()
        limits = job.limits
        self.limiter = Limiter(
            concurrency=limits.concurrency,
            requests_per_minute=limits.requests_per_minute,
            tokens_per_minute=limits.tokens_per_minute,
            adaptive=limits.adaptive,
        )
        self.budget: Budget | None = None
        self.timeouts = Timeouts(connect_s=limits.connect_timeout_s, total_s=limits.timeout_s)
        self.contact = Contact(provider.url())
        self.counters = Counters()
        self.in_flight = 0
        self.stop_reason: str | None = None
        self._draining = False  # no new requests: an interrupt or the budget; those in flight finish
        self._to_cache: list[tuple[str, Result]] = []  # answers the writer stores in the cache
        self._input_saved = (0, 0)  # input batches written to the store, and pieces of the next one

    async def run(self, *, fresh: bool = False, transport: httpx.AsyncBaseTransport | None = None) -> Summary:
        """Send, journal, assemble the output; return the summary. Raises `StopRun` on an early stop."""
        started = self._started = time.monotonic()
        self.store.open(fresh=fresh)
        try:
            cap = self.job.limits.max_cost_usd
            if cap is not None:
                # Earlier runs of this job count against the cap: a crash and a resume must not double it.
                self.budget = Budget(cap, spent_usd=self.store.spent_usd())
            with quiet_gc():
                await self._send_all(transport)
        finally:
            self.store.close()
        wall_s = time.monotonic() - started
        if self.stop_reason is not None:
            await self._write_stopped_output(wall_s)
        output = await anyio.to_thread.run_sync(self.store.assemble)
        return summarize(
            output, counters=self.counters, wall_s=wall_s, job=self.job.name, note=self._left_out()
        )

    async def _write_stopped_output(self, wall_s: float) -> NoReturn:
        """Write the output of a stopped run, every input row in it (the unanswered ones `pending`); raise
        `StopRun` with its summary. An output that cannot be written (a full disk) is only a warning: what
        finished is in the journal, and the stop's own reason is what the user must read."""
        import duckdb

        assert self.stop_reason is not None
        try:
            await anyio.to_thread.run_sync(self._save_unread_input)
            output = await anyio.to_thread.run_sync(self.store.assemble)
            summary = summarize(output, counters=self.counters, wall_s=wall_s, job=self.job.name)
        except (OSError, duckdb.Error) as exc:
            log.warning("the output of the stopped run could not be written: %s", exc)
            raise StopRun(self.stop_reason) from None
        saved = f"{summary.ok:,} ok, {summary.failed:,} failed, {summary.pending:,} pending"
        raise StopRun(f"{self.stop_reason}\nThe output {output} holds every row: {saved}.", summary)

    def _save_unread_input(self) -> None:
        """Keep the input rows the producer did not get to, for the output of a stopped run (nothing is sent).

        The producer counts the batches it finished and the pieces of the batch it was on; the input is read
        again from its start, skipping those, and the rest is rendered only to name its rows.
        """
        done_batches, done_pieces = self._input_saved
        for index, batch in enumerate(self.prompts.batches()):
            if index < done_batches:
                continue
            pieces = self.prompts.render_batch(batch)
            for piece in itertools.islice(pieces, done_pieces if index == done_batches else 0, None):
                self.store.write_input(piece.frame, piece.part)

    def _left_out(self) -> str | None:
        """A note when the output leaves out answers the journal holds (`--limit` after a larger run)."""
        assembly = self.store.assembly
        if (
            self.prompts.limit is None
            or assembly is None
            or assembly.answered_in_journal <= assembly.answered
        ):
            return None
        return (
            f"output holds {assembly.answered:,} of {assembly.answered_in_journal:,} answered rows; "
            "rerun without --limit to write all; nothing is resent"
        )

    def snapshot(self) -> Snapshot:
        """The run's counters and limiter state now, for a progress display (read-only, cheap)."""
        counters, limiter = self.counters, self.limiter
        adaptive = limiter.adaptive
        return Snapshot(
            elapsed_s=time.monotonic() - self._started,
            ok=counters.ok,
            failed=counters.failed,
            reused=counters.reused,
            sent=counters.sent,
            in_flight=self.in_flight - limiter.waiting,
            prompt_tokens=counters.prompt_tokens,
            completion_tokens=counters.completion_tokens,
            cost_usd=counters.cost_usd,
            errors=dict(counters.errors),
            retries=dict(counters.retries),
            cooldown_s=limiter.cooldown_left_s,
            concurrency=adaptive.concurrency if adaptive is not None else None,
            max_concurrency=self.job.limits.concurrency,
            pace_per_s=limiter.pace_per_s,
            header_pace_per_s=limiter.header_pace_per_s,
            down_s=limiter.breaker.down_s if limiter.breaker.is_open else None,
            stopping=self._draining,
            waiting=limiter.waiting,
            binding=limiter.binding,
        )

    async def _send_all(self, transport: httpx.AsyncBaseTransport | None) -> None:
        concurrency = self.job.limits.concurrency
        requests_tx, requests_rx = anyio.create_memory_object_stream[Request](concurrency * 2)
        results_tx, results_rx = anyio.create_memory_object_stream[Result](concurrency * 2)
        transport = transport or make_transport(concurrency)
        sender = Sender(transport, self.provider, self.timeouts, int(self.job.limits.max_reply_mib * MIB))
        async with transport, anyio.create_task_group() as tg:
            tg.start_soon(self._writer, results_rx)
            signal_scope = await tg.start(self._watch_signals)
            # The run's counters, a line a second, go to the run folder for the report's "run over time".
            observers = (*self.observers, Timeline(self.store.dir))
            progress_scope = await tg.start(watch, self.snapshot, self.prompts.count_rows, observers)
            async with results_tx, anyio.create_task_group() as send_group:
                self._send_scope = send_group.cancel_scope
                send_group.start_soon(self._producer, requests_tx, results_tx.clone())
                await checkpoint()  # the producer starts reading before a thousand workers start waiting
                for _ in range(concurrency):
                    send_group.start_soon(self._worker, sender, requests_rx.clone(), results_tx.clone())
                requests_rx.close()
            signal_scope.cancel()
            progress_scope.cancel()

    async def _watch_signals(self, *, task_status: TaskStatus[anyio.CancelScope]) -> None:
        """First SIGINT/SIGTERM: stop sending, give requests in flight a grace period. Second: stop now.

        Either way the writer journals every answer that arrived, so nothing paid for is lost.
        """
        with anyio.CancelScope() as scope:
            if threading.current_thread() is not threading.main_thread():
                task_status.started(scope)  # signals reach only the main thread: nothing to watch
                await anyio.sleep_forever()
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                task_status.started(scope)
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if not self._draining:
                        self._drain(f"Interrupted ({name}).")
                        self._send_scope.deadline = anyio.current_time() + DRAIN_SECONDS
                        log.warning(
                            "%s: no new requests; waiting up to %.0f s for %d in flight (again to stop now)",
                            name,
                            DRAIN_SECONDS,
                            self.in_flight,
                        )
                    else:
                        self._send_scope.cancel()

    def _drain(self, reason: str) -> None:
        """Send nothing new; let the requests in flight finish; the run then stops with `reason`."""
        if self.stop_reason is None:
            self.stop_reason = f"{reason}\nWhat finished is saved in {self.store.dir}; rerun to resume."
        self._draining = True

    async def _producer(
        self, requests: MemoryObjectSendStream[Request], results: MemoryObjectSendStream[Result]
    ) -> None:
        async with requests, results:
            done = self.store.finished_ids()
            batches = self.prompts.batches()
            # Reading (polars, mostly outside the GIL) runs in a worker thread; rendering (Python) runs
            # here a short piece at a time: in a thread it held the GIL for 5 ms turns and slowed every
            # request in flight, and a whole slice at once stalled them all for 80 ms.
            while (batch := await anyio.to_thread.run_sync(next, batches, None)) is not None:
                for piece in self.prompts.render_batch(batch):
                    if self._draining:
                        return  # stopping: render and queue nothing more
                    self.store.write_input(piece.frame, piece.part)
                    self._input_saved = (self._input_saved[0], self._input_saved[1] + 1)
                    if not await self._feed(piece, done, requests, results):
                        return
                    await checkpoint()  # the workers start on this piece before the next
                self._input_saved = (self._input_saved[0] + 1, 0)

    async def _feed(
        self,
        piece: Slice,
        done: FinishedIds,
        requests: MemoryObjectSendStream[Request],
        results: MemoryObjectSendStream[Result],
    ) -> bool:
        """Queue a piece's requests (cached answers and rows that cannot be sent go straight to the writer).

        False once nothing more should be queued: the run is draining, or every worker has stopped.
        """
        finished = done.contains(piece.frame.get_column("custom_id").to_list())
        pending: list[Request] = []
        for item, skip in zip(piece.items, finished, strict=True):
            if skip:
                self.counters.reused += 1
            elif isinstance(item, Result):
                await send(results, item)
            else:
                pending.append(item)
        hits = self.cache.get_many(pending) if self.cache is not None else {}
        for queued, request in enumerate(pending, 1):
            if self._draining:
                return False
            hit = hits.get(request.custom_id)
            try:
                await (send(results, hit) if hit is not None else send(requests, request))
            except anyio.BrokenResourceError:
                return False  # every worker has stopped (an interrupt): nothing left to feed
            if queued % FEED_TURN == 0:
                # A worker's connection opens and its request is written only when the loop polls: queued
                # all at once, the first 1,024 requests went out 0.2 s late, after the last was ready.
                await checkpoint()
        return True

    async def _worker(
        self,
        sender: Sender,
        requests: MemoryObjectReceiveStream[Request],
        results: MemoryObjectSendStream[Result],
    ) -> None:
        async with requests, results:
            while (request := await receive(requests)) is not None:
                if self._draining:
                    return
                reserved = self._reserve(request)
                if reserved is None:
                    return
                tries = Tries(worst_usd=reserved)
                self.in_flight += 1
                try:
                    result = await self._process(sender, request, tries)
                finally:
                    self.in_flight -= 1
                    if self.budget is not None:
                        self.budget.release(reserved)
                if self.budget is not None:
                    self.budget.spend(tries.charged_usd)
                try:
                    results.send_nowait(result)  # the usual case, and no cancel scope to pay for
                except anyio.WouldBlock:
                    # Shielded: a stop that cancels the workers must not drop an answer already paid for.
                    with anyio.CancelScope(shield=True):
                        await results.send(result)

    def _reserve(self, request: Request) -> float | None:
        """Reserve the request's worst-case cost under `max_cost_usd`; None (and drain) when it won't fit."""
        if self.budget is None:
            return 0.0
        amount = worst_case_usd(request, self.prices)
        if self.budget.try_reserve(amount):
            return amount
        budget = self.budget
        self._drain(
            f"Budget reached: ${budget.spent_usd:.4f} spent and ${budget.reserved_usd:.4f} in flight of "
            f"[limits] max_cost_usd = ${budget.cap_usd:g}. Raise it and rerun to go on."
        )
        return None

    async def _process(self, sender: Sender, request: Request, tries: Tries) -> Result:
        """One row, with retries; a fatal error stops the run and cancels this task."""
        limits = self.job.limits
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
                self._stop(exc)
            return error_result(request.custom_id, exc, tries)
        result = ok_result(request, answer, tries, self.prices, json_mode=json_mode)
        if self.cache is not None:
            self._to_cache.append((self.cache.key(request), result))
        return result

    async def _attempt(self, sender: Sender, request: Request, tries: Tries) -> Answer:
        """One try of one row, through the limiter; failures teach the limiter before they are raised."""
        ticket = await self.limiter.acquire(request)
        tries.made += 1
        tries.counted += 1
        self.counters.sent += 1
        try:
            answer = await sender.attempt(request)
        except ProviderError as failed:
            exc = self._judge(failed, tries)
            self.limiter.on_failure(ticket, exc, self.job.limits.backoff_base_s)
            if self.limiter.breaker.is_open:
                tries.counted -= 1  # the provider is down: not this row's fault, nor its budget
                self.limiter.breaker.check_outage(self.job.limits.max_outage_s)
            self.counters.attempt_failed(exc, retried=tries.counted < self.job.limits.max_attempts)
            raise exc from None
        except BaseException:
            self.limiter.abandon(ticket)
            raise
        self.limiter.on_success(ticket, answer.reply.usage, answer.rate)
        self.contact.answered()
        if self.budget is not None:
            tries.charge(self.prices.cost(request.body.get("model"), answer.reply.usage))
        text = answer.reply.completion
        if tries.retry_json and tries.counted < self.job.limits.max_attempts and as_json(text) is None:
            # The answer was paid for even though it is sent again: the row's cost includes it.
            tries.discarded_usd += self.prices.cost(request.body.get("model"), answer.reply.usage) or 0
            raise invalid_json_error(text)
        return answer

    def _judge(self, exc: ProviderError, tries: Tries) -> ProviderError:
        """What a failed try means for the row and the run (see `batchrun.limits.retry`'s classes).

        A reply the server completed (2xx) was most likely billed, readable or not. An unreadable one is
        asked for `BAD_RESPONSE_TRIES` times at most. An endpoint that never answered stops the run.
        """
        if self.budget is not None and exc.status is not None and 200 <= exc.status < 300:
            tries.charge(None)
        if exc.error_type == "bad_response":
            tries.unreadable += 1
            if tries.unreadable >= BAD_RESPONSE_TRIES:
                exc = final(exc)
        return self.contact.check(exc, last_try=False) or exc

    def _stop(self, exc: ProviderError) -> None:
        if self.stop_reason is None:
            self.stop_reason = fatal_message(self.job, exc)
            self.stop_reason += f"\nWhat finished is saved in {self.store.dir}; rerun to resume."
        self._send_scope.cancel()

    async def _writer(self, results: MemoryObjectReceiveStream[Result]) -> None:
        """Journal results the moment they arrive: one write for all that are waiting, no await in between.

        With no await between receiving a result and writing it, no cancellation can lose one.
        """
        async with results:
            while True:
                try:
                    batch = [await results.receive()]
                except anyio.EndOfStream:
                    return
                while len(batch) < WRITE_BATCH:
                    try:
                        batch.append(results.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                self.store.write_results(batch)
                for result in batch:
                    self.counters.add(result)
                if self.cache is not None and self._to_cache:
                    self.cache.put_many(self._to_cache)
                    self._to_cache.clear()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
