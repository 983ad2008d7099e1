"""The end-of-run summary, computed from the output file itself so it is true however many runs it took.

The same code serves `batchrun run` (with this run's counters and wall time) and `batchrun report` (any
output file, no counters). It reads the output lazily, only the columns it needs: a million-row output's
completions are never loaded. The summary is also written as JSON beside the output (`summary_path`), so a
scheduler can alert on it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchrun import humanize
from batchrun.store.mirror import shown

if TYPE_CHECKING:
    import duckdb

    from batchrun.engines.outcomes import Counters

VARIANT_COLUMN = "variant"  # a sweep's column ([matrix]): present, the summary groups by it
SUMMARY_MEMORY_MB = 256  # DuckDB's cap while summarizing (the latency quantiles hold one float per row)
NEEDED_COLUMNS = ("status", "error_type", "prompt_tokens", "completion_tokens", "cost_usd", "latency_s")


def summary_path(output: Path) -> Path:
    """Where the summary JSON of `output` goes: `out/x.parquet` -> `out/x.summary.json`."""
    return output.with_name(output.stem + ".summary.json")


@dataclass(frozen=True, slots=True)
class Latency:
    """Seconds per answered request (answers from the response cache excluded); None with no answers."""

    p50: float | None = None
    p95: float | None = None
    max: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        """Plain data for JSON."""
        return {"p50_s": _round(self.p50), "p95_s": _round(self.p95), "max_s": _round(self.max)}

    def text(self) -> str:
        """`p50 0.41 s, p95 1.20 s, max 3.02 s`, or `none measured`."""
        if self.p50 is None or self.p95 is None or self.max is None:
            return "none measured"
        return f"p50 {self.p50:.2f} s, p95 {self.p95:.2f} s, max {self.max:.2f} s"


@dataclass(frozen=True, slots=True)
class Group:
    """The rows of one model or one variant."""

    name: str
    rows: int
    ok: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    latency: Latency
    failed: int = 0  # rows that failed; the rest of those not ok are pending (a stopped run)

    @property
    def pending(self) -> int:
        """Rows without an answer yet."""
        return self.rows - self.ok - self.failed

    @property
    def ok_rate(self) -> float:
        """Share of the rows that are ok, 0-1."""
        return self.ok / self.rows if self.rows else 0.0

    def as_dict(self, key: str) -> dict[str, Any]:
        """Plain data for JSON, the group's name under `key` (`model`, `variant`)."""
        return {
            key: self.name,
            "rows": self.rows,
            "ok": self.ok,
            "failed": self.failed,
            "pending": self.pending,
            "ok_rate": round(self.ok_rate, 4),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
            "latency_p50_s": _round(self.latency.p50),
            "latency_p95_s": _round(self.latency.p95),
            "latency_max_s": _round(self.latency.max),
        }


