"""The Ray engine: the same job on a Ray cluster, under one rate limit for the whole cluster.

```
driver (this process): producer --requests--> RayEngine --blocks--> WorkerActor x N (each: the live engine)
                          writer <--results-- RayEngine <--results, as they come--/        |
                                                               DeskActor <--leases, outcomes--/
```

The driver does what a run always does (`batchrun.engines.run`): it reads and renders the input once, skips
rows already answered or cached, journals every result and assembles the output. This engine hands the
requests to the workers in blocks (batchrun's own slicing, not Ray Data: the rows are rendered, skipped
and journaled where the run folder is, so resume, the response cache, the input check and the output are
the local engine's own, and the one reader of the input is far faster than any API's rate). Each worker
runs the live engine on its blocks and streams its results back the moment they are ready; the driver
journals them, so a worker that dies loses only the requests it held, and no worker needs the run folder.

One rate limit for the cluster: a named `DeskActor` holds the run's one schedule and leases stretches of it
to the workers' pacers (`batchrun.limits.leases`); a 429 anywhere slows every worker there. The budget
(`max_cost_usd`) is the driver's: every request reserves its worst case here before a worker gets it.
`[limits] concurrency` is the cluster's, split between the workers.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from batchrun.engines.channels import receive_batch
from batchrun.engines.rayworker import (
    DeskActor,
    Shipment,
    WorkerActor,
    WorkerSetup,
    pack_requests,
    unpack_results,
)
from batchrun.errors import BatchrunError, UsageError
from batchrun.records import Request, Result
from batchrun.redact import first_line

if TYPE_CHECKING:
    import httpx
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from batchrun.engines.base import RunContext
    from batchrun.report.progress import Snapshot

NAMESPACE = "batchrun"  # where the engine's named actors live (`ray list actors`)
BLOCK_MAX = 256  # requests handed to a worker in one call at most
SHIPMENTS_AHEAD = 16  # results messages a worker may send before the driver has read them
DRAIN_SECONDS = 30.0  # the live engine's grace for requests in flight after an interrupt

log = logging.getLogger("batchrun")
_shutting_down: list[threading.Thread] = []  # the local Ray a run of this process started, stopping


def require_ray() -> Any:
    """The `ray` module; UsageError (exit 2, nothing sent) saying how to install it when it is missing."""
    try:
        import ray
    except ImportError:
        raise UsageError(
            '[engine] kind = "ray" needs Ray, which is not installed here: pip install "batchrun[ray]" '
            '(or run on this machine alone: --set engine.kind="local")'
        ) from None
    return ray


@dataclass(slots=True)
class _Worker:
    """The driver's view of one worker actor."""

    index: int
    handle: Any
    alive: bool = True
    held: int = 0  # requests handed to it and not answered yet
    in_flight: int = 0
    waiting: int = 0
    pace_per_s: float | None = None


@dataclass(slots=True)
class _Handed:
    """Requests handed to workers, by custom_id: what each reserved of the budget, and the request itself
    when the response cache needs it."""

    entries: dict[str, list[tuple[Request | None, float]]] = field(default_factory=dict)

    def add(self, request: Request, reserved: float, keep: bool) -> None:
        self.entries.setdefault(request.custom_id, []).append((request if keep else None, reserved))

    def pop(self, custom_id: str) -> tuple[Request | None, float]:
        held = self.entries.get(custom_id)
        if not held:
            return None, 0.0
        entry = held.pop()
        if not held:
            del self.entries[custom_id]
        return entry


