"""`batchrun report OUT.parquet`: the summary of any output file, plus its first failed rows.

Everything is read lazily with only the columns needed (a million-row output's completions stay on
disk): the summary's aggregates, the first few failed rows, and a latency histogram for the HTML page.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchrun.report.summary import VARIANT_COLUMN, Summary, check_output, summarize

FAILED_COLUMNS = ("custom_id", "error_type", "http_status", "attempts", "error")
HISTOGRAM_BINS = 30
ERROR_WIDTH = 160  # characters of an error message shown in the text report


@dataclass(frozen=True, slots=True)
class Bin:
    """One bar of the latency histogram: answers with `low <= latency_s < high`."""

    low: float
    high: float
    count: int


@dataclass(frozen=True, slots=True)
class Report:
    """An output file's summary, its first failed rows, and its latency histogram."""

    summary: Summary
    failed_rows: list[dict[str, Any]]
    histogram: list[Bin]

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON: the summary's keys plus `failed_rows` and `latency_histogram`."""
        data = self.summary.as_dict()
        data["failed_rows"] = self.failed_rows
        data["latency_histogram"] = [
            {"low_s": b.low, "high_s": b.high, "count": b.count} for b in self.histogram
        ]
        return data

    def lines(self) -> list[str]:
        """The summary, then the first failed rows with their errors."""
        lines = self.summary.lines()
        if self.failed_rows:
            shown = len(self.failed_rows)
            lines.append(f"first {shown} failed row{'s' if shown > 1 else ''}:")
            for row in self.failed_rows:
                where = f"  {row['custom_id']}"
                if VARIANT_COLUMN in row:
                    where += f" [{row[VARIANT_COLUMN]}]"
                status = f" HTTP {row['http_status']}" if row.get("http_status") else ""
                error = (row.get("error") or "").replace("\n", " ")
                if len(error) > ERROR_WIDTH:
                    error = error[: ERROR_WIDTH - 1] + "…"
                kind = row.get("error_type") or "error"
                lines.append(f"{where}: {kind}{status}, {row.get('attempts') or 0} attempts: {error}")
        return lines


def build_report(output: Path, *, failed: int = 5) -> Report:
    """The report of `output`; raises `UsageError` when it is missing or not a batchrun output."""
    check_output(output)
    return Report(
        summary=summarize(output),
        failed_rows=failed_rows(output, failed),
        histogram=latency_histogram(output),
    )


def failed_rows(output: Path, count: int) -> list[dict[str, Any]]:
    """The first `count` rows that failed (`status = "error"`; not the pending rows of a stopped run), in
    output order, with their error columns."""
    import polars as pl

    if count <= 0:
        return []
    frame = pl.scan_parquet(output, hive_partitioning=False)
    names = frame.collect_schema().names()
    columns = [c for c in FAILED_COLUMNS if c in names]
    if VARIANT_COLUMN in names:
        columns.insert(1, VARIANT_COLUMN)
    picked = frame.filter(pl.col("status") == "error").select(columns).head(count).collect()
    return picked.to_dicts()


def latency_histogram(output: Path, bins: int = HISTOGRAM_BINS) -> list[Bin]:
    """Answered requests' latencies in `bins` equal bins from the fastest to the slowest."""
    import polars as pl

    latency = (
        pl.scan_parquet(output, hive_partitioning=False)
        .filter((pl.col("status") == "ok") & pl.col("latency_s").is_not_null())
        .select("latency_s")
    )
    bounds = latency.select(low=pl.col("latency_s").min(), high=pl.col("latency_s").max())
    low, high = bounds.collect().row(0)
    if low is None or high is None:
        return []
    width = (high - low) / bins if high > low else 1.0
    index = ((pl.col("latency_s") - low) / width).floor().cast(pl.Int64).clip(0, bins - 1)
    counts = dict(latency.group_by(index.alias("bin")).len().collect().iter_rows())
    if high == low:
        return [Bin(low, high, int(counts.get(0, 0)))]
    return [Bin(low + i * width, low + (i + 1) * width, int(counts.get(i, 0))) for i in range(bins)]
