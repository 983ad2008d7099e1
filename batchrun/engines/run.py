"""A run of a job, whatever engine answers it: one anyio task group with a producer, the engine and a writer.

```
producer --requests--> engine (live: N workers; batch: a provider's Batch API) --results--> writer --> journal
   \\--- rows already answered (cache) or that cannot be sent -------------------------/
```

Memory stays flat: the input is read a slice at a time, the request stream is bounded (back-pressure on
the producer), and results leave as they arrive. A stop (a fatal error, the budget, Ctrl+C) ends the
producer and the engine, never the writer: what finished is always journaled. At the end, or at a stop, the
output is assembled from the journal and the input, every input row in it.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn

import anyio
from anyio.abc import TaskStatus
from anyio.lowlevel import checkpoint
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from batchrun.engines.base import Engine, RunContext
from batchrun.engines.channels import send
from batchrun.engines.gctuning import quiet_gc
from batchrun.errors import EXIT_INTERNAL, BatchrunError, StopRun, user_error
from batchrun.inputs.preflight import preflight
from batchrun.money.budget import Budget
from batchrun.net.endpoint import cache_scope, open_endpoint, read_key
from batchrun.providers import make_provider
from batchrun.records import Request, Result
from batchrun.redact import hiding, redact_data, secrets_of
from batchrun.report import runlog
from batchrun.report.progress import Observer, Snapshot, watch
from batchrun.report.summary import Summary, failure_summary, summarize, summary_path, write_summary_json
from batchrun.report.timeline import Timeline
from batchrun.store.cache import ResponseCache
from batchrun.store.remote import Remote, mirrored
from batchrun.store.runstore import FinishedIds, RunStore, run_lock

if TYPE_CHECKING:
    import httpx

    from batchrun.inputs.prompts import PromptSet, Slice
    from batchrun.job.schema import Job

WRITE_BATCH = 1_000  # results journaled in one write at most
FEED_TURN = 64  # requests queued between two turns of the loop: the first wave goes out as it is queued
QUEUE_PER_SLOT = 2  # requests queued ahead per unit of concurrency (back-pressure on the producer)

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
    # Every string from a reply, and every message, is redacted of these while the run lasts. Before
    # anything else, the locks: a second run of the job exits 2 at once, here or (remote output) anywhere.
    with (
        hiding(secrets_of(key, provider.base_url, provider.headers)),
        run_lock(job.output_path),
        mirrored(job.output_path, fresh=fresh) as remote,
    ):
        try:
            summary = anyio.run(
                _run_async,
                job,
                limit,
                fresh,
                transport,
                tuple(observers),
                remote,
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
    remote: Remote | None,
) -> Summary:
    checked = preflight(job, limit=limit)  # the job, key, prices and every input row: exit 2 on a problem
    prompts, key, prices, report = checked.prompts, checked.key, checked.prices, checked.input
    runlog.file_only.info("input checked: %d rows, %d bad, %.1f s", report.rows, report.bad, report.seconds)
    cache = None
    if job.cache.enabled:
        cache = ResponseCache(job.cache.path, kind=job.provider.kind, base_url=cache_scope(job))
    store = RunStore(job.output_path, remote)
    run: Run | None = None
    try:
        with open_endpoint(job) as base_url:
            provider = make_provider(
                job.provider.kind, base_url, key, job.provider.headers, job.provider.auth
            )
            context = RunContext(job, provider, prices, store.dir, cache, base_url=base_url, api_key=key)
            run = Run(context, prompts, store, observers)
            return await run.run(fresh=fresh, transport=transport)
    except Exception as exc:
        sent = run is not None and run.context.counters.sent > 0
        error = user_error(exc, sent=sent, folder=store.dir)
        if error is None:
            raise
        raise error from None
    finally:
        if cache is not None:
            cache.close()


def make_engine(context: RunContext, transport: httpx.AsyncBaseTransport | None) -> Engine:
    """The engine the job asks for: a provider's Batch API (`[batch] enabled`), a Ray cluster
    (`[engine] kind = "ray"`), or live requests from this process."""
    if context.job.batch.enabled:
        from batchrun.engines.batch import BatchEngine

        return BatchEngine(context, transport)
    if context.job.engine.kind == "ray":
        from batchrun.engines.ray import RayEngine  # Ray is an optional extra: imported only here

        return RayEngine(context, transport)
    from batchrun.engines.live import LiveEngine

    return LiveEngine(context, transport)


class Run:
    """Feeds every pending row of a prompt set to an engine, journals the results, writes the output."""

    def __init__(
        self,
        context: RunContext,
        prompts: PromptSet,
        store: RunStore,
        observers: Sequence[Observer] = (),
    ) -> None:
        self.context = context
        self.job = context.job
        self.prompts = prompts
        self.store = store
        self.observers = tuple(observers)
        self._started = time.monotonic()
        self._input_saved = (0, 0)  # input batches written to the store, and pieces of the next one
        context.rerender = self.rerender

    async def run(self, *, fresh: bool = False, transport: httpx.AsyncBaseTransport | None = None) -> Summary:
        """Feed, journal, assemble the output; return the summary. Raises `StopRun` on an early stop."""
        context = self.context
        started = self._started = time.monotonic()
        self.store.open(fresh=fresh)
        try:
            cap = self.job.limits.max_cost_usd
            if cap is not None:
                # Earlier runs of this job count against the cap: a crash and a resume must not double it.
                context.budget = Budget(cap, spent_usd=self.store.spent_usd())
            context.finished = self.store.finished_ids()
            self.engine = make_engine(context, transport)
            with quiet_gc():
                await self._feed_engine()
        finally:
            self.store.close()
        wall_s = time.monotonic() - started
        if context.stop_reason is not None:
            await self._write_stopped_output(wall_s)
        output = await anyio.to_thread.run_sync(self.store.assemble)
        return summarize(
            output, counters=context.counters, wall_s=wall_s, job=self.job.name, note=self._left_out()
        )

    async def _write_stopped_output(self, wall_s: float) -> NoReturn:
        """Write the output of a stopped run, every input row in it (the unanswered ones `pending`); raise
        `StopRun` with its summary. An output that cannot be written (a full disk) is only a warning: what
        finished is in the journal, and the stop's own reason is what the user must read."""
        import duckdb

        reason = self.context.stop_reason
        assert reason is not None
        try:
            await anyio.to_thread.run_sync(self._save_unread_input)
            output = await anyio.to_thread.run_sync(self.store.assemble)
            summary = summarize(output, counters=self.context.counters, wall_s=wall_s, job=self.job.name)
        except (OSError, duckdb.Error) as exc:
            log.warning("the output of the stopped run could not be written: %s", exc)
            raise StopRun(reason) from None
        saved = f"{summary.ok:,} ok, {summary.failed:,} failed, {summary.pending:,} pending"
        raise StopRun(f"{reason}\nThe output {output} holds every row: {saved}.", summary)

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

    def rerender(self, ids: set[str]) -> Iterator[Request]:
        """The requests of the rows `ids` names, rendered again from the input (nothing is written)."""
        for batch in self.prompts.batches():
            for piece in self.prompts.render_batch(batch):
                for item in piece.items:
                    if isinstance(item, Request) and item.custom_id in ids:
                        yield item

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
        """The run's counts now, with the engine's own state, for a progress display (read-only, cheap)."""
        counters = self.context.counters
        base = Snapshot(
            elapsed_s=time.monotonic() - self._started,
            ok=counters.ok,
            failed=counters.failed,
            reused=counters.reused,
            sent=counters.sent,
            in_flight=0,
            prompt_tokens=counters.prompt_tokens,
            completion_tokens=counters.completion_tokens,
            cost_usd=counters.cost_usd,
            errors=dict(counters.errors),
            retries=dict(counters.retries),
            max_concurrency=self.job.limits.concurrency,
            stopping=self.context.draining,
        )
        return self.engine.describe(base)

    async def _feed_engine(self) -> None:
        queued = self.job.limits.concurrency * QUEUE_PER_SLOT
        requests_tx, requests_rx = anyio.create_memory_object_stream[Request](queued)
        results_tx, results_rx = anyio.create_memory_object_stream[Result](queued)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._writer, results_rx)
            signal_scope = await tg.start(self._watch_signals)
            # The run's counters, a line a second, go to the run folder for the report's "run over time".
            observers = (*self.observers, Timeline(self.store.dir))
            progress_scope = await tg.start(watch, self.snapshot, self.prompts.count_rows, observers)
            async with results_tx, anyio.create_task_group() as feed_group:
                self._feed_scope = feed_group.cancel_scope
                feed_group.start_soon(self._producer, requests_tx, results_tx.clone())
                await checkpoint()  # the producer starts reading before a thousand workers start waiting
                feed_group.start_soon(self.engine.run, requests_rx, results_tx.clone())
            signal_scope.cancel()
            progress_scope.cancel()

    async def _watch_signals(self, *, task_status: TaskStatus[anyio.CancelScope]) -> None:
        """First SIGINT/SIGTERM: stop feeding, let the engine finish what is in flight. Second: stop now.

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
                    if not self.context.draining:
                        self.context.drain(f"Interrupted ({name}).")
                        waits = self.engine.interrupt()
                        log.warning("%s: no new requests; %s (again to stop now)", name, waits)
                    else:
                        self.engine.abort()
                        self._feed_scope.cancel()

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
                    if self.context.draining:
                        return  # stopping: render and queue nothing more
                    self.store.write_input(piece.frame, piece.part)
                    self._input_saved = (self._input_saved[0], self._input_saved[1] + 1)
                    if not await self._feed(piece, done, requests, results):
                        return
                    await checkpoint()  # the engine starts on this piece before the next
                self._input_saved = (self._input_saved[0] + 1, 0)

    async def _feed(
        self,
        piece: Slice,
        done: FinishedIds,
        requests: MemoryObjectSendStream[Request],
        results: MemoryObjectSendStream[Result],
    ) -> bool:
        """Queue a piece's requests (cached answers and rows that cannot be sent go straight to the writer).

        False once nothing more should be queued: the run is draining, or the engine has stopped.
        """
        context = self.context
        finished = done.contains(piece.frame.get_column("custom_id").to_list())
        pending: list[Request] = []
        for item, skip in zip(piece.items, finished, strict=True):
            if skip:
                context.counters.reused += 1
            elif isinstance(item, Result):
                await send(results, item)
            else:
                pending.append(item)
        hits = context.cache.get_many(pending) if context.cache is not None else {}
        for queued, request in enumerate(pending, 1):
            if context.draining:
                return False
            hit = hits.get(request.custom_id)
            try:
                await (send(results, hit) if hit is not None else send(requests, request))
            except anyio.BrokenResourceError:
                return False  # the engine has stopped (a fatal error, an interrupt): nothing left to feed
            if queued % FEED_TURN == 0:
                # A worker's connection opens and its request is written only when the loop polls: queued
                # all at once, the first 1,024 requests went out 0.2 s late, after the last was ready.
                await checkpoint()
        return True

    async def _writer(self, results: MemoryObjectReceiveStream[Result]) -> None:
        """Journal results the moment they arrive: one write for all that are waiting, no await in between.

        With no await between receiving a result and writing it, no cancellation can lose one.
        """
        context = self.context
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
                    context.counters.add(result)
                if context.cache is not None and context.to_cache:
                    context.cache.put_many(context.to_cache)
                    context.to_cache.clear()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
