"""The HTML report's charts, as Vega-Lite specs written with altair (checked against the schema).

Each function takes the page's figures (`batchrun.report.pagedata`) and returns a spec as plain data, or
None when there is nothing to draw; `batchrun.report.html` embeds them and Vega draws them in the page.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from batchrun.report.overtime import OverTime
from batchrun.report.pagedata import Distribution, HistogramBar

if TYPE_CHECKING:
    import altair as alt

    from batchrun.report.summary import Group

WIDTH = 820  # the plotting area of a full-width chart, in CSS pixels
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"
STATUS_COLORS = {"ok": "#2f9e44", "failed": "#e03131", "failed, to retry": "#f08c00"}
RETRY_COLORS = {
    "rate_limited": "#f08c00",
    "server_error": "#c92a2a",
    "overloaded": "#862e9c",
    "timeout": "#1971c2",
    "connection": "#495057",
    "truncated": "#868e96",
    "bad_response": "#e8590c",
}
FINISH_COLORS = {"stop": "#2f9e44", "length": "#f08c00", "tool_calls": "#1971c2", "content_filter": "#e03131"}
OTHER_COLOR = "#adb5bd"
SLOWEST = "the slowest 1%"
VARIANT_SCHEME = "tableau10"
CONFIG: dict[str, Any] = {
    "font": FONT,
    "view": {"stroke": None},
    "axis": {
        "labelColor": "#495057",
        "titleColor": "#343a40",
        "titleFontWeight": 600,
        "gridColor": "#edf0f2",
        "domainColor": "#adb5bd",
        "tickColor": "#adb5bd",
        "labelFontSize": 11,
        "titleFontSize": 12,
    },
    "axisQuantitative": {"tickCount": 8},
    "legend": {"labelFontSize": 12, "titleFontSize": 12, "orient": "top", "title": None},
    "title": {"anchor": "start", "fontSize": 13, "fontWeight": 600, "color": "#343a40", "offset": 8},
    "bar": {"cornerRadiusEnd": 0},
}


def over_time(timeline: OverTime) -> dict[str, Any]:
    """Results per bucket (ok / failed), requests sent and failed attempts by type, and the cost so far,
    one panel under the other on a shared axis of time since the run started."""
    import altair as alt

    unit, per = _time_unit(timeline.end - timeline.start)
    every = _duration(timeline.bucket_s)
    x_title = f"{unit} since the run started"
    span = (timeline.end - timeline.start) / per
    x = alt.X("from:Q", title=x_title, scale=alt.Scale(domain=[0, _round_up(span)], nice=False))

    def bucket(b: int, size: float = timeline.bucket_s) -> tuple[float, float]:
        """A bucket's bar: its span, less a tenth as a gap between bars."""
        return (b + 0.05) * size / per, (b + 0.95) * size / per

    def step(b: int) -> tuple[float, float]:
        return bucket(b, timeline.attempts_bucket_s)

    results = [
        {"from": bucket(b)[0], "to": bucket(b)[1], "kind": kind, "rows": rows}
        for b, kind, rows, _ in timeline.results
    ]
    kinds = [k for k in STATUS_COLORS if any(r["kind"] == k for r in results)]
    panels: list[Any] = [
        alt.Chart(_data(results), title=f"Results journaled, per {every}")
        .mark_bar(orient="vertical")
        .encode(
            x=x,
            x2="to:Q",
            y=alt.Y("sum(rows):Q", title="rows"),
            color=_colors("kind", {k: STATUS_COLORS[k] for k in kinds}),
            tooltip=[
                alt.Tooltip("from:Q", title=f"from ({unit})", format=".1f"),
                alt.Tooltip("kind:N", title="result"),
                alt.Tooltip("sum(rows):Q", title="rows", format=","),
            ],
        )
        .properties(width=WIDTH, height=120)
    ]
    if timeline.sent:
        sent = [{"from": step(b)[0], "to": step(b)[1], "sent": n} for b, n in timeline.sent]
        retries = [
            {"from": step(b)[0], "to": step(b)[1], "kind": kind, "attempts": n}
            for b, kind, n in timeline.retries
        ]
        requests = (
            alt.Chart(_data(sent))
            .mark_bar(color="#a5d8ff", orient="vertical", clip=True)
            .encode(
                x=x,
                x2="to:Q",
                y=alt.Y("sent:Q", title="requests"),
                tooltip=[
                    alt.Tooltip("from:Q", title=f"from ({unit})", format=".1f"),
                    alt.Tooltip("sent:Q", title="requests sent", format=","),
                ],
            )
        )
        layers: list[alt.Chart] = [requests]
        if retries:
            kinds = sorted({str(r["kind"]) for r in retries})
            layers.append(
                alt.Chart(_data(retries))
                .mark_bar(orient="vertical", clip=True)
                .encode(
                    x=x,
                    x2="to:Q",
                    y=alt.Y("sum(attempts):Q", title="requests"),
                    color=_colors("kind", {k: RETRY_COLORS.get(k, OTHER_COLOR) for k in kinds}),
                    tooltip=[
                        alt.Tooltip("from:Q", title=f"from ({unit})", format=".1f"),
                        alt.Tooltip("kind:N", title="failed attempt"),
                        alt.Tooltip("sum(attempts):Q", title="attempts", format=","),
                    ],
                )
            )
        step_name = _duration(timeline.attempts_bucket_s)
        title = f"Requests sent (light) and failed attempts by type (retried), per {step_name}"
        panels.append(alt.layer(*layers, title=title).properties(width=WIDTH, height=120))
    cost = _cumulative_cost(timeline, per)
    if cost:
        panels.append(
            alt.Chart(_data(cost), title="Cost so far")
            .mark_line(interpolate="step-after", color="#d9480f", strokeWidth=2)
            .encode(
                x=x,
                y=alt.Y("cost:Q", title="USD", axis=alt.Axis(format="$,.4~f")),
                tooltip=[
                    alt.Tooltip("from:Q", title=f"at ({unit})", format=".1f"),
                    alt.Tooltip("cost:Q", title="spent", format="$,.4f"),
                ],
            )
            .properties(width=WIDTH, height=90)
        )
    chart = alt.vconcat(*panels, spacing=18).resolve_scale(color="independent")
    return _spec(chart)


