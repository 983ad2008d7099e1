"""The run's journal on disk, resume, and the final Parquet.

Beside the output `out/x.parquet` lives the run folder `out/x.parquet.run/`:

- `input-NNNNNN.parquet`: the input's columns plus `custom_id`, one part per slice, rewritten by every run;
- `results-RRRR-NNNNNN.parquet`: results as they arrive, one part per flush, kept across runs (`RRRR` is the
  run number, so a later answer for the same `custom_id` wins).

Every part is written to a temporary name and renamed, so a kill leaves whole parts or none. The output is
assembled from the parts when the run ends and also appears by an atomic rename: a reader never sees half
a file.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchrun.records import Result

if TYPE_CHECKING:
    import polars as pl

_RESULT_PART = re.compile(r"results-(\d{4})-\d{6}\.parquet")
RESULT_FIELDS = tuple(f.name for f in fields(Result))
INTERNAL_COLUMNS = ("retryable",)  # in the journal, not in the output


def result_schema() -> dict[str, Any]:
    """Column types of a results part: Contract 2's types, fixed so parts always concatenate."""
    import polars as pl

    ints = {"prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "total_tokens"}
    schema: dict[str, Any] = {}
    for name in RESULT_FIELDS:
        if name in ints or name in ("attempts", "http_status"):
            schema[name] = pl.Int64
        elif name in ("cost_usd", "latency_s"):
            schema[name] = pl.Float64
        elif name == "retryable":
            schema[name] = pl.Boolean
        else:
            schema[name] = pl.String
    return schema


class RunStore:
    """The journal of one output file: parts in, finished rows out, final Parquet at the end."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.dir = output.with_name(output.name + ".run")
        self._run = 0
        self._input_parts = 0
        self._result_parts = 0

    def open(self, *, fresh: bool = False) -> None:
        """Create the run folder; `fresh` forgets every earlier answer. Old input parts always go."""
        if fresh and self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob("input-*"):
            stale.unlink()
        for stale in self.dir.glob("*.tmp"):
            stale.unlink()
        runs = [int(m.group(1)) for p in self.dir.iterdir() if (m := _RESULT_PART.fullmatch(p.name))]
        self._run = max(runs, default=0) + 1

    def _result_paths(self) -> list[Path]:
        return sorted(p for p in self.dir.iterdir() if _RESULT_PART.fullmatch(p.name))

    def _input_paths(self) -> list[Path]:
        return sorted(self.dir.glob("input-*.parquet"))

    def finished_ids(self) -> pl.Series:
        """`custom_id`s with a final answer from earlier runs: ok, or an error a retry cannot fix."""
        import polars as pl

        paths = self._result_paths()
        if not paths:
            return pl.Series("custom_id", [], dtype=pl.String)
        return (
            pl.scan_parquet(paths)
            .filter(~pl.col("retryable"))
            .select("custom_id")
            .unique()
            .collect()
            .get_column("custom_id")
        )

    def write_input(self, frame: pl.DataFrame) -> None:
        """Journal one slice of the input (its columns plus `custom_id`)."""
        self._input_parts += 1
        _write_atomic(frame, self.dir / f"input-{self._input_parts:06d}.parquet")

    def write_results(self, results: Sequence[Result]) -> None:
        """Journal a batch of results, durably: after this returns, a kill loses none of them."""
        import polars as pl

        if not results:
            return
        columns = {name: [getattr(r, name) for r in results] for name in RESULT_FIELDS}
        frame = pl.DataFrame(columns, schema=result_schema())
        self._result_parts += 1
        _write_atomic(frame, self.dir / f"results-{self._run:04d}-{self._result_parts:06d}.parquet")

    def assemble(self) -> Path:
        """Join the input parts with the latest result per `custom_id`, in input order, into the output."""
        import polars as pl

        inputs = self._input_paths()
        if not inputs:
            frame = pl.DataFrame(schema={"custom_id": pl.String}).lazy()
        else:
            frame = pl.scan_parquet(inputs)
        result_paths = self._result_paths()
        if result_paths:
            results = pl.scan_parquet(result_paths).unique("custom_id", keep="last", maintain_order=True)
        else:
            results = pl.DataFrame(schema=result_schema()).lazy()
        columns = [c for c in RESULT_FIELDS if c not in INTERNAL_COLUMNS]
        out = frame.join(results.select(columns), on="custom_id", how="left", maintain_order="left")
        # The input's columns first (custom_id last among them, or where a batch file has it), then
        # Contract 2's in their fixed order.
        input_columns = frame.collect_schema().names()
        out = out.select(*input_columns, *(c for c in columns if c not in input_columns))
        self.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.output.with_name(f".{self.output.name}.{os.getpid()}.tmp")
        try:
            out.sink_parquet(tmp)
            _fsync(tmp)
            os.replace(tmp, self.output)
        finally:
            tmp.unlink(missing_ok=True)
        return self.output


def _write_atomic(frame: pl.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    frame.write_parquet(tmp, compression="zstd", statistics=False)
    _fsync(tmp)
    os.replace(tmp, path)


def _fsync(path: Path) -> None:
    # A rename only publishes what reached the disk: flush the data first, or a power cut can leave a
    # renamed but empty file.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
