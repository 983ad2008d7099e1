"""Reading the run's journal (`results.jsonl`) in bounded memory, whatever its size.

Two reads serve resume, the output's assembly and `estimate`:

- `index_batches`: every readable line's `custom_id`, place in the file (byte offset and length) and the
  fields resume needs, a block of lines at a time: a narrow table for DuckDB to find each row's latest line.
- `fetch`: the lines at given places, read back and parsed whole, for one slice of the output at a time.

polars parses a block of lines at once; a block it refuses is read line by line, and a line that is not a
result (corrupt, cut short by a crash in the middle of the file, not an object, no `custom_id`) is skipped
with a warning: its row counts as unanswered and is sent again. A last line without its newline (a write cut
short) is left out silently; `run` cuts it off when it opens the journal.
"""

from __future__ import annotations

import io
import itertools
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from batchrun.records import Result

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa

RESULT_FIELDS = tuple(f.name for f in fields(Result))
BLOCK_BYTES = 1 << 20  # journal read at a time: ~2,000 lines of half a KB (larger blocks held more memory)
WARNED_LINES = 5  # unreadable lines named one by one; past that, only counted


def latest_rank(position: str) -> str:
    """SQL ranking a row's journal lines for "which one counts": a final line (ok, or an error a rerun does
    not send again) over any line a rerun retries, then the later over the earlier (`position`: the line's
    offset or number).

    Within one machine's journal the later line is always the newer one. With an output on an object store
    (`batchrun.store.remote`) lines from several machines meet, and an old retryable error sent up late may
    come after another machine's answer to the same row: it must not make a rerun pay for the row again.
    """
    return f"({position} + CASE WHEN coalesce(retryable, false) THEN 0 ELSE 4611686018427387904 END)"


# With `offset` and `length`: what resume needs of each line.
INDEX_FIELDS = ("custom_id", "retryable", "cost_usd", "budget_usd")

log = logging.getLogger("batchrun")


