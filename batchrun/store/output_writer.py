"""The output Parquet of a run, written a row group at a time from the input parts and the journal.

`RunStore.assemble` first has DuckDB work out where each output row's answer lies in the journal (`places`:
byte offset, length and `retryable` of its latest line, in output order; null where there is none). This
module then reads one input part at a time, the answers of its rows from the journal by their offsets (at
most `CHUNK_BYTES` at a time: the journal is near input order, so in long runs), parses them, and writes the
two side by side as one row group. No step holds more than one slice of answers, whatever their number or
size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from batchrun.records import OUTPUT_COLUMNS
from batchrun.store import journal

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa
    import pyarrow.parquet as pq

CHUNK_BYTES = 4 << 20  # answers read, parsed and written at a time (one row group, at most an input part)
PLACES_BATCH = 65_536  # rows of places read at a time
# Answers' long free text: no Parquet dictionary for them (every value differs; trying costs a third of the
# writing time).
LONG_TEXT = frozenset(
    {"custom_id", "completion", "reasoning", "tool_calls", "response_id", "error", "completions", "json"}
)
PENDING = "pending"  # the status of a row without an answer yet (the output of a stopped run)
ANSWERED = "__batchrun_answered"  # marks the rows a journal line was found for, while joining


def ids_schema() -> pa.Schema:
    """The columns `input_ids` yields."""
    import pyarrow as pa

    return pa.schema([("position", pa.int64()), ("custom_id", pa.large_string())])


def input_ids(inputs: list[Path]) -> Iterator[pa.RecordBatch]:
    """(position in the output, custom_id) of every input row, one part at a time: DuckDB's join input."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = ids_schema()
    position = 0
    for path in inputs:
        ids = pq.ParquetFile(path).read(columns=["custom_id"]).column(0)
        positions = pa.array(range(position, position + len(ids)), pa.int64())
        position += len(ids)
        yield from pa.Table.from_arrays([positions, ids], names=schema.names).cast(schema).to_batches()


def write(inputs: list[Path], places: Path, journal_path: Path, tmp: Path) -> tuple[int, int]:
    """Write the output to `tmp`: every row of `inputs` (in order) beside its answer found at `places`.

    Returns the number of rows, and of rows with a final answer (ok, or an error a rerun does not resend).
    """
    import polars as pl
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema, input_names = _output_schema(inputs)
    added = [name for name in schema.names if name not in input_names]
    stream = _Rows(pq.ParquetFile(places))
    dictionary = [name for name in schema.names if name not in LONG_TEXT]
    rows = answered = 0
    fd = os.open(journal_path, os.O_RDONLY) if journal_path.is_file() else -1
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd", use_dictionary=dictionary) as writer:
            for path in inputs:
                part = pq.ParquetFile(path).read()
                spots = stream.take(part.num_rows)
                answered += spots.filter(pl.col("retryable").not_()).height
                # A row group per input part, or smaller ones when answers are long.
                for start, stop in _chunks(spots.get_column("length").to_list(), CHUNK_BYTES):
                    results = _results(fd, spots.slice(start, stop - start), added).to_arrow()
                    piece = part.slice(start, stop - start)
                    table = pa.Table.from_arrays(
                        [*piece.columns, *results.columns], names=[*piece.column_names, *added]
                    )
                    writer.write_table(table.select(schema.names).cast(schema))
                rows += part.num_rows
    finally:
        if fd >= 0:
            os.close(fd)
    return rows, answered


def _output_schema(inputs: list[Path]) -> tuple[pa.Schema, list[str]]:
    """The output's Arrow schema and the input parts' column names.

    The input's columns first (custom_id last among them, or where a batch file has it), then Contract 2's
    in their fixed order. Parts read in slices may disagree on a type (a column all null in one slice):
    the types are unified as Arrow promotes them.
    """
    import polars as pl
    import pyarrow as pa
    import pyarrow.parquet as pq

    inputs_schema = pa.unify_schemas(
        [pq.ParquetFile(path).schema_arrow for path in inputs], promote_options="permissive"
    )
    names = inputs_schema.names
    results = pl.DataFrame(schema=journal.result_schema()).to_arrow().schema
    added = [results.field(name) for name in OUTPUT_COLUMNS if name not in names]
    return pa.schema([*inputs_schema, *added]), names


def _chunks(lengths: list[int | None], limit: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of consecutive rows whose answers add up to about `limit` bytes (at least one row)."""
    start = size = 0
    for i, length in enumerate(lengths):
        if size and size + (length or 0) > limit:
            yield start, i
            start, size = i, 0
        size += length or 0
    if start < len(lengths):
        yield start, len(lengths)


class _Rows:
    """The rows of a Parquet file, taken a given number at a time."""

    def __init__(self, file: pq.ParquetFile) -> None:
        self.schema = file.schema_arrow
        self.batches = file.iter_batches(PLACES_BATCH)
        self.held: list[pa.RecordBatch] = []
        self.held_rows = 0

    def take(self, count: int) -> pl.DataFrame:
        """The next `count` rows (fewer only if the file ends)."""
        import polars as pl
        import pyarrow as pa

        while self.held_rows < count and (batch := next(self.batches, None)) is not None:
            self.held.append(batch)
            self.held_rows += batch.num_rows
        table = pa.Table.from_batches(self.held, schema=self.schema)
        taken, rest = table.slice(0, count), table.slice(count)
        self.held, self.held_rows = rest.to_batches(), rest.num_rows
        return pl.DataFrame(pl.from_arrow(taken))


def _results(fd: int, spots: pl.DataFrame, names: list[str]) -> pl.DataFrame:
    """Columns `names` of the answers at `spots` (offset, length per output row; null: no answer), in order.

    The lines are read in file order, then put back in the rows' order; a row without one is pending.
    """
    import polars as pl

    wanted = spots.with_row_index("row").filter(pl.col("offset").is_not_null()).sort("offset")
    lines = journal.fetch(fd, wanted.get_column("offset").to_list(), wanted.get_column("length").to_list())
    answers = lines.select(names).with_columns(wanted.get_column("row"), pl.lit(True).alias(ANSWERED))
    every = pl.DataFrame({"row": pl.arange(0, spots.height, dtype=pl.UInt32, eager=True)})
    joined = every.join(answers, on="row", how="left", maintain_order="left")
    status = pl.when(pl.col(ANSWERED).is_null()).then(pl.lit(PENDING)).otherwise(pl.col("status"))
    return joined.with_columns(status.alias("status")).select(names)
