"""The run's journal on disk, resume, and the final Parquet.

Beside the output `out/x.parquet` lives the run folder `out/x.parquet.run/`:

- `results.jsonl`: every result as it arrives, one JSON line each, appended and kept across runs (a later
  line for the same `custom_id` wins, and a final one over one a rerun retries). Lines go to the kernel
  in one `write` per batch the moment they arrive, so even `kill -9` loses no answer that reached
  batchrun; an fsync every few seconds covers a power cut. A line cut short by one is dropped when the
  journal is next opened.
- `input-NNNNNN.parquet`: the input's columns plus `custom_id`, about 10,000 rows a part, rewritten by
  every run (the input may have changed between runs).
- `lock`: held (flock) by the one run that may use the folder; it holds the holder's pid.

The output is assembled from the two when the run ends (or stops), written to a temporary file and
renamed: a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from batchrun.errors import UsageError
from batchrun.records import OUTPUT_COLUMNS, Result
from batchrun.store import duck, journal, output_writer
from batchrun.store.journal import RESULT_FIELDS, result_schema

if TYPE_CHECKING:
    import duckdb
    import polars as pl

    from batchrun.store.remote import Remote

__all__ = [
    "RESULT_FIELDS",
    "Assembly",
    "FinishedIds",
    "RunStore",
    "publish",
    "result_schema",
    "run_folder",
    "run_lock",
]

JOURNAL = "results.jsonl"
LOCK = "lock"
FSYNC_SECONDS = 2.0
ASSEMBLE_MEMORY_MB = 128  # DuckDB's cap for the narrow index of the journal; beyond it, it spills to disk
ASSEMBLE_MEMORY_MAX_MB = 8192  # ... raised up to this should DuckDB still run out
INPUT_PART_ROWS = 10_000  # input rows per part file (a sweep writes one file per variant at a time)


def run_folder(output: Path) -> Path:
    """The run folder beside `output`: `out/x.parquet` -> `out/x.parquet.run`."""
    return output.with_name(output.name + ".run")


@contextmanager
def run_lock(output: Path) -> Iterator[None]:
    """Hold the run folder of `output` for this process; UsageError (exit 2) when another run holds it.

    Two runs of one job at once would send every row twice and delete each other's input parts. The lock
    is an flock on `lock` in the run folder: the kernel drops it when its process ends, however it ends, so
    a `kill -9` leaves no stale lock behind. The holder writes its pid into the file for the message.
    """
    folder = run_folder(output)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _lock(fd):
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            raise UsageError(
                f"{folder} is in use by another batchrun run (pid {pid if pid.isdigit() else 'unknown'}): "
                "wait for it to end, or stop it; two runs of one job at once would send every row twice. "
                "Nothing was sent."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


class FinishedIds:
    """The custom_ids with a final answer, 16 bytes each: their MD5 digests, sorted, as two 64-bit halves.

    Ten million ids as polars strings held 1 GB (and their sort as much again); as digests, 160 MB. Any
    custom_id works (a batch file's own too); two ids sharing a 128-bit digest is as unlikely as two rows
    sharing a custom_id, which is itself a 128-bit hash of the request.
    """

    def __init__(self, upper: pl.Series, lower: pl.Series) -> None:
        self.upper = upper  # UInt64, ascending (then `lower` ascending within equal values)
        self.lower = lower

    def __len__(self) -> int:
        return len(self.upper)

    def contains(self, ids: Sequence[str]) -> list[bool]:
        """For each of `ids`, whether it has a final answer: a binary search per id.

        (polars' `is_in` against the ids themselves hashed the whole set on every call: 0.16 s per
        1,000-row piece against half a million ids, 160 s of CPU in a resumed million-row run.)
        """
        import polars as pl

        if not len(self) or not ids:
            return [False] * len(ids)
        halves = [_md5_halves(custom_id) for custom_id in ids]
        upper = pl.Series([h[0] for h in halves], dtype=pl.UInt64)
        lower = [h[1] for h in halves]
        first = self.upper.search_sorted(upper, side="left")
        count = (self.upper.search_sorted(upper, side="right") - first).to_list()
        found = (
            self.lower.gather(first.clip(0, len(self) - 1)) == pl.Series(lower, dtype=pl.UInt64)
        ).to_list()
        result = []
        for i, n in enumerate(count):
            if n > 1:  # ids whose first halves agree (rare): look at each
                at = first[i]
                found[i] = lower[i] in self.lower.slice(at, n).to_list()
            result.append(n > 0 and bool(found[i]))
        return result


def _md5_halves(custom_id: str) -> tuple[int, int]:
    """A custom_id's MD5 as two unsigned 64-bit halves, as DuckDB's md5_number_upper/_lower give them."""
    digest = hashlib.md5(custom_id.encode("utf-8", "surrogatepass"), usedforsecurity=False).digest()
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")


def _lock(fd: int) -> bool:
    """flock the open file `fd` for this process; False at once when another process holds it (POSIX)."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Assembly:
    """What the last assembled output holds, beside what the journal holds."""

    output: Path
    rows: int
    answered: int  # rows of the output with a final answer (ok, or an error a rerun does not resend)
    answered_in_journal: int  # final answers in the journal: more than `answered` when rows are left out


class RunStore:
    """The journal of one output file: results in, finished rows out, final Parquet at the end."""

    def __init__(self, output: Path, remote: Remote | None = None) -> None:
        self.output = output
        self.remote = remote  # the object store the journal is kept in step with, if any
        self.dir = run_folder(output)
        self.journal = self.dir / JOURNAL
        self.assembly: Assembly | None = None  # what the last `assemble` wrote
        self._fd: int | None = None
        self._input_parts = 0
        self._pending: list[tuple[str, pl.DataFrame]] = []  # input pieces not yet in a part file
        self._pending_rows = 0
        self._synced_at = 0.0
        self._resume: tuple[FinishedIds, float] | None = None

    def open(self, *, fresh: bool = False) -> None:
        """Create the run folder and open the journal; `fresh` forgets every earlier answer."""
        self.dir.mkdir(parents=True, exist_ok=True)
        # What a run killed mid-way left: input parts (rewritten by every run), temporary files, the
        # assembly's spill folder, and beside the output the temporary files of an unfinished rename.
        stale = {*self.dir.glob("input-*"), *self.dir.glob("*.tmp")}
        stale |= {*self.output.parent.glob(f".{self.output.name}.*.tmp")}
        if fresh:
            stale |= {path for path in self.dir.iterdir() if path.name != LOCK}  # the lock stays held
        for path in stale:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        drop_partial_line(self.journal)
        if fresh and self.remote is not None:
            self.remote.forget()
        self._fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._synced_at = time.monotonic()
        self._resume = None

    def close(self) -> None:
        """Sync and close the journal."""
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None

    def finished_ids(self) -> FinishedIds:
        """`custom_id`s with a final answer from earlier runs: ok, or an error a retry cannot fix."""
        return self._read_resume()[0]

    def spent_usd(self) -> float:
        """What earlier runs of this job spent: the latest answer's cost per row in the journal, or what the
        budget counted for it when its reply gave no usage."""
        return self._read_resume()[1]

    def _read_resume(self) -> tuple[FinishedIds, float]:
        """Finished ids and money spent, from one read of the journal (kept until results are written)."""
        import polars as pl

        if self._resume is not None:
            return self._resume
        if not self.journal.is_file() or self.journal.stat().st_size == 0:
            # A fresh run: not even DuckDB's import is worth paying for.
            empty = pl.Series([], dtype=pl.UInt64)
            self._resume = FinishedIds(empty, empty), 0.0
            return self._resume
        with duck.connect(ASSEMBLE_MEMORY_MB, self.dir / "resume.tmp") as db:
            self._create_latest(db)
            (spent,) = db.execute(
                "SELECT coalesce(sum(coalesce(budget_usd, cost_usd)), 0) FROM latest"
            ).fetchall()[0]
            digests = db.sql(
                "SELECT md5_number_upper(custom_id) AS upper, md5_number_lower(custom_id) AS lower "
                "FROM latest WHERE NOT retryable ORDER BY upper, lower"
            ).to_arrow_table()
        upper, lower = (pl.Series(digests.column(name)) for name in ("upper", "lower"))
        self._resume = FinishedIds(upper, lower), float(spent)
        return self._resume

    def _create_latest(self, db: duckdb.DuckDBPyConnection) -> None:
        """Table `latest`: where each custom_id's latest readable line is, its `retryable`, `cost_usd` and
        `budget_usd`.

        A later line replaces an earlier one (a later run's answer replaces an earlier error), and a final
        line any retryable one (`journal.latest_rank`). DuckDB groups a narrow index of the lines
        (`journal.index_batches`, read a block at a time) under its memory cap, spilling to disk: no
        line's text is held.
        """
        import pyarrow as pa

        reader = pa.RecordBatchReader.from_batches(
            journal.index_schema(), journal.index_batches(self.journal)
        )
        db.register("journal_index", reader)
        # arg_max skips a null value, so the line's fields travel as one struct: a null cost stays null.
        db.execute(
            "CREATE TABLE latest AS SELECT custom_id, line.offset, line.length, line.retryable, "
            "line.cost_usd, line.budget_usd FROM (SELECT custom_id, arg_max({'offset': \"offset\", "
            "'length': length, 'retryable': retryable, 'cost_usd': cost_usd, 'budget_usd': budget_usd}, "
            + journal.latest_rank('"offset"')
            + ") AS line FROM journal_index GROUP BY custom_id)"
        )
        db.unregister("journal_index")

    def write_input(self, frame: pl.DataFrame, part: str = "") -> None:
        """Keep a piece of the input (its columns plus `custom_id`) for the final join.

        Pieces wait in memory until `INPUT_PART_ROWS` rows have come, then go to one file per `part` (a
        sweep's variant), so a run renders in small pieces without writing a thousand small files. Parts
        join in the order of their names: `part` first, then arrival.
        """
        self._pending.append((part, frame))
        self._pending_rows += frame.height
        if self._pending_rows >= INPUT_PART_ROWS:
            self.flush_input()

    def flush_input(self) -> None:
        """Write the pieces of input still waiting (the output's assembly does it first)."""
        import polars as pl

        by_part: dict[str, list[pl.DataFrame]] = {}
        for part, frame in self._pending:
            by_part.setdefault(part, []).append(frame)
        for part, frames in by_part.items():
            self._input_parts += 1
            path = self.dir / f"input-{part}{self._input_parts:06d}.parquet"
            tmp = path.with_name(path.name + ".tmp")
            whole = pl.concat(frames, how="vertical_relaxed", rechunk=False)
            whole.write_parquet(tmp, compression="zstd", statistics=False)
            os.replace(tmp, path)
        self._pending.clear()
        self._pending_rows = 0

    def write_results(self, results: Sequence[Result]) -> None:
        """Append results to the journal in one write; fsync when the last one is a few seconds old."""
        assert self._fd is not None, "open() the store first"
        if not results:
            return
        self._resume = None
        data = b"".join([_journal_line(result) for result in results])
        while data:  # a regular file takes it all at once; the loop only guards against a short write
            data = data[os.write(self._fd, data) :]
        if time.monotonic() - self._synced_at >= FSYNC_SECONDS:
            os.fsync(self._fd)
            self._synced_at = time.monotonic()

    def assemble(self) -> Path:
        """Write the output: every input row, in input order, with the latest answer for its `custom_id`.

        A row without any answer (a stopped run) has `status = "pending"`. Memory stays flat whatever the
        number of rows and the size of the answers: DuckDB finds, under its memory cap and spilling to
        disk, where each row's answer is in the journal (narrow columns only: ids, offsets, lengths), and
        `output_writer` writes the output from that a slice at a time. Should DuckDB still run out of
        memory, the cap is raised and the assembly run again: a run must never fail at its last step.
        """
        self.flush_input()
        inputs = sorted(self.dir.glob("input-*.parquet"))
        if not inputs:
            return self._write_empty()
        import duckdb

        tmp = self.output.with_name(f".{self.output.name}.{os.getpid()}.tmp")
        self.output.parent.mkdir(parents=True, exist_ok=True)
        memory_mb = ASSEMBLE_MEMORY_MB
        try:
            while True:
                try:
                    self.assembly = self._assemble(inputs, tmp, memory_mb)
                    break
                except duckdb.OutOfMemoryException:
                    if memory_mb >= ASSEMBLE_MEMORY_MAX_MB:
                        raise
                    memory_mb *= 4
            publish(tmp, self.output)
        finally:
            tmp.unlink(missing_ok=True)
        return self.output

    def _assemble(self, inputs: list[Path], tmp: Path, memory_mb: int) -> Assembly:
        """Write the output to `tmp`, DuckDB capped at `memory_mb`; return what it holds.

        Two steps, one after the other so that their memory never adds up: DuckDB writes where each output
        row's answer is (`places.tmp`, in output order) and closes; then the output is written from it.
        """
        import pyarrow as pa

        places = self.dir / "places.tmp"
        with duck.connect(memory_mb, self.dir / "assemble.tmp") as db:
            self._create_latest(db)
            (in_journal,) = db.execute("SELECT count(*) FROM latest WHERE NOT retryable").fetchall()[0]
            ids = pa.RecordBatchReader.from_batches(
                output_writer.ids_schema(), output_writer.input_ids(inputs)
            )
            db.register("input_ids", ids)
            db.execute(
                "COPY (SELECT latest.offset, latest.length, latest.retryable FROM input_ids "
                "LEFT JOIN latest USING (custom_id) ORDER BY input_ids.position) "
                f"TO '{duck.text(places)}' (FORMAT parquet)"
            )
        try:
            rows, answered = output_writer.write(inputs, places, self.journal, tmp)
        finally:
            places.unlink(missing_ok=True)
        return Assembly(self.output, rows, answered, int(in_journal))

    def _write_empty(self) -> Path:
        """No input at all: an output with Contract 2's columns and no rows."""
        import polars as pl

        schema = {name: dtype for name, dtype in result_schema().items() if name in OUTPUT_COLUMNS}
        tmp = self.output.with_name(f".{self.output.name}.{os.getpid()}.tmp")
        self.output.parent.mkdir(parents=True, exist_ok=True)
        try:
            pl.DataFrame(schema=schema).write_parquet(tmp)
            publish(tmp, self.output)
        finally:
            tmp.unlink(missing_ok=True)
        self.assembly = Assembly(self.output, 0, 0, 0)
        return self.output


def publish(tmp: Path, output: Path) -> None:
    """Rename a finished file into place; a rename only publishes what reached the disk, so sync first."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, output)


def _journal_line(result: Result) -> bytes:
    """One journal line. orjson writes a dataclass as an object of its fields, in order, at a tenth of
    json's CPU; what it refuses (an integer past 64 bits in a reply's fields) json writes, so the writer
    never fails on an answer already paid for."""
    try:
        return orjson.dumps(result, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:
        fields_ = {name: getattr(result, name) for name in RESULT_FIELDS}
        return (json.dumps(fields_, ensure_ascii=False, default=str) + "\n").encode("utf-8", "replace")


def drop_partial_line(path: Path) -> None:
    """Cut a journal back to its last complete line (a power cut can leave half a line)."""
    if not path.is_file():
        return
    size = path.stat().st_size
    if size == 0:
        return
    with path.open("rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        # Read backwards in blocks to the last newline; results are small, so one block nearly always does.
        end = size
        while end > 0:
            start = max(0, end - 65536)
            f.seek(start)
            block = f.read(end - start)
            cut = block.rfind(b"\n")
            if cut >= 0:
                f.truncate(start + cut + 1)
                return
            end = start
        f.truncate(0)
