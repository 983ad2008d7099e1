"""The Ray engine's actors: the workers that send, and the desk that leases them the run's one schedule.

Ray runs these classes in processes of its own (`batchrun.engines.ray` wraps them with `ray.remote`); the
module itself imports nothing of Ray, and batchrun's local engine never imports it.

A `WorkerActor` runs batchrun's live engine on the requests the driver hands it in blocks (`take`), under a
`LeasedLimiter` whose paces are leased from the `DeskActor`, and streams the results back as they come
(`results`, a Ray streaming generator: one message for all the results ready at once). The driver journals
them; the worker keeps nothing, so a worker that dies loses only the requests it held.
"""

from __future__ import annotations

import asyncio
import math
import operator
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from batchrun.engines.base import RunContext
from batchrun.engines.channels import receive_batch, receive_ready, send
from batchrun.engines.gctuning import quiet_gc
from batchrun.engines.live import LiveEngine
from batchrun.limits.leased import LeaseClient, LeasedLimiter
from batchrun.limits.leases import Ask, Grant, LeaseDesk
from batchrun.limits.pacing import Limiter
from batchrun.money.budget import Budget
from batchrun.money.pricing import PriceBook
from batchrun.net.endpoint import api_key
from batchrun.providers import make_provider
from batchrun.records import Request, Result
from batchrun.redact import hiding, secrets_of
from batchrun.store.journal import RESULT_FIELDS

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from batchrun.job.schema import Job, LimitsSection

SHIP_MAX = 2_000  # results in one message to the driver at most
SHIP_LINGER_S = 0.02  # how long a message waits for more results to go with it
_RESULT_VALUES = operator.attrgetter(*RESULT_FIELDS)

# Requests and results cross between processes as tuples of plain values: pickled in C, where Ray's
# pickling of the dataclasses (cloudpickle, a field at a time) was most of the driver's CPU.
PackedRequest = tuple[str, bytes, int, int]
PackedResult = tuple[Any, ...]


def pack_requests(requests: list[Request]) -> list[PackedRequest]:
    """Requests as tuples of plain values; the body travels as its canonical bytes (`Request.payload`)."""
    return [(r.custom_id, r.payload, r.est_prompt_tokens, r.est_output_tokens) for r in requests]


def unpack_requests(packed: list[PackedRequest]) -> list[Request]:
    """The requests `pack_requests` packed (the body parsed back from its canonical bytes)."""
    return [Request(cid, orjson.loads(payload), payload, est, out) for cid, payload, est, out in packed]


def pack_results(results: list[Result]) -> list[PackedResult]:
    """Results as tuples of their fields' values."""
    return [_RESULT_VALUES(result) for result in results]


def unpack_results(packed: list[PackedResult]) -> list[Result]:
    """The results `pack_results` packed."""
    return [Result(*values) for values in packed]


@dataclass(frozen=True, slots=True)
class WorkerSetup:
    """What a worker needs from the driver (the API key it reads from its own environment)."""

    job: Job  # with `[limits] concurrency` this worker's share
    base_url: str
    run_dir: Path  # the driver's run folder, named in stop messages
    index: int
    desk: Any  # the desk's actor handle
    budget: bool  # the job has `max_cost_usd`: charge replies as one process does (the driver holds the cap)


@dataclass(frozen=True, slots=True)
class Shipment:
    """What a worker sends the driver: the results ready, and its counts since the last shipment."""

    results: list[PackedResult]  # `unpack_results`
    sent: int  # attempts made since the last shipment
    in_flight: int
    waiting: int
    pace_per_s: float | None
    stop_reason: str | None = None  # the last shipment of a worker that stopped on its own (a fatal error)


class DeskActor:
    """The run's one schedule, leased to the workers (see `batchrun.limits.leases`)."""

    def __init__(self, limits: LimitsSection) -> None:
        limiter = Limiter(
            concurrency=limits.concurrency,
            requests_per_minute=limits.requests_per_minute,
            tokens_per_minute=limits.tokens_per_minute,
            adaptive=limits.adaptive,
        )
        self.desk = LeaseDesk(limiter, backoff_s=limits.backoff_base_s)

    async def lease(self, ask: Ask) -> Grant:
        """Learn from a worker's outcomes and lease it the spans it asks for (async: one event loop, no
        lock needed, and the limiter's anyio primitives have a loop to run in)."""
        return self.desk.lease(ask)