@dataclass(frozen=True, slots=True)
class Summary:
    """What an output file holds; with a run's counters, also what that run did (sent, reused, wall time)."""

    output: Path
    rows: int
    ok: int
    failed: int
    errors: dict[str, int] = field(default_factory=dict)
    pending: int = 0  # rows without an answer yet: the output of a stopped run
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    rows_without_cost: int = 0
    wall_s: float | None = None  # None: not known (a report from a file)
    sent: int | None = None  # HTTP requests this run, retries included
    reused: int | None = None  # rows answered by an earlier run of the same job
    cached: int = 0  # rows answered from the response cache
    latency: Latency = field(default_factory=Latency)
    by_model: tuple[Group, ...] = ()
    by_variant: tuple[Group, ...] = ()  # a sweep's variants in output order; () without a `variant` column
    job: str | None = None
    note: str | None = None  # what a user should know about the output (rows it leaves out)
    batches: tuple[tuple[str, int], ...] = ()  # (batch id, rows it answered) of a Batch API run

    @property
    def exit_code(self) -> int:
        """Contract 3: 0 when every row is ok, 1 when some failed, 3 when some are pending (a stopped run)."""
        if self.pending:
            return 3
        return 0 if self.failed == 0 else 1

    @property
    def rows_per_s(self) -> float | None:
        """Rows finished this run per second of wall time; None when the wall time is not known."""
        if self.wall_s is None:
            return None
        return (self.rows - (self.reused or 0)) / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON (`run --json`, `report --json`, the summary file)."""
        rate = self.rows_per_s
        return {
            "job": self.job,
            "output": shown(self.output),
            "status": {0: "ok", 1: "failed"}.get(self.exit_code, "stopped"),
            "exit_code": self.exit_code,
            "rows": self.rows,
            "ok": self.ok,
            "failed": self.failed,
            "pending": self.pending,
            "errors": self.errors,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
            "rows_without_cost": self.rows_without_cost,
            "latency": self.latency.as_dict(),
            "wall_s": _round(self.wall_s),
            "rows_per_s": round(rate, 1) if rate is not None else None,
            "requests_sent": self.sent,
            "rows_reused": self.reused,
            "rows_cached": self.cached,
            "by_model": [g.as_dict("model") for g in self.by_model],
            # Only for a sweep, as `batchrun.compare` had it: scripts test for the key.
            **({"variants": [g.as_dict("variant") for g in self.by_variant]} if self.by_variant else {}),
            **({"note": self.note} if self.note else {}),
            **({"batches": [{"id": i, "rows": n} for i, n in self.batches]} if self.batches else {}),
        }

    def lines(self) -> list[str]:
        """The summary as a few human lines."""
        failed = f"{self.failed:,} failed"
        if self.errors:
            failed += " (" + ", ".join(f"{k}: {v:,}" for k, v in sorted(self.errors.items())) + ")"
        if self.cost_usd is None:
            cost = "unknown (no price for this model: set [pricing])"
        else:
            cost = f"${self.cost_usd:,.4f}"
            if self.rows_without_cost:
                cost += f" (+ {self.rows_without_cost:,} ok rows with no known price)"
        if self.pending:
            failed += f", {self.pending:,} pending"
        reused = f", {self.reused:,} answered by an earlier run" if self.reused else ""
        reused += f", {self.cached:,} from the cache" if self.cached else ""
        lines = [
            f"output:  {shown(self.output)}",
            f"rows:    {self.rows:,} ({self.ok:,} ok, {failed}){reused}",
            f"tokens:  {self.prompt_tokens:,} in, {self.completion_tokens:,} out",
            f"cost:    {cost}",
            f"latency: {self.latency.text()}",
        ]
        if self.wall_s is not None:
            sent = f", {self.sent:,} requests sent" if self.sent is not None else ""
            lines.append(f"time:    {self.wall_s:,.1f} s, {self.rows_per_s or 0.0:,.1f} rows/s{sent}")
        models = [g for g in self.by_model if g.ok]
        if models:
            lines.append(
                "models:  " + "; ".join(f"{g.name} ({g.ok:,} ok, {_money(g.cost_usd)})" for g in models)
            )
        if self.by_variant:
            lines += variant_table(self.by_variant)
        if self.batches:
            listed = "; ".join(f"{batch_id} ({rows:,} rows)" for batch_id, rows in self.batches[:5])
            more = f"; and {len(self.batches) - 5} more" if len(self.batches) > 5 else ""
            lines.append(f"batches: {listed}{more}")
        if self.note:
            lines.append(f"note:    {self.note}")
        return lines


def variant_table(groups: tuple[Group, ...]) -> list[str]:
    """A sweep's variants side by side, one line each: ok, tokens, cost and latency."""
    header = ("variant", "ok", "tokens in", "tokens out", "cost", "p50 s", "p95 s")
    table = [header] + [
        (
            g.name,
            f"{g.ok:,}/{g.rows:,} {g.ok_rate:.0%}",
            f"{g.prompt_tokens:,}",
            f"{g.completion_tokens:,}",
            "?" if g.cost_usd is None else f"${g.cost_usd:,.4f}",
            humanize.seconds(g.latency.p50),
            humanize.seconds(g.latency.p95),
        )
        for g in groups
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["variants:"]
    for row in table:
        cells = [row[0].ljust(widths[0])] + [
            cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def summarize(
    output: Path,
    *,
    counters: Counters | None = None,
    wall_s: float | None = None,
    job: str | None = None,
    note: str | None = None,
) -> Summary:
    """Aggregate the output file's status, error, token, cost and latency columns.

    DuckDB reads only those columns, under a memory cap, a row group at a time: a million-row output is
    summarized in tens of MB, where polars' group-by with per-group quantiles took 220 MB. The latency
    quantiles are exact; only past the cap (tens of millions of answers) are they estimates.
    """
    import duckdb

    from batchrun.store import duck

    try:
        with duck.connect(SUMMARY_MEMORY_MB) as db:
            totals, errors, by_model, by_variant = _aggregate(db, output, "quantile_cont")
            batches = _batches(db, output)
    except duckdb.OutOfMemoryException:
        # Exact quantiles hold every latency (8 bytes an answer): past ~25 million answers they would not
        # fit the cap. The t-digest's estimates (within about 1%) take a few MB whatever the count.
        with duck.connect(SUMMARY_MEMORY_MB) as db:
            totals, errors, by_model, by_variant = _aggregate(db, output, "approx_quantile")
            batches = _batches(db, output)
    rows, ok_rows, failed = int(totals["rows"]), int(totals["ok"] or 0), int(totals["failed"] or 0)
    return Summary(
        output=output,
        rows=rows,
        ok=ok_rows,
        failed=failed,
        pending=rows - ok_rows - failed,
        errors={str(k): int(v) for k, v in errors},
        prompt_tokens=int(totals["prompt_tokens"] or 0),
        completion_tokens=int(totals["completion_tokens"] or 0),
        cost_usd=float(totals["cost_usd"]) if totals["priced"] else None,
        rows_without_cost=ok_rows - int(totals["priced_ok"]),
        wall_s=wall_s,
        cached=int(totals["cached"] or 0),
        sent=counters.sent if counters is not None else None,
        reused=counters.reused if counters is not None else None,
        latency=_latency(totals),
        by_model=_groups(by_model),
        by_variant=_groups(by_variant),
        job=job,
        note=note,
        batches=batches,
    )


def _batches(db: duckdb.DuckDBPyConnection, output: Path) -> tuple[tuple[str, int], ...]:
    """The Batch API batches that answered rows of the output, with how many each, by id."""
    from batchrun.store import duck

    source = f"read_parquet('{duck.text(output)}', hive_partitioning = false)"
    names = {row[0] for row in db.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
    if "batch_id" not in names:
        return ()
    rows = db.execute(
        f"SELECT batch_id, count(*) FROM {source} WHERE batch_id IS NOT NULL GROUP BY 1 ORDER BY 1"
    ).fetchall()
    return tuple((str(batch_id), int(count)) for batch_id, count in rows)


def _aggregate(
    db: duckdb.DuckDBPyConnection, output: Path, quantile: str
) -> tuple[dict[str, Any], list[Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """The whole file's aggregates, errors by type, and the aggregates by model and by variant."""
    aggregates = _AGGREGATES.format(quantile=quantile)
    source = output_sql(output)
    names = set(column_names(db, source))
    cached = "count(*) FILTER (WHERE cached)" if "cached" in names else "0"
    (totals,) = _query(db, f"SELECT {aggregates}, {cached} AS cached FROM {source}")
    errors = db.execute(
        f"SELECT coalesce(error_type, 'error'), count(*) FROM {source} WHERE status = 'error' GROUP BY 1"
    ).fetchall()
    by_model = _query(
        db,
        f"SELECT coalesce(model, '(no reply)') AS name, {aggregates} FROM {source} "
        "GROUP BY name ORDER BY name",
    )
    by_variant: list[dict[str, Any]] = []
    if VARIANT_COLUMN in names:
        # Variants in output order: the order the job's [matrix] lists them.
        by_variant = _query(
            db,
            f"SELECT coalesce(CAST({VARIANT_COLUMN} AS VARCHAR), '(none)') AS name, {aggregates} "
            f"FROM {numbered_sql(output, names)} GROUP BY name ORDER BY min(__row)",
        )
    return totals, errors, by_model, by_variant


def output_sql(output: Path) -> str:
    """The output file as a DuckDB table expression. Its columns come from the file alone: a folder named
    like `model=x` is not a Hive partition here."""
    from batchrun.store import duck

    return f"read_parquet('{duck.text(output)}', hive_partitioning = false)"


def numbered_sql(output: Path, names: set[str]) -> str:
    """The output's rows with their 0-based place in the file as `__row` (a subquery); `names`: its
    columns."""
    source = output_sql(output)
    if "file_row_number" in names:  # the input had such a column: number the rows ourselves
        return f"(SELECT *, row_number() OVER () - 1 AS __row FROM {source})"
    with_numbers = f"{source.removesuffix(')')}, file_row_number = true)"
    return f"(SELECT * EXCLUDE (file_row_number), file_row_number AS __row FROM {with_numbers})"


def column_names(db: duckdb.DuckDBPyConnection, source: str) -> list[str]:
    """The columns of a table expression, in order."""
    return [row[0] for row in db.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()]


def check_output(output: Path) -> None:
    """Raise `UsageError` unless `output` is a Parquet file with batchrun's columns (for `report`)."""
    import polars as pl

    from batchrun.errors import UsageError

    if not output.is_file():
        raise UsageError(f"{output}: no such file")
    try:
        names = pl.scan_parquet(output, hive_partitioning=False).collect_schema().names()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise UsageError(f"{output}: cannot read it as Parquet: {exc}") from None
    missing = [c for c in (*NEEDED_COLUMNS, "model") if c not in names]
    if missing:
        raise UsageError(f"{output}: not a batchrun output; missing columns: {', '.join(missing)}")


def write_summary_json(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as JSON to `path` atomically: a scheduler reading it never sees half a file."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, sync it, and rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# Counts, tokens, cost and latency of a set of rows: the whole file, or one model or variant. Latency
# counts measured answers only (errors and cache hits have none of their own); the quantiles interpolate
# linearly, as polars' "linear" and numpy's default do.
_AGGREGATES = """
    count(*) AS rows,
    count(*) FILTER (WHERE status = 'ok') AS ok,
    count(*) FILTER (WHERE status = 'error') AS failed,
    sum(prompt_tokens) AS prompt_tokens,
    sum(completion_tokens) AS completion_tokens,
    sum(cost_usd) AS cost_usd,
    count(cost_usd) AS priced,
    count(cost_usd) FILTER (WHERE status = 'ok') AS priced_ok,
    {quantile}(latency_s, [0.5, 0.95]) FILTER (WHERE status = 'ok') AS quantiles,
    max(latency_s) FILTER (WHERE status = 'ok') AS max
"""


def _query(db: duckdb.DuckDBPyConnection, sql: str) -> list[dict[str, Any]]:
    """The rows of `sql`, each as a dict keyed by column name."""
    cursor = db.execute(sql)
    columns = [d[0] for d in cursor.description]
    return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def _latency(row: dict[str, Any]) -> Latency:
    p50, p95 = row["quantiles"] or (None, None)
    return Latency(p50=p50, p95=p95, max=row["max"])


def _groups(rows: list[dict[str, Any]]) -> tuple[Group, ...]:
    return tuple(
        Group(
            name=str(row["name"]),
            rows=int(row["rows"]),
            ok=int(row["ok"] or 0),
            prompt_tokens=int(row["prompt_tokens"] or 0),
            completion_tokens=int(row["completion_tokens"] or 0),
            cost_usd=float(row["cost_usd"]) if row["priced"] else None,
            latency=_latency(row),
            failed=int(row["failed"] or 0),
        )
        for row in rows
    )


def _money(cost: float | None) -> str:
    return f"${cost:,.4f}" if cost is not None else "cost unknown"


def _round(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


def failure_summary(job: str, output: Path, exit_code: int, message: str) -> dict[str, Any]:
    """The summary file's content when a run did not finish: stopped (exit 3) or refused (exit 2)."""
    return {
        "job": job,
        "output": shown(output),
        "status": "stopped" if exit_code == 3 else "error",
        "exit_code": exit_code,
        "message": message,
    }