class RayEngine:
    """Answers a run's requests with the live engine on the workers of a Ray cluster (module docstring)."""

    def __init__(self, context: RunContext, transport: httpx.AsyncBaseTransport | None = None) -> None:
        if transport is not None:
            raise UsageError('a transport can be given to the local engine only ([engine] kind = "local")')
        self.ray = require_ray()
        self.context = context
        self.job = context.job
        self.workers: list[_Worker] = []
        self._handed = _Handed()
        self._stopping = False
        self._started_ray = False
        self._actors: list[Any] = []

    async def run(
        self, requests: MemoryObjectReceiveStream[Request], results: MemoryObjectSendStream[Result]
    ) -> None:
        """Start the cluster's workers, feed them blocks, pass their results on; stop them at the end."""
        async with requests, results:
            try:
                started = time.monotonic()
                await anyio.to_thread.run_sync(self._connect)
                await self._start_actors()
                log.info(
                    "Ray: %d workers ready in %.1f s (%d in flight each at most)",
                    len(self.workers),
                    time.monotonic() - started,
                    -(-self.job.limits.concurrency // len(self.workers)),
                )
                async with anyio.create_task_group() as tg:
                    for worker in self.workers:
                        tg.start_soon(self._collect, worker, results.clone())
                        tg.start_soon(self._dispatch, worker, requests.clone())
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._release)

    def interrupt(self) -> str:
        """No new requests for any worker; those in flight get `DRAIN_SECONDS` to finish."""
        self._stopping = True
        self._tell("interrupt")
        in_flight = sum(worker.in_flight for worker in self.workers)
        alive = sum(worker.alive for worker in self.workers)
        return f"waiting up to {DRAIN_SECONDS:.0f} s for {in_flight} in flight on {alive} Ray workers"

    def abort(self) -> None:
        """Stop every worker now (results already received are journaled)."""
        self._stopping = True
        self._tell("abort")

    def describe(self, snapshot: Snapshot) -> Snapshot:
        """The snapshot with the workers' requests in flight and waiting, and the cluster's pace."""
        paces = [w.pace_per_s for w in self.workers if w.alive and w.pace_per_s is not None]
        return dataclasses.replace(
            snapshot,
            in_flight=sum(w.in_flight for w in self.workers),
            waiting=sum(w.waiting for w in self.workers),
            pace_per_s=paces[0] if paces and math.isfinite(paces[0]) else None,
        )

    def _connect(self) -> None:
        """Join the cluster `[engine] address` names, or start a local one; reuse a connection made before."""
        ray = self.ray
        while _shutting_down:
            _shutting_down.pop().join()  # the Ray an earlier run of this process started, still stopping
        if ray.is_initialized():
            return
        address = self.job.engine.address
        if address is None:
            # A cluster started here sends no usage statistics to Ray's servers (a run talks to its provider
            # and nothing else); one joined is its owner's to configure.
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # Called from a thread, so Ray leaves SIGTERM to the run (a graceful stop); its start-up notices
        # (that it did so, a token made for the local cluster) are not the user's concern: warnings after
        # it are.
        try:
            ray.init(
                address=address, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=True
            )
        except (ConnectionError, ValueError) as exc:  # no cluster there, or an address that is none
            raise UsageError(
                f"{self.job.source}: [engine] address = {address!r}: no Ray cluster to join there ({exc}). "
                "Start one (`ray start --head`), or leave address out to start a local one. Nothing was sent."
            ) from None
        logging.getLogger("ray").setLevel(logging.WARNING)
        self._started_ray = True

    async def _start_actors(self) -> None:
        """The desk and the workers, each worker's key read and engine built before anything is sent."""
        ray, job, context = self.ray, self.job, self.context
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        concurrency = job.limits.concurrency
        count = min(job.engine.workers or max(1, int(cpus)), concurrency)
        tag = uuid.uuid4().hex[:8]
        desk = (
            ray.remote(DeskActor)
            .options(name=f"batchrun-limits-{tag}", namespace=NAMESPACE, num_cpus=0)
            .remote(job.limits)
        )
        self._actors.append(desk)
        remote = ray.remote(WorkerActor)
        base_url = context.base_url or job.provider.base_url
        assert base_url is not None, "the run opens its endpoint before the engine starts"
        for index in range(count):
            share = concurrency // count + (index < concurrency % count)
            limits = job.limits.model_copy(update={"concurrency": share})
            setup = WorkerSetup(
                job=job.model_copy(update={"limits": limits}),
                base_url=base_url,
                run_dir=context.run_dir,
                index=index,
                desk=desk,
                budget=context.budget is not None,
            )
            handle = remote.options(
                name=f"batchrun-worker-{index}-{tag}",
                namespace=NAMESPACE,
                num_cpus=min(1.0, cpus / count),
            ).remote(setup)
            self._actors.append(handle)
            self.workers.append(_Worker(index, handle))
        for worker in self.workers:
            where = f"Ray worker {worker.index + 1} of {count}"
            try:
                await worker.handle.start.remote()
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, BatchrunError):
                    raise type(cause)(f"{cause} (on {where})") from None
                raise
            except ray.exceptions.RayActorError as exc:  # it could not even start (batchrun not installed?)
                raise UsageError(
                    f"{where} could not start ({first_line(exc, 300)}); is batchrun installed on every node "
                    "(pip install 'batchrun[ray]', or a runtime_env)? Nothing was sent."
                ) from None

    def _release(self) -> None:
        """Stop the actors; stop Ray too when this run started it."""
        for actor in self._actors:
            try:
                self.ray.kill(actor)
            except Exception as exc:  # an actor already gone: nothing to stop
                log.debug("Ray actor already gone: %s", exc)
        if self._started_ray:
            # Ray's shutdown (its daemons stopping) takes a second or more: it goes on beside the output's
            # assembly. The thread is not a daemon: the process waits for it before it exits.
            stopping = threading.Thread(target=self.ray.shutdown, name="batchrun-ray-shutdown")
            stopping.start()
            _shutting_down.append(stopping)

    async def _dispatch(self, worker: _Worker, requests: MemoryObjectReceiveStream[Request]) -> None:
        """Hand `worker` blocks of requests while it takes them; then tell it no more are coming."""
        context = self.context
        block_size = max(1, min(BLOCK_MAX, self.job.limits.concurrency // max(1, len(self.workers)) // 2))
        keep = context.cache is not None
        async with requests:
            while worker.alive and not self._stopping:
                block = await receive_batch(requests, block_size)
                for position, request in enumerate(block):
                    reserved = context.reserve(request)
                    if reserved is None:  # the budget: the run drains, the rest is not sent
                        del block[position:]
                        self._stop()
                        break
                    self._handed.add(request, reserved, keep)
                if not block:
                    break
                worker.held += len(block)
                if not await self._call(worker, worker.handle.take, pack_requests(block)):
                    break
            if worker.alive:
                await self._call(worker, worker.handle.finish)

    async def _collect(self, worker: _Worker, results: MemoryObjectSendStream[Result]) -> None:
        """Pass `worker`'s results on to the run's writer as they come, until its stream ends."""
        ray = self.ray
        async with results:
            # A few messages ahead at most: a driver slow to journal holds the workers back, not its memory.
            stream = worker.handle.results.options(
                num_returns="streaming", _generator_backpressure_num_objects=SHIPMENTS_AHEAD
            ).remote()
            try:
                async for ref in stream:
                    await self._receive(worker, await ref, results)
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, BatchrunError):
                    raise cause from None
                if not isinstance(cause, ray.exceptions.RayError):
                    raise  # a bug in the worker: the run stops with its traceback (exit 4)
                self._lose(worker, cause)
            except ray.exceptions.RayError as exc:  # the worker's process or node died
                self._lose(worker, exc)

    async def _receive(
        self, worker: _Worker, shipment: Shipment, results: MemoryObjectSendStream[Result]
    ) -> None:
        context = self.context
        results_in = unpack_results(shipment.results)
        for result in results_in:
            request, reserved = self._handed.pop(result.custom_id)
            context.settle(reserved, result.budget_usd)
            if request is not None:
                context.remember(request, result)
            try:
                results.send_nowait(result)
            except anyio.WouldBlock:
                with anyio.CancelScope(shield=True):  # a stop must not drop an answer already paid for
                    await results.send(result)
        worker.held -= len(results_in)
        context.counters.sent += shipment.sent
        worker.in_flight, worker.waiting = shipment.in_flight, shipment.waiting
        worker.pace_per_s = shipment.pace_per_s
        if shipment.stop_reason is not None:
            self._stop(shipment.stop_reason)

    async def _call(self, worker: _Worker, method: Any, *args: Any) -> bool:
        """Call an actor method and return its answer (None is True); False when the worker is gone."""
        try:
            answer = await method.remote(*args)
        except self.ray.exceptions.RayError as exc:
            self._lose(worker, exc)
            return False
        return answer is None or bool(answer)

    def _stop(self, reason: str | None = None) -> None:
        """No new requests anywhere; `reason` (a worker's fatal error, already worded) stops the run."""
        context = self.context
        if reason is not None and context.stop_reason is None:
            context.stop_reason = reason
        context.draining = True
        self._stopping = True
        self._tell("stop")

    def _lose(self, worker: _Worker, exc: BaseException) -> None:
        """A worker died: its requests are lost to this run; the others go on, and the run then exits 3."""
        if not worker.alive:
            return
        worker.alive = False
        worker.in_flight = worker.waiting = 0
        context = self.context
        first = first_line(exc, 200)
        log.warning(
            "Ray worker %d of %d was lost (%s); %d requests it held are not answered this run",
            worker.index + 1,
            len(self.workers),
            first,
            worker.held,
        )
        if context.stop_reason is None:
            context.stop_reason = (
                f"Ray worker {worker.index + 1} of {len(self.workers)} was lost ({first}): the "
                f"{worker.held:,} requests it held (in flight or queued) were not answered; the other "
                f"workers went on.\nWhat finished is saved in {context.run_dir}; rerun the same command to "
                "send the rest (nothing answered is sent again)."
            )
        if not any(w.alive for w in self.workers):
            context.draining = True

    def _tell(self, method: str) -> None:
        """Call `method` on every live worker without waiting for it."""
        for worker in self.workers:
            if worker.alive:
                call: Callable[[], Any] = getattr(worker.handle, method).remote
                call()
