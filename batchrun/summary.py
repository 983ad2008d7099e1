"""The end-of-run summary, computed from the output file itself so it is true however many runs it took."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchrun.compare import VariantStats, compare_variants, variant_lines

if TYPE_CHECKING:
    from batchrun.runner import Counters


@dataclass(frozen=True, slots=True)
class Summary:
    """What a finished run produced."""

    output: Path
    rows: int
    ok: int
    failed: int
    errors: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    rows_without_cost: int = 0
    wall_s: float = 0.0
    sent: int = 0  # HTTP requests this run, retries included
    reused: int = 0  # rows answered by an earlier run of the same job
    cached: int = 0  # rows answered from the response cache
    variants: tuple[VariantStats, ...] = ()  # a sweep's variants side by side (batchrun.compare)

    @property
    def exit_code(self) -> int:
        """Contract 3: 0 when every row is ok, 1 when some failed."""
        return 0 if self.failed == 0 else 1

    @property
    def rows_per_s(self) -> float:
        """Rows finished this run per second of wall time."""
        return (self.rows - self.reused) / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "output": str(self.output),
            "rows": self.rows,
            "ok": self.ok,
            "failed": self.failed,
            "errors": self.errors,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
            "rows_without_cost": self.rows_without_cost,
            "wall_s": round(self.wall_s, 3),
            "rows_per_s": round(self.rows_per_s, 1),
            "requests_sent": self.sent,
            "rows_reused": self.reused,
            "rows_cached": self.cached,
            **({"variants": [v.as_dict() for v in self.variants]} if self.variants else {}),
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
        reused = f", {self.reused:,} answered by an earlier run" if self.reused else ""
        reused += f", {self.cached:,} from the cache" if self.cached else ""
        return [
            f"output:  {self.output}",
            f"rows:    {self.rows:,} ({self.ok:,} ok, {failed}){reused}",
            f"tokens:  {self.prompt_tokens:,} in, {self.completion_tokens:,} out",
            f"cost:    {cost}",
            f"time:    {self.wall_s:,.1f} s, {self.rows_per_s:,.1f} rows/s, {self.sent:,} requests sent",
            *variant_lines(self.variants),
        ]


def summarize(output: Path, *, counters: Counters, wall_s: float, sweep: bool = False) -> Summary:
    """Aggregate the output file's status, token and cost columns (and per variant, for a `sweep`)."""
    import polars as pl

    frame = pl.scan_parquet(output)
    totals = (
        frame.select(
            rows=pl.len(),
            ok=(pl.col("status") == "ok").sum(),
            prompt_tokens=pl.col("prompt_tokens").sum(),
            completion_tokens=pl.col("completion_tokens").sum(),
            cost_usd=pl.col("cost_usd").sum(),
            priced=pl.col("cost_usd").is_not_null().sum(),
            cached=pl.col("cached").sum(),
        )
        .collect()
        .row(0, named=True)
    )
    errors = (
        frame.filter(pl.col("status") != "ok")
        .group_by(pl.col("error_type").fill_null("not_run"))
        .len()
        .collect()
        .rows()
    )
    ok = int(totals["ok"])
    return Summary(
        output=output,
        rows=int(totals["rows"]),
        ok=ok,
        failed=int(totals["rows"]) - ok,
        errors={str(k): int(v) for k, v in errors},
        prompt_tokens=int(totals["prompt_tokens"] or 0),
        completion_tokens=int(totals["completion_tokens"] or 0),
        cost_usd=float(totals["cost_usd"]) if totals["priced"] else None,
        rows_without_cost=ok - int(totals["priced"]),
        wall_s=wall_s,
        cached=int(totals["cached"] or 0),
        sent=counters.sent,
        reused=counters.reused,
        variants=compare_variants(frame) if sweep else (),
    )
