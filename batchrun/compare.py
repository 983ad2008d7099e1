"""A sweep's variants side by side: ok rate, tokens, cost and latency per variant, from the output file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import polars as pl


@dataclass(frozen=True, slots=True)
class VariantStats:
    """One variant's totals. Latency covers rows answered by the API in any run (not the cache's)."""

    variant: str
    rows: int
    ok: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None  # None when no row of the variant has a known price
    latency_p50_s: float | None
    latency_p95_s: float | None

    @property
    def ok_rate(self) -> float:
        """Share of the variant's rows that are ok, 0-1."""
        return self.ok / self.rows if self.rows else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "variant": self.variant,
            "rows": self.rows,
            "ok": self.ok,
            "ok_rate": round(self.ok_rate, 4),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
            "latency_p50_s": _round(self.latency_p50_s),
            "latency_p95_s": _round(self.latency_p95_s),
        }


def compare_variants(frame: pl.LazyFrame) -> tuple[VariantStats, ...]:
    """Per-variant totals of a sweep's output, variants in the order the output holds them."""
    import polars as pl

    latency = pl.col("latency_s").filter(pl.col("cached").not_() & (pl.col("status") == "ok"))
    rows = (
        frame.group_by("variant", maintain_order=True)
        .agg(
            rows=pl.len(),
            ok=(pl.col("status") == "ok").sum(),
            prompt_tokens=pl.col("prompt_tokens").sum(),
            completion_tokens=pl.col("completion_tokens").sum(),
            cost_usd=pl.col("cost_usd").sum(),
            priced=pl.col("cost_usd").is_not_null().sum(),
            p50=latency.quantile(0.5, interpolation="linear"),
            p95=latency.quantile(0.95, interpolation="linear"),
        )
        .collect()
        .rows(named=True)
    )
    return tuple(
        VariantStats(
            variant=str(r["variant"]),
            rows=int(r["rows"]),
            ok=int(r["ok"]),
            prompt_tokens=int(r["prompt_tokens"] or 0),
            completion_tokens=int(r["completion_tokens"] or 0),
            cost_usd=float(r["cost_usd"]) if r["priced"] else None,
            latency_p50_s=r["p50"],
            latency_p95_s=r["p95"],
        )
        for r in rows
    )


def variant_lines(stats: tuple[VariantStats, ...]) -> list[str]:
    """A compact table of the variants, one line each, for the printed summary."""
    if not stats:
        return []
    header = ("variant", "ok", "tokens in", "tokens out", "cost", "p50 s", "p95 s")
    table = [header] + [
        (
            s.variant,
            f"{s.ok:,}/{s.rows:,} {s.ok_rate:.0%}",
            f"{s.prompt_tokens:,}",
            f"{s.completion_tokens:,}",
            "?" if s.cost_usd is None else f"${s.cost_usd:,.4f}",
            _seconds(s.latency_p50_s),
            _seconds(s.latency_p95_s),
        )
        for s in stats
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["variants:"]
    for row in table:
        cells = [row[0].ljust(widths[0])] + [
            cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
