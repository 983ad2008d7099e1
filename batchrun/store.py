"""The run's journal on disk, resume, and the final Parquet.

Beside the output `out/x.parquet` lives the run folder `out/x.parquet.run/`:

- `results.jsonl`: every result as it arrives, one JSON line each, appended and kept across runs (a later
  line for the same `custom_id` wins). Lines go to the kernel in one `write` per batch the moment they
  arrive, so even `kill -9` loses no answer that reached batchrun; an fsync every few seconds covers a
  power cut. A line cut short by one is dropped when the journal is next opened.
- `input-NNNNNN.parquet`: the input's columns plus `custom_id`, one part per slice, rewritten by every run
  (the input may have changed between runs).

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

from batchrun.records import OUTPUT_COLUMNS, Result

if TYPE_CHECKING:
    import polars as pl

RESULT_FIELDS = tuple(f.name for f in fields(Result))
JOURNAL = "results.jsonl"
FSYNC_SECONDS = 2.0


def result_schema() -> dict[str, Any]:
    """Column types of the journal: Contract 2's types, fixed so that every read agrees."""
    import polars as pl

    ints = {"prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "total_tokens"}
    schema: dict[str, Any] = {}
    for name in RESULT_FIELDS:
        if name in ints or name in ("attempts", "http_status"):
            schema[name] = pl.Int64
        elif name in ("cost_usd", "latency_s"):
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
        self._synced_at = 0.0

    def open(self, *, fresh: bool = False) -> None:
        """Create the run folder and open the journal; `fresh` forgets every earlier answer."""
        if fresh and self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in [*self.dir.glob("input-*"), *self.dir.glob("*.tmp")]:
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

        latest = self._latest()
        return latest.filter(~pl.col("retryable")).select("custom_id").collect().get_column("custom_id")

    def spent_usd(self) -> float:
        """What earlier runs of this job spent: the cost of the latest answer per row in the journal."""
        import polars as pl

        return float(self._latest().select(pl.col("cost_usd").sum()).collect().item() or 0.0)

    def write_input(self, frame: pl.DataFrame) -> None:
        """Keep one slice of the input (its columns plus `custom_id`) for the final join."""
        self._input_parts += 1
        path = self.dir / f"input-{self._input_parts:06d}.parquet"
        tmp = path.with_name(path.name + ".tmp")
        frame.write_parquet(tmp, compression="zstd", statistics=False)
        os.replace(tmp, path)

    def write_results(self, results: Sequence[Result]) -> None:
        """Append results to the journal in one write; fsync when the last one is a few seconds old."""
        assert self._fd is not None, "open() the store first"
        if not results:
            return
        lines = [json.dumps({f: getattr(r, f) for f in RESULT_FIELDS}, ensure_ascii=False) for r in results]
        data = ("\n".join(lines) + "\n").encode()
        while data:  # a regular file takes it all at once; the loop only guards against a short write
            data = data[os.write(self._fd, data) :]
        if time.monotonic() - self._synced_at >= FSYNC_SECONDS:
            os.fsync(self._fd)
            self._synced_at = time.monotonic()

    def _latest(self) -> pl.LazyFrame:
        """The journal's latest result per custom_id (a later run's answer replaces an earlier error)."""
        import polars as pl

        if not self.journal.is_file() or self.journal.stat().st_size == 0:
            return pl.LazyFrame(schema=result_schema())
        journal = pl.scan_ndjson(self.journal, schema=result_schema())
        return journal.unique("custom_id", keep="last", maintain_order=True)

    def assemble(self) -> Path:
        """Join the input with the latest result per `custom_id`, in input order, into the output file."""
        import polars as pl

        inputs = sorted(self.dir.glob("input-*.parquet"))
        frame = pl.scan_parquet(inputs) if inputs else pl.LazyFrame(schema={"custom_id": pl.String})
        columns = list(OUTPUT_COLUMNS)
        out = frame.join(self._latest().select(columns), on="custom_id", how="left", maintain_order="left")
        # The input's columns first (custom_id last among them, or where a batch file has it), then
        # Contract 2's in their fixed order.
        input_columns = frame.collect_schema().names()
        out = out.select(*input_columns, *(c for c in columns if c not in input_columns))
        self.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.output.with_name(f".{self.output.name}.{os.getpid()}.tmp")
        try:
            out.sink_parquet(tmp)
            # A rename only publishes what reached the disk: sync the data first.
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.output)
        finally:
            tmp.unlink(missing_ok=True)
        return self.output


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