def latency(bars: tuple[HistogramBar, ...], variants: tuple[str, ...]) -> dict[str, Any] | None:
    """Answers per latency bin on round edges (stacked by variant in a sweep); the slowest, past the 99th
    percentile, in one grey bar at the end."""
    import altair as alt

    if not bars:
        return None
    normal = [b for b in bars if not b.overflow]
    step = (normal[0].high - normal[0].low) if normal else bars[0].high - bars[0].low
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 2
    edge = f".{decimals}f"
    values = [
        {
            "low": b.low,
            "high": b.high if not b.overflow else b.low + step,
            "shown": f"{b.low:{edge}}-{b.high:{edge}} s"
            if not b.overflow
            else f"{b.low:{edge}} s and slower (up to {b.high:.2f} s)",
            "variant": SLOWEST if b.overflow else b.variant or "answers",
            "count": b.count,
        }
        for b in bars
    ]
    sweep = len(variants) > 1
    names = [*variants] if sweep else ["answers"]
    domain = [*names, SLOWEST]
    colors = [*_scheme(len(names)), OTHER_COLOR] if sweep else ["#4c6ef5", OTHER_COLOR]
    chart = (
        alt.Chart(_data(values), title="Latency of answered requests")
        .mark_bar(binSpacing=1, orient="vertical")
        .encode(
            x=alt.X(
                "low:Q",
                title="seconds per answer (request sent to last byte)",
                axis=alt.Axis(format=f".{decimals}~f", tickCount=8),
                scale=alt.Scale(zero=False, nice=False),
            ),
            x2="high:Q",
            y=alt.Y("sum(count):Q", title="answers"),
            color=alt.Color(
                "variant:N",
                scale=alt.Scale(domain=domain, range=colors),
                legend=alt.Legend() if sweep or any(b.overflow for b in bars) else None,
            ),
            tooltip=[
                alt.Tooltip("shown:N", title="latency"),
                *([alt.Tooltip("variant:N")] if sweep else []),
                alt.Tooltip("sum(count):Q", title="answers", format=","),
            ],
        )
        .properties(width=WIDTH, height=200)
    )
    return _spec(chart)


