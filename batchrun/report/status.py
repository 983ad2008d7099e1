"""`batchrun status JOB`: where the job's output stands, from its run folder, without touching it.

It works while a run is going and after a kill: it only reads. The run folder's lock is not taken (even a
shared flock for a moment could make a run starting then exit 2); whether a run holds it is read from
`/proc/locks` on Linux, else from whether the pid written in the lock file is alive. DuckDB spills to a
temporary folder of its own, never into the run folder.

- rows: the journal's latest line per row (ok, failed for good, failed but sent again by a rerun) against
  the input's row count (times the variants, for a sweep): the rest are pending;
- the last run: its summary file (exit code, when it ended, why it stopped), or, when the timeline shows a
  run that started later and no process holds the folder, that it ended without one (killed or crashed);
- a run going: its latest counts from the timeline (at most a second old);
- batches in flight: `batch_lines`, the Batch API engine's hook.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from batchrun.job.schema import Job
from batchrun.report.summary import summary_path
from batchrun.report.timeline import timeline_path
from batchrun.store import journal
from batchrun.store.mirror import shown
from batchrun.store.runstore import JOURNAL, LOCK, run_folder

MEMORY_MB = 128


@dataclass(frozen=True, slots=True)
class Status:
    """One output's state."""

    output: Path
    rows: int | None  # rows the job has (input rows x variants); None when the input cannot be read
    ok: int = 0
    failed: int = 0  # failed for good: a rerun does not send them again
    to_retry: int = 0  # failed, and a rerun sends them again (rate limits, 5xx, a stopped run)
    running_pid: int | None = None
    last_run: dict[str, Any] | None = None  # the summary file
    unfinished: dict[str, Any] | None = None  # a run that started after the summary and ended without one
    progress: dict[str, Any] | None = None  # the timeline's latest counts, while a run goes
    batches: list[str] = field(default_factory=list)
    input_problem: str | None = None

    @property
    def pending(self) -> int | None:
        """Rows without a final answer: not sent yet, or to be sent again."""
        if self.rows is None:
            return None
        return max(self.rows - self.ok - self.failed, 0)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "output": shown(self.output),
            "running": self.running_pid is not None,
            "pid": self.running_pid,
            "rows": self.rows,
            "ok": self.ok,
            "failed": self.failed,
            "failed_to_retry": self.to_retry,
            "pending": self.pending,
            "last_run": _last_run_fields(self.last_run),
            "ended_without_summary": self.unfinished,
            "progress": self.progress,
            "batches": self.batches,
            "input_problem": self.input_problem,
        }

    def lines(self) -> list[str]:
        """A few human lines."""
        lines = [f"output:   {shown(self.output)}"]
        if self.running_pid is not None:
            lines.append(f"running:  yes, pid {self.running_pid}")
            if self.progress:
                lines.append("progress: " + _progress(self.progress))
        else:
            lines.append("running:  no")
        total = f"{self.rows:,}" if self.rows is not None else "?"
        retry = f" ({self.to_retry:,} failed and are sent again by a rerun)" if self.to_retry else ""
        pending = f"{self.pending:,}" if self.pending is not None else "?"
        lines.append(f"rows:     {total}: {self.ok:,} ok, {self.failed:,} failed, {pending} pending{retry}")
        if self.input_problem:
            lines.append(f"input:    {self.input_problem}")
        if self.last_run:
            run = self.last_run
            ended, code = run.get("ended_at", "?"), run.get("exit_code")
            lines.append(f"last run: ended {ended}, exit {code} ({run.get('status')})")
            if run.get("message"):
                lines += ["          " + part for part in str(run["message"]).splitlines()]
        elif self.running_pid is None and self.unfinished is None:
            lines.append("last run: none recorded")
        if self.unfinished and self.running_pid is None:
            lines.append(
                f"last run: started {self.unfinished['started_at']} (pid {self.unfinished['pid']}) and ended "
                "without a summary: killed, or the machine stopped. What it journaled is kept; rerun to "
                "resume."
            )
        lines += [f"batch:    {line}" for line in self.batches]
        return lines


def job_status(job: Job, *, limit: int | None = None) -> Status:
    """The state of `job`'s output, read from its run folder, summary file and input."""
    output = job.output_path
    folder = run_folder(output)
    rows, problem = _input_rows(job, limit)
    ok = failed = to_retry = 0
    if (folder / JOURNAL).is_file():
        ok, failed, to_retry = _journal_counts(folder / JOURNAL)
    pid = running_pid(folder)
    last_run = _read_json(summary_path(output))
    start, progress = _timeline(timeline_path(folder))
    unfinished = None
    if start is not None and pid is None:
        ended = _when(last_run.get("ended_at")) if last_run else None
        if ended is None or start["start"] > ended + 1:
            started = datetime.fromtimestamp(start["start"], UTC).isoformat(timespec="seconds")
            unfinished = {"started_at": started, "pid": start.get("pid")}
    return Status(
        output=output,
        rows=rows,
        ok=ok,
        failed=failed,
        to_retry=to_retry,
        running_pid=pid,
        last_run=last_run,
        unfinished=unfinished,
        progress=progress if pid is not None else None,
        batches=batch_lines(folder),
        input_problem=problem,
    )