def result_schema() -> dict[str, Any]:
    """Column types of the journal: Contract 2's types, fixed so that every read agrees."""
    import polars as pl

    ints = {"prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "total_tokens"}
    schema: dict[str, Any] = {}
    for name in RESULT_FIELDS:
        if name in ints or name in ("attempts", "http_status"):
            schema[name] = pl.Int64
        elif name in ("cost_usd", "latency_s", "budget_usd", "finished_at"):
            schema[name] = pl.Float64
        elif name in ("retryable", "cached"):
            schema[name] = pl.Boolean
        elif name == "completions":
            schema[name] = pl.List(pl.String)
        else:
            schema[name] = pl.String
    return schema


def index_schema() -> pa.Schema:
    """The columns `index_batches` yields."""
    import pyarrow as pa

    return pa.schema(
        [
            ("custom_id", pa.large_string()),
            ("offset", pa.int64()),
            ("length", pa.int64()),
            ("retryable", pa.bool_()),
            ("cost_usd", pa.float64()),
            ("budget_usd", pa.float64()),
        ]
    )


def index_batches(path: Path) -> Iterator[pa.RecordBatch]:
    """Every readable line of the journal at `path`, in file order: its custom_id, offset, length (with the
    newline), retryable, cost_usd and budget_usd; one batch per block read."""
    import polars as pl

    schema = result_schema()
    narrow = {name: schema[name] for name in INDEX_FIELDS}
    target = index_schema()
    skipped = _Skipped(path)
    first_line = 0
    for start, block in _blocks(path):
        lines = block.split(b"\n")[:-1]
        lengths = [len(line) + 1 for line in lines]
        offsets = list(itertools.accumulate(lengths[:-1], initial=start))
        frame = _parse(block, len(lines), narrow)
        if frame is None:  # polars refused the block: read it line by line
            rows = [_coerce(_load(line), narrow) for line in lines]
            frame = pl.DataFrame(rows, schema=narrow, orient="row")
        frame = frame.with_columns(
            pl.Series("offset", offsets, dtype=pl.Int64), pl.Series("length", lengths, dtype=pl.Int64)
        )
        bad = frame.get_column("custom_id").is_null()
        if bad.any():
            for index in bad.arg_true().to_list():
                skipped.add(first_line + index)
            frame = frame.filter(~bad)
        first_line += len(lines)
        yield from frame.select(target.names).to_arrow().cast(target).to_batches()
    skipped.report()


def field_batches(
    path: Path, names: Sequence[str], *, numbered: bool = False
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The fields `names` of every readable result line of the journal at `path`, in file order, one batch
    per block read; with their schema. `numbered` adds `line`, the line's 0-based place in the file (a later
    line for the same `custom_id` wins). What the report and `batchrun status` read of a journal of any
    size (unreadable lines are left out silently: the run that reads the journal names them)."""
    import polars as pl

    schema = result_schema()
    narrow = {name: schema[name] for name in dict.fromkeys(["custom_id", *names])}
    columns = [*names, "line"] if numbered else list(names)
    target = pl.DataFrame(schema={**narrow, "line": pl.Int64}).select(columns).to_arrow().schema

    def batches() -> Iterator[pa.RecordBatch]:
        first = 0
        for _, block in _blocks(path):
            lines = block.split(b"\n")[:-1]
            frame = _parse(block, len(lines), narrow)
            if frame is None:
                rows = [_coerce(_load(line), narrow) for line in lines]
                frame = pl.DataFrame(rows, schema=narrow, orient="row")
            frame = frame.with_columns(pl.int_range(first, first + len(lines), dtype=pl.Int64).alias("line"))
            first += len(lines)
            frame = frame.filter(pl.col("custom_id").is_not_null()).select(columns)
            yield from frame.to_arrow().cast(target).to_batches()

    return target, batches()


def fetch(fd: int, offsets: Sequence[int], lengths: Sequence[int]) -> pl.DataFrame:
    """The journal lines at `offsets` (ascending, each `lengths` long), parsed whole, one row each in order.

    Lines that follow each other in the file are read in one system call: the journal is near input order,
    so a slice of the output is mostly a few long runs. A line that no longer parses (it did when indexed)
    keeps what can be read of it, its other fields null.
    """
    import polars as pl

    schema = result_schema()
    if not offsets:
        return pl.DataFrame(schema=schema)
    runs: list[bytes] = []
    start = end = offsets[0]
    for offset, length in zip(offsets, lengths, strict=True):
        if offset != end:
            runs.append(os.pread(fd, end - start, start))
            start = offset
        end = offset + length
    runs.append(os.pread(fd, end - start, start))
    data = runs[0] if len(runs) == 1 else b"".join(runs)
    frame = _parse(data, len(offsets), schema)
    if frame is None:
        lines = data.split(b"\n")[: len(offsets)]
        frame = pl.DataFrame([_coerce(_load(line), schema) for line in lines], schema=schema, orient="row")
    return frame


def _blocks(path: Path) -> Iterator[tuple[int, bytes]]:
    """(byte offset, data) of each block of whole lines, in file order; a last line without its newline is
    left out."""
    try:
        file = path.open("rb")
    except FileNotFoundError:
        return
    with file:
        start = 0
        held: list[bytes] = []  # the start of a line that has not ended yet
        while chunk := file.read(BLOCK_BYTES):
            cut = chunk.rfind(b"\n") + 1
            if cut == 0:  # a line longer than a block: read on until it ends
                held.append(chunk)
                continue
            block = b"".join([*held, chunk[:cut]]) if held else chunk[:cut]
            held = [chunk[cut:]] if cut < len(chunk) else []
            yield start, block
            start += len(block)


def _parse(data: bytes, count: int, schema: dict[str, Any]) -> pl.DataFrame | None:
    """`data` (`count` lines) parsed with `schema` by polars; None when it refuses or loses a line."""
    import polars as pl

    try:
        frame = pl.read_ndjson(io.BytesIO(data), schema=schema)
    except (pl.exceptions.PolarsError, ValueError):
        return None
    return frame if frame.height == count else None  # a blank line is dropped, and the places with it


def _load(line: bytes) -> dict[str, Any] | None:
    """One line as a JSON object, or None."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _coerce(record: dict[str, Any] | None, schema: dict[str, Any]) -> tuple[Any, ...]:
    """A row of `schema`'s fields from a parsed line: a value of the wrong type is null (a line that is not a
    result has a null `custom_id`, which its reader skips)."""
    import polars as pl

    if record is None:
        return (None,) * len(schema)
    row: list[Any] = []
    for name, dtype in schema.items():
        value = record.get(name)
        if dtype == pl.String:
            ok = isinstance(value, str)
        elif dtype == pl.Int64:
            ok = isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
        elif dtype == pl.Float64:
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            value = float(value) if ok and value is not None else None
        elif dtype == pl.Boolean:
            ok = isinstance(value, bool)
        else:  # a list of strings
            ok = isinstance(value, list) and all(v is None or isinstance(v, str) for v in value)
        row.append(value if ok else None)
    return tuple(row)


class _Skipped:
    """Unreadable journal lines: the first few named in a warning each, the rest counted."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0

    def add(self, index: int) -> None:
        self.count += 1
        if self.count <= WARNED_LINES:
            log.warning(
                "%s: line %d is not a readable result; skipped (its row is sent again)", self.path, index + 1
            )

    def report(self) -> None:
        if self.count > WARNED_LINES:
            log.warning("%s: %d unreadable lines skipped in all", self.path, self.count)