class WorkerActor:
    """One sending process: the live engine over the blocks of requests the driver hands it."""

    def __init__(self, setup: WorkerSetup) -> None:
        self.setup = setup
        self._sent = 0
        self._main: asyncio.Task[None] | None = None

    def pid(self) -> int:
        """This worker's process id (tests kill it)."""
        return os.getpid()

    async def start(self) -> None:
        """Read the key from this process's environment, build the engine and start it.

        Raises `UsageError` (nothing was sent) when the key is not set on this worker's node.
        """
        setup, job = self.setup, self.setup.job
        key = api_key(job)
        provider = make_provider(
            job.provider.kind, setup.base_url, key, job.provider.headers, job.provider.auth
        )
        prices = PriceBook(
            input=job.pricing.input, output=job.pricing.output, cached_input=job.pricing.cached_input
        )
        self.context = context = RunContext(job, provider, prices, setup.run_dir, base_url=setup.base_url)
        if setup.budget:
            context.budget = Budget(
                math.inf
            )  # replies are charged as in one process; the cap is the driver's
        limits = job.limits
        self.client = LeaseClient(self._lease)
        limiter = LeasedLimiter(
            self.client,
            concurrency=limits.concurrency,
            requests_per_minute=limits.requests_per_minute,
            tokens_per_minute=limits.tokens_per_minute,
            adaptive=limits.adaptive,
        )
        self.engine = LiveEngine(context, limiter=limiter)
        queued = limits.concurrency
        self._requests, requests = anyio.create_memory_object_stream[Request](queued)
        results, self._results = anyio.create_memory_object_stream[Result](queued)
        secrets = secrets_of(key, setup.base_url, job.provider.headers)
        self._main = asyncio.get_running_loop().create_task(self._run(requests, results, secrets))

    async def _lease(self, ask: Ask) -> Grant:
        grant: Grant = await self.setup.desk.lease.remote(ask)
        return grant

    async def _run(
        self,
        requests: MemoryObjectReceiveStream[Request],
        results: MemoryObjectSendStream[Result],
        secrets: tuple[str, ...],
    ) -> None:
        """The engine until its requests end (or it stops), with the leases kept up meanwhile."""
        with hiding(secrets), quiet_gc():
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.client.serve)
                await self.engine.run(requests, results)
                with anyio.CancelScope(shield=True):
                    await self.client.exchange()  # the last outcomes, for the desk's trims
                tg.cancel_scope.cancel()

    async def take(self, block: list[PackedRequest]) -> bool:
        """Queue a block of requests (`pack_requests`), waiting while the queue is full; False once this
        worker stops."""
        try:
            for request in unpack_requests(block):
                await send(self._requests, request)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return False
        return not self.context.draining

    def finish(self) -> None:
        """No more requests: the engine ends when those queued are answered."""
        self._requests.close()

    def stop(self) -> None:
        """Send nothing new (another worker stopped the run); what is in flight may finish."""
        self.context.draining = True

    def interrupt(self) -> str:
        """The first Ctrl+C at the driver: nothing new; in flight get the live engine's grace."""
        self.context.draining = True
        return self.engine.interrupt()

    def abort(self) -> None:
        """The second Ctrl+C: stop now."""
        self.engine.abort()

    async def results(self) -> AsyncIterator[Shipment]:
        """The results as they come, in one message for all those ready at once, then the last counts.

        Raises what stopped the engine when it failed (the desk gone, a bug).
        """
        assert self._main is not None, "start() first"
        async with self._results:
            while batch := await receive_batch(self._results, SHIP_MAX):
                if len(batch) < SHIP_MAX:
                    # Let a few more arrive: every message costs the driver and Ray's daemons about as
                    # much as the results in it, and a result a few ms later costs nothing.
                    await anyio.sleep(SHIP_LINGER_S)
                    batch += receive_ready(self._results, SHIP_MAX - len(batch))
                yield self._shipment(batch)
        await self._main
        yield self._shipment([], self.context.stop_reason)

    def _shipment(self, results: list[Result], stop_reason: str | None = None) -> Shipment:
        sent = self.context.counters.sent
        delta, self._sent = sent - self._sent, sent
        engine = self.engine
        return Shipment(
            pack_results(results),
            delta,
            engine.in_flight - engine.limiter.waiting,
            engine.limiter.waiting,
            self.client.pace_per_s,
            stop_reason,
        )