def batch_lines(folder: Path) -> list[str]:
    """One line per Batch API batch whose rows still wait, from the run folder's batch journal (read only:
    the batches' states are the provider's, seen by the next run's poll)."""
    from batchrun.engines.batchlog import BatchLog

    log = BatchLog(folder)
    lines = []
    for record in log.load().values():
        if log.rows_path(record.index).is_file():
            submitted = time.strftime("%Y-%m-%d %H:%M", time.localtime(record.at))
            state = record.batch_id if record.batch_id is not None else "written down, not yet created"
            lines.append(f"{state}: {record.rows:,} rows of {record.model or 'its model'}, sent {submitted}")
    return lines


def running_pid(folder: Path) -> int | None:
    """The pid of the process holding the run folder's lock, None when none does; reads only."""
    lock = folder / LOCK
    try:
        stat = lock.stat()
        written = lock.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    pid = int(written) if written.isdigit() else None
    holder = _flock_holder(stat.st_dev, stat.st_ino)
    if holder is not None:
        return (pid or holder) if holder else None
    if pid is None:
        return None
    try:
        os.kill(pid, 0)  # signal 0: is it alive (where /proc/locks cannot say)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid  # alive, another user's
    return pid


def _flock_holder(device: int, inode: int) -> int | None:
    """The pid /proc/locks lists as holding an flock on the file (device, inode), 0 when none does; None
    where there is no /proc/locks."""
    try:
        text = Path("/proc/locks").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        parts = line.split()  # "1: FLOCK  ADVISORY  WRITE 1234 00:2a:5678 0 EOF"; "->" marks a waiter
        if "FLOCK" not in parts or "->" in parts or len(parts) < parts.index("FLOCK") + 5:
            continue
        at = parts.index("FLOCK")
        where = parts[at + 4].split(":")
        if len(where) != 3 or where[2] != str(inode):
            continue
        try:
            same = (int(where[0], 16), int(where[1], 16)) == (os.major(device), os.minor(device))
        except ValueError:
            continue
        if same:
            return int(parts[at + 3]) if parts[at + 3].isdigit() else -1
    return 0


def _input_rows(job: Job, limit: int | None) -> tuple[int | None, str | None]:
    from batchrun.errors import BatchrunError
    from batchrun.job.sweep import prompt_set

    try:
        return prompt_set(job, limit=limit).count_rows(), None
    except BatchrunError as exc:
        return None, str(exc).splitlines()[0]


def _journal_counts(path: Path) -> tuple[int, int, int]:
    """Rows whose latest journal line is ok, an error for good, an error a rerun sends again."""
    import pyarrow as pa

    from batchrun.store import duck

    schema, batches = journal.field_batches(path, ["custom_id", "status", "retryable"], numbered=True)
    spill = Path(tempfile.mkdtemp(prefix="batchrun-status-"))  # never in the run folder: status only reads
    with duck.connect(MEMORY_MB, spill) as db:
        db.register("lines", pa.RecordBatchReader.from_batches(schema, batches))
        # arg_max skips a null value, so the line's fields travel as one struct.
        ok, failed, retry = db.execute(
            "WITH latest AS (SELECT custom_id, arg_max({'status': status, 'retryable': retryable}, "
            f"{journal.latest_rank('line')}) AS last FROM lines GROUP BY custom_id) "
            "SELECT count(*) FILTER (WHERE last.status = 'ok'), "
            "count(*) FILTER (WHERE last.status <> 'ok' AND NOT coalesce(last.retryable, false)), "
            "count(*) FILTER (WHERE last.status <> 'ok' AND coalesce(last.retryable, false)) FROM latest"
        ).fetchall()[0]
    return int(ok), int(failed), int(retry)


def _timeline(path: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The last run's start line and its latest count line, from the end of the timeline file."""
    try:
        with path.open("rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(0, size - 65536))
            tail = file.read().splitlines()
    except OSError:
        return None, None
    start = progress = None
    for raw in reversed(tail):
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(line, dict):
            continue
        if progress is None and "t" in line and start is None:
            progress = line
        if "start" in line:
            start = line
            break
    return start, progress


def _progress(line: dict[str, Any]) -> str:
    age = time.time() - float(line.get("t", 0))
    retries = line.get("retries") or {}
    retried = "; retried " + ", ".join(f"{k} {v:,}" for k, v in sorted(retries.items())) if retries else ""
    bound = f"; bound by {line['binding']}" if line.get("binding") else ""
    return (
        f"{line.get('ok', 0):,} ok, {line.get('failed', 0):,} failed this run, {line.get('sent', 0):,} sent, "
        f"{line.get('in_flight', 0)} in flight, {line.get('waiting', 0)} waiting{bound}{retried} "
        f"({age:.0f} s ago)"
    )


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _when(text: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return None


def _last_run_fields(run: dict[str, Any] | None) -> dict[str, Any] | None:
    if run is None:
        return None
    keys = ("status", "exit_code", "started_at", "ended_at", "rows", "ok", "failed", "pending", "cost_usd")
    return {k: run.get(k) for k in (*keys, "message") if k in run}