def finish_reasons(
    counts: tuple[tuple[str, str, int], ...], variants: tuple[str, ...]
) -> dict[str, Any] | None:
    """Rows per `finish_reason` (side by side per variant), with each bar's share of its variant."""
    import altair as alt

    if not counts:
        return None
    totals: dict[str, int] = {}
    for variant, _, n in counts:
        totals[variant] = totals.get(variant, 0) + n
    values = [
        {"variant": v, "reason": reason, "rows": n, "share": n / totals[v] if totals[v] else 0.0}
        for v, reason, n in counts
    ]
    reasons = list(dict.fromkeys(reason for _, reason, _ in counts))
    sweep = len(variants) > 1
    color = (
        alt.Color("variant:N", scale=alt.Scale(domain=list(variants), range=_scheme(len(variants))))
        if sweep
        else alt.Color(
            "reason:N",
            scale=alt.Scale(domain=reasons, range=[FINISH_COLORS.get(r, OTHER_COLOR) for r in reasons]),
            legend=None,
        )
    )
    base = alt.Chart(_data(values)).encode(
        y=alt.Y("reason:N", title=None, sort=reasons),
        yOffset=alt.YOffset("variant:N", sort=list(variants)) if sweep else alt.Undefined,
        x=alt.X("rows:Q", title="rows"),
    )
    bars = base.mark_bar(height={"band": 0.8}).encode(
        color=color,
        tooltip=[
            alt.Tooltip("reason:N", title="finish_reason"),
            *([alt.Tooltip("variant:N")] if sweep else []),
            alt.Tooltip("rows:Q", format=","),
            alt.Tooltip("share:Q", format=".1%"),
        ],
    )
    labels = base.mark_text(align="left", dx=4, color="#495057", fontSize=11).encode(
        text=alt.Text("share:Q", format=".0%")
    )
    rows = len(reasons) * (len(variants) if sweep else 1)
    chart = alt.layer(bars, labels, title="Why answers ended (finish_reason)").properties(
        width=WIDTH - 120, height=max(40, 22 * rows)
    )
    return _spec(chart)


def variants(groups: tuple[Group, ...]) -> dict[str, Any] | None:
    """A sweep's variants side by side: share of rows ok, cost, and latency p50 (bar) with p95 (tick)."""
    import altair as alt

    if len(groups) < 2:
        return None
    values = [
        {
            "variant": g.name,
            "ok_rate": g.ok_rate,
            "cost": g.cost_usd,
            "p50": g.latency.p50,
            "p95": g.latency.p95,
            "tokens": g.prompt_tokens + g.completion_tokens,
        }
        for g in groups
    ]
    names = [g.name for g in groups]
    y = alt.Y("variant:N", title=None, sort=names)
    color = alt.Color("variant:N", scale=alt.Scale(domain=names, range=_scheme(len(names))), legend=None)
    base = alt.Chart(_data(values)).properties(width=200, height=26 * len(names))
    ok = base.mark_bar().encode(
        y=y,
        x=alt.X("ok_rate:Q", title="rows ok", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])),
        color=color,
        tooltip=[alt.Tooltip("variant:N"), alt.Tooltip("ok_rate:Q", title="ok", format=".1%")],
    )
    cost = base.mark_bar().encode(
        y=alt.Y("variant:N", sort=names, axis=None),
        x=alt.X("cost:Q", title="cost (USD)", axis=alt.Axis(format="$,.4~f")),
        color=color,
        tooltip=[
            alt.Tooltip("variant:N"),
            alt.Tooltip("cost:Q", format="$,.4f"),
            alt.Tooltip("tokens:Q", format=","),
        ],
    )
    p50 = base.mark_bar().encode(
        y=alt.Y("variant:N", sort=names, axis=None),
        x=alt.X("p50:Q", title="latency p50 (bar), p95 (tick), s"),
        color=color,
        tooltip=[
            alt.Tooltip("variant:N"),
            alt.Tooltip("p50:Q", format=".3f"),
            alt.Tooltip("p95:Q", format=".3f"),
        ],
    )
    p95 = base.mark_tick(color="#343a40", thickness=2).encode(
        y=alt.Y("variant:N", sort=names, axis=None), x="p95:Q"
    )
    chart = alt.hconcat(ok, cost, alt.layer(p50, p95), spacing=24, title="Variants side by side")
    return _spec(chart)


