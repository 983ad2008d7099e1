"""The run's journal on disk, resume, and the final Parquet.

Beside the output `out/x.parquet` lives the run folder `out/x.parquet.run/`:

- `results.jsonl`: every result as it arrives, one JSON line each, appended and kept across runs (a later
  line for the same `custom_id` wins). Lines go to the kernel in one `write` per batch the moment they
  arrive, so even `kill -9` loses no answer that reached batchrun; an fsync every few seconds covers a
  power cut. A line cut short by one is dropped when the journal is next opened.
- `input-NNNNNN.parquet`: the input's columns plus `custom_id`, about 10,000 rows a part, rewritten by
  every run (the input may have changed between runs).

The output is assembled from the two when the run ends, written to a temporary file and renamed: a
reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from batchrun import duck
from batchrun.records import OUTPUT_COLUMNS, Result

if TYPE_CHECKING:
    import duckdb
    import polars as pl

RESULT_FIELDS = tuple(f.name for f in fields(Result))
JOURNAL = "results.jsonl"
FSYNC_SECONDS = 2.0
ASSEMBLE_MEMORY_MB = 128  # DuckDB's cap while assembling the output; beyond it, it spills to disk
ASSEMBLE_MEMORY_MAX_MB = 8192  # ... raised up to this when a join needs more
INPUT_PART_ROWS = 10_000  # input rows per part file (a sweep writes one file per variant at a time)
INPUT_ROW = "__batchrun_row"  # an input part's row numbers, which keep the output in input order
INPUT_PART = "__batchrun_part"  # the part's place among the parts, while assembling


def result_schema() -> dict[str, Any]:
    """Column types of the journal: Contract 2's types, fixed so that every read agrees."""
    import polars as pl

    ints = {"prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "total_tokens"}
    schema: dict[str, Any] = {}
    for name in RESULT_FIELDS:
        if name in ints or name in ("attempts", "http_status"):
            schema[name] = pl.Int64
        elif name in ("cost_usd", "latency_s", "budget_usd"):
            schema[name] = pl.Float64
        elif name in ("retryable", "cached"):
            schema[name] = pl.Boolean
        elif name == "completions":
            schema[name] = pl.List(pl.String)
        else:
            schema[name] = pl.String
    return schema


class RunStore:
    """The journal of one output file: results in, finished rows out, final Parquet at the end."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.dir = output.with_name(output.name + ".run")
        self.journal = self.dir / JOURNAL
        self._fd: int | None = None
        self._input_parts = 0
        self._pending: list[tuple[str, pl.DataFrame]] = []  # input pieces not yet in a part file
        self._pending_rows = 0
        self._synced_at = 0.0

    def open(self, *, fresh: bool = False) -> None:
        """Create the run folder and open the journal; `fresh` forgets every earlier answer."""
        if fresh and self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        # What a run killed mid-way left: input parts (rewritten by every run), temporary files, and the
        # assembly's spill folder.
        for stale in [*self.dir.glob("input-*"), *self.dir.glob("*.tmp")]:
            if stale.is_dir():
                shutil.rmtree(stale)
            else:
                stale.unlink()
        _drop_partial_line(self.journal)
        self._fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._synced_at = time.monotonic()

    def close(self) -> None:
        """Sync and close the journal."""
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None

    def finished_ids(self) -> pl.Series:
        """`custom_id`s with a final answer from earlier runs: ok, or an error a retry cannot fix."""
        import polars as pl

        table = self._latest("custom_id", "NOT retryable")
        if table is None:
            return pl.Series("custom_id", [], dtype=pl.String)
        return pl.Series("custom_id", table.column(0), dtype=pl.String)

    def spent_usd(self) -> float:
        """What earlier runs of this job spent: the latest answer's cost per row in the journal, or what the
        budget counted for it when its reply gave no usage."""
        table = self._latest("sum(coalesce(budget_usd, cost_usd))")
        return float(table.column(0)[0].as_py() or 0.0) if table is not None else 0.0

    def _latest(self, select: str, where: str = "true") -> Any:
        """`select` over the journal's latest line per custom_id, as a pyarrow table; None with no journal.

        DuckDB under the assembly's memory cap, reading three fields of each line: polars' unique() over a
        million-line journal held 790 MB at the start of a resumed run.
        """
        if not self.journal.is_file() or self.journal.stat().st_size == 0:
            return None  # a fresh run: not even DuckDB's import is worth paying for
        with duck.connect(ASSEMBLE_MEMORY_MB, self.dir / "resume.tmp") as db:
            self._create_latest(db, ("custom_id", "retryable", "cost_usd", "budget_usd"))
            return db.sql(f"SELECT {select} FROM latest WHERE {where}").to_arrow_table()

    def _create_latest(self, db: duckdb.DuckDBPyConnection, fields: Sequence[str] = RESULT_FIELDS) -> None:
        """Table `latest`: the journal's `fields` from its latest line per custom_id.

        A later line replaces an earlier one (a later run's answer replaces an earlier error). Finding it by
        line number (`rowid`, with one thread) keeps the wide rows out of the grouping.
        """
        db.execute(f"CREATE TABLE journal AS {self._journal_sql(fields)}")
        db.execute(
            "CREATE TABLE latest AS SELECT * FROM journal "
            "WHERE rowid IN (SELECT max(rowid) FROM journal GROUP BY custom_id)"
        )
        db.execute("DROP TABLE journal")

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
            whole.with_row_index(INPUT_ROW).write_parquet(tmp, compression="zstd", statistics=False)
            os.replace(tmp, path)
        self._pending.clear()
        self._pending_rows = 0

    def write_results(self, results: Sequence[Result]) -> None:
        """Append results to the journal in one write; fsync when the last one is a few seconds old."""
        assert self._fd is not None, "open() the store first"
        if not results:
            return
        data = b"".join([_journal_line(result) for result in results])
        while data:  # a regular file takes it all at once; the loop only guards against a short write
            data = data[os.write(self._fd, data) :]
        if time.monotonic() - self._synced_at >= FSYNC_SECONDS:
            os.fsync(self._fd)
            self._synced_at = time.monotonic()

    def assemble(self) -> Path:
        """Join the input with the latest result per `custom_id`, in input order, into the output file.

        DuckDB does the join: it spills to disk under a memory cap, so a million-row run assembles in about
        the memory of a thousand-row one (polars' join held the whole journal: 1.3 GiB for a million rows).
        Should the cap prove too small (very long completions), it is raised and the join run again: a run
        must never fail at its last step.
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
                    self._join(inputs, tmp, memory_mb)
                    break
                except duckdb.OutOfMemoryException:
                    if memory_mb >= ASSEMBLE_MEMORY_MAX_MB:
                        raise
                    memory_mb *= 4
            _publish(tmp, self.output)
        finally:
            tmp.unlink(missing_ok=True)
        return self.output

    def _join(self, inputs: list[Path], tmp: Path, memory_mb: int) -> None:
        """Write the joined output to `tmp` with DuckDB, using at most about `memory_mb` of memory.

        Every step can spill to disk: tables, a grouping, joins and a sort. Window functions cannot (a
        `row_number() OVER ()` held a million rows in memory), so the order comes from stored numbers:
        each input part's own row numbers, and the journal table's `rowid` (its line order).
        """
        # Parts in the order of their names, each row numbered within its part.
        parts = " UNION ALL ".join(
            f"SELECT *, {i} AS {INPUT_PART} FROM read_parquet('{duck.text(path)}')"
            for i, path in enumerate(inputs)
        )
        with duck.connect(memory_mb, self.dir / "assemble.tmp") as db:
            input_columns = [c for c in db.read_parquet(str(inputs[0])).columns if c != INPUT_ROW]
            # The input's columns first (custom_id last among them, or where a batch file has it), then
            # Contract 2's in their fixed order.
            columns = [*input_columns, *(c for c in OUTPUT_COLUMNS if c not in input_columns)]
            select = ", ".join(duck.quoted(c) for c in columns)
            # One statement per step: DuckDB caps each operator, and a join and a sort in one pipeline ran
            # out of memory where the steps apart did not.
            self._create_latest(db)
            db.execute(
                f"CREATE TABLE joined AS SELECT * FROM ({parts}) AS inputs LEFT JOIN latest USING (custom_id)"
            )
            db.execute("DROP TABLE latest")
            db.execute(
                f"COPY (SELECT {select} FROM joined ORDER BY {INPUT_PART}, {INPUT_ROW}) "
                f"TO '{duck.text(tmp)}' (FORMAT parquet, COMPRESSION zstd)"
            )

    def _journal_sql(self, fields: Sequence[str]) -> str:
        """The journal's `fields` as a DuckDB query with Contract 2's types, its lines in file order."""
        schema = result_schema()
        types = {name: _duckdb_type(schema[name]) for name in fields}
        if not self.journal.is_file() or self.journal.stat().st_size == 0:
            nulls = ", ".join(f"NULL::{t} AS {duck.quoted(n)}" for n, t in types.items())
            return f"SELECT {nulls} WHERE false"
        spec = "{" + ", ".join(f"'{n}': '{t}'" for n, t in types.items()) + "}"
        return (
            f"SELECT * FROM read_json('{duck.text(self.journal)}', "
            f"format = 'newline_delimited', columns = {spec})"
        )

    def _write_empty(self) -> Path:
        """No input at all: an output with Contract 2's columns and no rows."""
        import polars as pl

        schema = {name: dtype for name, dtype in result_schema().items() if name in OUTPUT_COLUMNS}
        tmp = self.output.with_name(f".{self.output.name}.{os.getpid()}.tmp")
        self.output.parent.mkdir(parents=True, exist_ok=True)
        try:
            pl.DataFrame(schema=schema).write_parquet(tmp)
            _publish(tmp, self.output)
        finally:
            tmp.unlink(missing_ok=True)
        return self.output


def _publish(tmp: Path, output: Path) -> None:
    """Rename a finished file into place; a rename only publishes what reached the disk, so sync first."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, output)


def _duckdb_type(dtype: Any) -> str:
    """A journal column's polars type as DuckDB's."""
    import polars as pl

    if isinstance(dtype, pl.List):
        return _duckdb_type(dtype.inner) + "[]"
    names = {pl.Int64: "BIGINT", pl.Float64: "DOUBLE", pl.Boolean: "BOOLEAN", pl.String: "VARCHAR"}
    return names[dtype]


def _journal_line(result: Result) -> bytes:
    """One journal line. orjson writes a dataclass as an object of its fields, in order, at a tenth of
    json's CPU; what it refuses (an integer past 64 bits in a reply's fields) json writes, so the writer
    never fails on an answer already paid for."""
    try:
        return orjson.dumps(result, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:
        fields_ = {name: getattr(result, name) for name in RESULT_FIELDS}
        return (json.dumps(fields_, ensure_ascii=False, default=str) + "\n").encode("utf-8", "replace")


def _drop_partial_line(path: Path) -> None:
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
