"""The Batch API engine: the run's requests go to the provider's Batch API at half price, answers come back
within its window, and a deadline (`[batch] live_after`) sends what is still waiting live.

```
requests --split (a worker thread)--> part files --intent (journaled), upload, create, batch id (journaled)-->
  poll (sooner at first, then every poll_interval_s) --> download --> read --> results
  expired / cancelled / retryable rows --> the next batch, or live past live_after
```

Never twice for one row: each part is written down before its upload and its batch id the moment it is
known (`batchrun.engines.batchlog`); every batch is tagged with the job and run, so one created but never
recorded (a kill between create and record) is found by listing the provider's batches, not created again.
A rerun re-attaches to the batches in flight, collects what finished, and sends only rows that are in no
live batch and have no answer. Ctrl+C stops waiting; the batches keep running (`batchrun cancel JOB` stops
them). `[batch] wait = false` submits (or collects what is ready) and stops, exit 3, for cron.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from batchrun.engines.base import RunContext
from batchrun.engines.batchcollect import Collector
from batchrun.engines.batchlog import BatchLog, PartRecord, Row
from batchrun.engines.channels import receive, send
from batchrun.engines.outcomes import Tries, error_result
from batchrun.engines.structured import wants_json
from batchrun.errors import ErrorClass, ProviderError, UsageError
from batchrun.providers.batchapi import (
    BatchAPI,
    BatchInfo,
    Part,
    Refused,
    Tag,
    limits_for,
    make_batch_api,
    split,
)
from batchrun.providers.batchapi.split import profile
from batchrun.records import Request, Result
from batchrun.report.progress import Snapshot

FIRST_POLL_S = 1.0  # the first poll comes this soon (or at poll_interval_s, if sooner); then twice as late
CHUNK = 1_000  # requests handed to the splitting thread at a time
CONTROL_TIMEOUT = httpx.Timeout(300.0, connect=10.0)  # an upload of hundreds of MB takes minutes
DASHSCOPE_WINDOW_H = (24, 336)

log = logging.getLogger("batchrun")


class BatchEngine:
    """Answers the run's requests through the provider's Batch API (see the module docstring)."""

    def __init__(self, context: RunContext, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.context = context
        self.settings = context.job.batch
        self.log = BatchLog(context.run_dir)
        self._transport = transport
        self.live: dict[int, PartRecord] = {}  # submitted parts not collected yet
        self.infos: dict[int, BatchInfo] = {}  # each live part's batch as the last poll saw it
        self.resend: dict[str, Row] = {}  # rows to send again (the attempt they last had)
        self.next_poll_at: float | None = None
        self._first_intent: float | None = None  # the run's first upload, for `live_after`, across reruns
        self._cancelled: set[int] = set()
        self._pending: dict[str, tuple[Row, float]] = {}  # rows handed to `split`, not yet in a part
        self._wait = anyio.CancelScope()
        self._live_engine: Any = None  # the live engine, past `live_after`
        self._results: MemoryObjectSendStream[Result] | None = None
        self._stop_waiting = False  # Ctrl+C, or an error no batch can get past: leave the batches running

    async def run(
        self, requests: MemoryObjectReceiveStream[Request], results: MemoryObjectSendStream[Result]
    ) -> None:
        """Submit the requests in batches, wait for them, collect the answers (see the module docstring)."""
        context = self.context
        self._results = results
        async with (
            requests,
            results,
            httpx.AsyncClient(transport=self._transport, timeout=CONTROL_TIMEOUT) as client,
        ):
            api = make_batch_api(
                client,
                context.provider,
                context.base_url,
                context.api_key,
                completion_window=self.settings.completion_window,
            )
            self._check_window()
            owned = await self._recover(api)
            await self._submit(self._stream(requests, owned), api)
            while True:
                await self._collect(api)  # what was sent is waited for, even past the budget
                if self._stop_waiting or context.draining or not self.resend:
                    break
                rows, self.resend = self.resend, {}
                if self._past_deadline():
                    await self._send_live(rows, results)
                    break
                await self._submit(self._rerendered(rows), api)
                if not self.settings.wait:
                    await self._collect(api)
                    break
            self._explain_stop()

    def interrupt(self) -> str:
        """Stop waiting for the batches (they keep running at the provider)."""
        self._stop_waiting = True
        self._wait.cancel()
        if self._live_engine is not None:
            return str(self._live_engine.interrupt())
        rows = sum(record.rows for record in self.live.values())
        return f"no longer waiting for {rows:,} rows in {len(self.live)} batches (they keep running)"

    def abort(self) -> None:
        """Stop now."""
        self._stop_waiting = True
        self._wait.cancel()
        if self._live_engine is not None:
            self._live_engine.abort()

    def describe(self, snapshot: Snapshot) -> Snapshot:
        """The snapshot with each live batch's status and counts, and the next poll."""
        if self._live_engine is not None:
            snapshot = self._live_engine.describe(snapshot)
        lines = []
        for index, record in sorted(self.live.items()):
            info = self.infos.get(index)
            state = info.status if info is not None else "submitted"
            counts = info.counts if info is not None else None
            done = f", {counts.succeeded + counts.failed:,}/{record.rows:,} done" if counts else ""
            lines.append(f"batch {record.batch_id} ({record.rows:,} rows): {state}{done}")
        if self.next_poll_at is not None and self.live:
            lines.append(f"next poll in {max(0.0, self.next_poll_at - time.monotonic()):.0f} s")
        in_batches = sum(record.rows for record in self.live.values())
        return dataclasses.replace(snapshot, batches=tuple(lines), in_flight=snapshot.in_flight + in_batches)

    # -- before anything is sent --------------------------------------------------------------------

    def _check_window(self) -> None:
        """A completion window the provider would refuse stops the run before any upload."""
        window = self.settings.completion_window
        hours = int(window.rstrip("h"))
        where = profile(self.context.job.provider.kind, self.context.base_url)
        source = self.context.job.source
        if where == "dashscope" and not DASHSCOPE_WINDOW_H[0] <= hours <= DASHSCOPE_WINDOW_H[1]:
            raise UsageError(
                f'{source}: [batch] completion_window = "{window}": DashScope takes "24h" to "336h"'
            )
        if "api.openai.com" in self.context.base_url and window != "24h":
            raise UsageError(f'{source}: [batch] completion_window = "{window}": OpenAI takes only "24h"')

    async def _recover(self, api: BatchAPI) -> set[str]:
        """Pick up the parts of earlier runs whose rows still wait: poll the submitted, find or resubmit the
        rest; return the rows they hold (not to be sent again)."""
        parts = self.log.load()
        if not parts:
            return set()
        self._first_intent = min(record.at for record in parts.values())
        owner: dict[str, int] = {}
        for index in sorted(parts):  # a row sent again belongs to its latest part
            if self.log.rows_path(index).is_file():
                owner.update((row.custom_id, index) for row in self.log.read_rows(index))
        finished = self.context.finished
        if finished is not None and owner:
            ids = list(owner)
            for custom_id, done in zip(ids, finished.contains(ids), strict=True):
                if done:
                    del owner[custom_id]
        waiting = set(owner.values())
        unrecorded = []
        for index, record in parts.items():
            if index not in waiting:
                self.log.forget(index)  # every row of it is answered
                continue
            if self.context.budget is not None:
                self.context.budget.hold(record.reserved_usd)  # committed by the run that sent it
            if record.batch_id is not None:
                self.live[index] = record
            else:
                unrecorded.append(record)
        if unrecorded:
            await self._adopt(unrecorded, api)
        log.info("%d rows are in %d batches from an earlier run", len(owner), len(self.live))
        return set(owner)

    async def _adopt(self, unrecorded: list[PartRecord], api: BatchAPI) -> None:
        """Parts written down but with no batch id (a kill around the create): find them, or submit them."""
        known = {record.batch_id for record in self.live.values() if record.batch_id}
        tags = [self._tag(record) for record in unrecorded]
        found = await api.find(tags, since=min(record.at for record in unrecorded), exclude=known)
        for record in unrecorded:
            batches = found.get(self._tag(record).key)
            if batches:
                self.log.submitted(record, batches[0].id)
                self.live[record.index] = record
                log.info("batch %s: found again for part %d", record.batch_id, record.index)
                continue
            upload = self.log.upload_path(record.index)
            if upload is None:
                continue  # the next run renders its rows again
            rows = [row.custom_id for row in self.log.read_rows(record.index)]
            part = Part(record.index, record.model, upload, tuple(rows), upload.stat().st_size)
            await self._upload(part, record, api)

    # -- sending --------------------------------------------------------------------------------------

    async def _stream(
        self, requests: MemoryObjectReceiveStream[Request], owned: set[str]
    ) -> AsyncIterator[tuple[Request, int]]:
        """The run's requests, but for rows a live batch holds, each as its first attempt."""
        while not self.context.draining and (request := await receive(requests)) is not None:
            if request.custom_id not in owned:
                yield request, 1

    async def _rerendered(self, rows: dict[str, Row]) -> AsyncIterator[tuple[Request, int]]:
        """The rows to send again, rendered again from the input, each as its next attempt."""
        rerender = self.context.rerender
        assert rerender is not None
        found = rerender(set(rows))
        while chunk := await anyio.to_thread.run_sync(lambda: list(itertools.islice(found, CHUNK))):
            for request in chunk:
                yield request, rows[request.custom_id].attempt + 1

    async def _submit(self, source: AsyncIterator[tuple[Request, int]], api: BatchAPI) -> None:
        """Split `source` into parts in a worker thread, uploading each as it is complete."""
        context = self.context
        limits = limits_for(
            context.job.provider.kind,
            context.base_url,
            self.settings.max_requests_per_file,
            self.settings.max_bytes_per_file,
        )
        first = max(self.log.load(), default=-1) + 1

        def requests() -> Iterator[Request]:  # in the worker thread: the loop hands it chunks
            while chunk := anyio.from_thread.run(self._admit, source):
                yield from chunk

        def run_split() -> None:
            for item in split(requests(), api, limits, self.log.folder, first):
                anyio.from_thread.run(self._on_split, item, api)

        await anyio.to_thread.run_sync(run_split)

    async def _admit(self, source: AsyncIterator[tuple[Request, int]]) -> list[Request]:
        """The next chunk for `split`: each row noted (its attempt, JSON mode, cache key) and its worst-case
        cost reserved at the batch price; none once the source ends, the run stops, or the budget is spent."""
        context = self.context
        discount = context.job.pricing.batch_discount
        chunk: list[Request] = []
        async for request, attempt in source:
            if context.draining:
                break
            if request.custom_id in self._pending:
                continue  # the same row twice (same id, same request): one answer serves both
            reserved = context.reserve(request, discount)
            if reserved is None:
                break  # the budget is reached (the run drains): the rest waits for a rerun
            key = context.cache.key(request) if context.cache is not None else None
            row = Row(request.custom_id, wants_json(request.body), attempt, key)
            self._pending[request.custom_id] = (row, reserved)
            chunk.append(request)
            if len(chunk) >= CHUNK:
                break
        return chunk

    async def _on_split(self, item: Part | Refused, api: BatchAPI) -> None:
        """A part is complete: write it down, upload it; a request no batch can carry fails its row."""
        context = self.context
        if isinstance(item, Refused):
            row, reserved = self._pending.pop(item.custom_id)
            context.settle(reserved, 0.0)
            await self._send(error_result(item.custom_id, item.error, Tries(made=row.attempt)))
            return
        pending = [self._pending.pop(custom_id) for custom_id in item.custom_ids]
        self.log.write_rows(item.index, (row for row, _ in pending))
        reserved = math.fsum(amount for _, amount in pending)
        record = PartRecord(item.index, len(item.custom_ids), item.model, time.time(), reserved)
        self.log.intend(record)
        if self._first_intent is None:
            self._first_intent = record.at
        await self._upload(item, record, api)

    async def _upload(self, part: Part, record: PartRecord, api: BatchAPI) -> None:
        """Upload a written-down part and create its batch; a failure stops the run (a rerun finds it)."""
        context = self.context
        if self._stop_waiting:
            return  # written down, not sent: the next run sends it
        try:
            info = await api.submit(part, self._tag(record))
        except ProviderError as exc:
            if exc.error_class is ErrorClass.ROW:  # the provider refuses the file itself
                collector = Collector(context, record.model, None)
                for row in self.log.read_rows(record.index):
                    collector.error(row, exc)
                await self._deliver(collector, record)
                return
            self._stop_waiting = True
            if exc.error_class is ErrorClass.FATAL:
                context.fail(exc)
            else:
                context.drain(
                    f"The Batch API did not take part {record.index} ({exc.message}); rerun to try again."
                )
            return
        self.log.submitted(record, info.id)
        self.live[record.index] = record
        self.infos[record.index] = info
        context.counters.sent += record.rows
        log.info("batch %s: part %d, %d rows, model %s", info.id, record.index, record.rows, record.model)

    def _tag(self, record: PartRecord) -> Tag:
        return Tag(self.context.job.name, self.log.run_token, record.index, record.rows)

    # -- waiting and collecting -----------------------------------------------------------------------

    async def _collect(self, api: BatchAPI) -> None:
        """Poll the live batches until every one is over (or, with `wait = false`, once), collecting each."""
        delay = min(FIRST_POLL_S, self.settings.poll_interval_s)
        while self.live and not self._stop_waiting:
            if self._past_deadline():
                await self._cancel_live(api)
            for index, record in sorted(self.live.items()):
                assert record.batch_id is not None
                info = self.infos[index] = await api.retrieve(record.batch_id)
                if info.done:
                    await self._collect_part(api, record, info)
            if not self.live or not self.settings.wait:
                return
            self.next_poll_at = time.monotonic() + delay
            with anyio.CancelScope() as self._wait:
                await anyio.sleep(delay)
            self.next_poll_at = None
            delay = min(delay * 2, self.settings.poll_interval_s)

    async def _collect_part(self, api: BatchAPI, record: PartRecord, info: BatchInfo) -> None:
        """Download a finished batch, turn its lines into rows, and forget the part."""
        assert record.batch_id is not None
        collector = Collector(self.context, record.model, record.batch_id)
        rows = self._unanswered(list(self.log.read_rows(record.index)))
        if info.error is not None:
            for row in rows:
                collector.error(row, info.error)
        elif rows:
            folder = self.log.results_folder(record.index)
            paths = await api.download(info, folder)
            by_id = {row.custom_id: row for row in rows}

            def read() -> None:  # in a worker thread: parsing 50,000 replies takes a while
                for number, line in enumerate(api.read(paths, list(by_id)), 1):
                    collector.line(by_id[line.custom_id], line)
                    if number % CHUNK == 0:  # to the writer as they are read: memory holds a chunk
                        anyio.from_thread.run(self._send_all, collector.outcome.results)

            await anyio.to_thread.run_sync(read)
            for path in paths:
                path.unlink(missing_ok=True)
        await self._deliver(collector, record)

    async def _deliver(self, collector: Collector, record: PartRecord) -> None:
        """Hand a batch's rows to the writer, settle its budget, queue what goes again."""
        outcome = collector.outcome
        await self._send_all(outcome.results)
        self.resend.update(outcome.resend)
        self.context.settle(record.reserved_usd, outcome.charged_usd)
        self.live.pop(record.index, None)
        self.infos.pop(record.index, None)
        self.log.forget(record.index)
        log.info(
            "batch %s over: %d answered, %d failed, %d to send again",
            record.batch_id,
            outcome.answered,
            outcome.failed,
            len(outcome.resend),
        )
        if outcome.fatal is not None:
            self.context.fail(outcome.fatal)
            self._stop_waiting = True

    async def _send(self, result: Result) -> None:
        assert self._results is not None
        await send(self._results, result)

    async def _send_all(self, results: list[Result]) -> None:
        """Send `results` to the writer and empty the list."""
        for result in results:
            await self._send(result)
        results.clear()

    def _unanswered(self, rows: list[Row]) -> list[Row]:
        """The rows whose answer no earlier run journaled (a batch collected again after a kill)."""
        finished = self.context.finished
        if finished is None or not len(finished):
            return rows
        done = finished.contains([row.custom_id for row in rows])
        return [row for row, answered in zip(rows, done, strict=True) if not answered]

    def _past_deadline(self) -> bool:
        live_after = self.settings.live_after_s
        if live_after is None or self._first_intent is None:
            return False
        return time.time() >= self._first_intent + live_after

    async def _cancel_live(self, api: BatchAPI) -> None:
        """Past `live_after`: cancel every live batch (its unanswered rows then go live)."""
        for index, record in self.live.items():
            if index not in self._cancelled and record.batch_id is not None:
                self._cancelled.add(index)
                log.info("batch %s: cancelled at the live_after deadline", record.batch_id)
                await api.cancel(record.batch_id)

    async def _send_live(self, rows: dict[str, Row], results: MemoryObjectSendStream[Result]) -> None:
        """Past the deadline: the rows still unanswered go through the live engine."""
        from batchrun.engines.live import LiveEngine

        log.info("%d rows still unanswered past live_after: sending them live", len(rows))
        engine = self._live_engine = LiveEngine(self.context, self._transport)
        requests_tx, requests_rx = anyio.create_memory_object_stream[Request](CHUNK)
        async with anyio.create_task_group() as tg:
            tg.start_soon(engine.run, requests_rx, results.clone())
            async with requests_tx:
                async for request, _ in self._rerendered(rows):
                    try:
                        await send(requests_tx, request)
                    except anyio.BrokenResourceError:
                        break  # the live engine stopped (a fatal error)

    def _explain_stop(self) -> None:
        """Say what a stopped run leaves at the provider; with `wait = false`, stop if anything is left."""
        rows = sum(record.rows for record in self.live.values())
        if not rows:
            return
        ids = ", ".join(str(record.batch_id) for record in self.live.values())
        if not self.context.draining:  # wait = false: leaving them is the plan
            self.context.drain(f"{rows:,} rows pending in batches ({ids}); rerun to collect them.")
            return
        self.context.explain(
            f"{rows:,} rows are in batches still running at the provider ({ids}): the same command collects "
            "them; `batchrun cancel` cancels them."
        )