def distributions(
    found: tuple[Distribution, ...], variants: tuple[str, ...], of: str
) -> dict[str, Any] | None:
    """One bar chart per field: how often each value came (side by side per variant), two to a row."""
    import altair as alt

    if not found:
        return None
    sweep = len(variants) > 1
    charts = []
    for dist in found:
        values = [{"variant": v, "value": value, "rows": n} for v, value, n in dist.counts]
        order = list(dict.fromkeys(value for _, value, _ in dist.counts))
        if all(_number(value) is not None for value in order):  # a scale reads in its own order
            order.sort(key=lambda value: _number(value) or 0.0)
        shown = len(order) * (len(variants) if sweep else 1)
        title = dist.key if of == "json" else "answers"
        if dist.distinct > len(order) - (1 if "(other)" in order else 0):
            title += f" ({dist.distinct:,} distinct values; the most frequent)"
        color = (
            alt.Color("variant:N", scale=alt.Scale(domain=list(variants), range=_scheme(len(variants))))
            if sweep
            else alt.value("#4c6ef5")
        )
        charts.append(
            alt.Chart(_data(values), title=title)
            .mark_bar()
            .encode(
                y=alt.Y("value:N", title=None, sort=order, axis=alt.Axis(labelLimit=180)),
                yOffset=alt.YOffset("variant:N", sort=list(variants)) if sweep else alt.Undefined,
                x=alt.X("rows:Q", title="rows"),
                color=color,
                tooltip=[
                    alt.Tooltip("value:N"),
                    *([alt.Tooltip("variant:N")] if sweep else []),
                    alt.Tooltip("rows:Q", format=","),
                ],
            )
            .properties(width=WIDTH // 2 - 150, height=max(40, 16 * shown))
        )
    return _spec(alt.concat(*charts, columns=2, spacing=40))


def _data(values: list[dict[str, Any]]) -> Any:
    """Inline data for a chart."""
    import altair as alt

    return alt.InlineData(values=values)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _spec(chart: Any) -> dict[str, Any]:
    spec: dict[str, Any] = chart.to_dict()
    spec["config"] = CONFIG
    spec["background"] = "transparent"
    return spec


def _colors(field: str, colors: dict[str, str]) -> Any:
    import altair as alt

    return alt.Color(f"{field}:N", scale=alt.Scale(domain=list(colors), range=list(colors.values())))


def _scheme(count: int) -> list[str]:
    palette = [
        "#4c78a8",
        "#f58518",
        "#54a24b",
        "#e45756",
        "#72b7b2",
        "#b279a2",
        "#ff9da6",
        "#9d755d",
        "#bab0ac",
        "#eeca3b",
    ]
    return [palette[i % len(palette)] for i in range(count)]


def _cumulative_cost(timeline: OverTime, per: float) -> list[dict[str, float]]:
    by_bucket: dict[int, float] = {}
    for b, _, _, cost in timeline.results:
        by_bucket[b] = by_bucket.get(b, 0.0) + cost
    if not any(by_bucket.values()):
        return []
    total = 0.0
    points = [{"from": 0.0, "cost": 0.0}]
    for b in sorted(by_bucket):
        total += by_bucket[b]
        points.append({"from": (b + 1) * timeline.bucket_s / per, "cost": total})
    return points


def _time_unit(span_s: float) -> tuple[str, float]:
    if span_s <= 600:
        return "seconds", 1.0
    if span_s <= 36_000:
        return "minutes", 60.0
    return "hours", 3600.0


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds:g} s"
    whole = round(seconds)
    if whole % 3600 == 0:
        return "hour" if whole == 3600 else f"{whole // 3600} hours"
    if whole % 60 == 0:
        return "minute" if whole == 60 else f"{whole // 60} minutes"
    return "second" if whole == 1 else f"{whole} seconds"


def _round_up(value: float) -> float:
    if value <= 0:
        return 1.0
    step = 10.0 ** math.floor(math.log10(value)) / 2
    return float(math.ceil(value / step) * step)
