"""`batchrun report --html FILE`: the report as one self-contained page.

No JavaScript, no external stylesheet, font or CDN: the charts are inline SVG, the style is inline CSS, so
the file can be mailed, attached to a ticket or opened offline.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from batchrun.report.build import Bin, Report
from batchrun.report.summary import Group, write_text_atomic

CHART_WIDTH, CHART_HEIGHT = 640, 220
BAR_HEIGHT = 22

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 900px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 2em; }
table { border-collapse: collapse; } td, th { padding: 3px 10px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } tr:nth-child(even) td { background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.ok { color: #17702b; } .failed { color: #b3261e; }
svg text { font: 11px system-ui, sans-serif; fill: #444; }
"""


def write_html(report: Report, path: Path) -> None:
    """Write `report` to `path` as a self-contained HTML page (atomically)."""
    write_text_atomic(path, render(report))


def render(report: Report) -> str:
    """The page as one string."""
    s = report.summary
    title = f"batchrun report: {s.job or s.output.name}"
    state = "ok" if s.exit_code == 0 else "failed"
    pending = f", {s.pending:,} pending" if s.pending else ""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p>{escape(str(s.output))}: <b class="{state}">{s.ok:,} ok, {s.failed:,} failed{pending}</b> of '
        f"{s.rows:,} rows</p>",
        _summary_table(report),
        "<h2>Latency of answered requests</h2>",
        _histogram(report.histogram) if report.histogram else "<p>No answered request to measure.</p>",
        "<h2>Cost by model</h2>",
        _bars(s.by_model),
    ]
    if s.by_variant:
        parts += ["<h2>Cost by variant</h2>", _bars(s.by_variant), _group_table(s.by_variant, "variant")]
    if report.failed_rows:
        parts += [f"<h2>First {len(report.failed_rows)} failed rows</h2>", _failed_table(report)]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _summary_table(report: Report) -> str:
    s = report.summary
    errors = ", ".join(f"{k}: {v:,}" for k, v in sorted(s.errors.items())) or "none"
    rows = [
        ("rows", f"{s.rows:,}"),
        ("ok", f"{s.ok:,}"),
        ("failed", f"{s.failed:,}"),
        *([("pending (the run stopped early)", f"{s.pending:,}")] if s.pending else []),
        ("errors by type", errors),
        ("tokens in / out", f"{s.prompt_tokens:,} / {s.completion_tokens:,}"),
        ("cost", _money(s.cost_usd)),
        ("latency", s.latency.text()),
    ]
    if s.rows_per_s is not None and s.wall_s is not None:
        rows.append(("throughput", f"{s.rows_per_s:,.1f} rows/s over {s.wall_s:,.1f} s"))
    body = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _histogram(bins: list[Bin]) -> str:
    """Bars of answer counts per latency bin, with the axis labelled in seconds."""
    top = max(b.count for b in bins) or 1
    left, bottom = 12 + 7 * len(f"{top:,}"), 30  # room for the top count's label
    plot_w, plot_h = CHART_WIDTH - left - 10, CHART_HEIGHT - bottom - 10
    width = plot_w / len(bins)
    bars = []
    for i, b in enumerate(bins):
        h = plot_h * b.count / top
        x, y = left + i * width, 10 + plot_h - h
        tip = f"{b.low:.3f}-{b.high:.3f} s: {b.count:,}"
        bars.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(width - 1, 1):.1f}" height="{h:.1f}" '
            f'fill="#3b6fb6"><title>{tip}</title></rect>'
        )
    axis_y = 10 + plot_h
    labels = [
        f'<text x="{left}" y="{axis_y + 16}">{bins[0].low:.2f} s</text>',
        f'<text x="{left + plot_w}" y="{axis_y + 16}" text-anchor="end">{bins[-1].high:.2f} s</text>',
        f'<text x="{left - 4}" y="16" text-anchor="end">{top:,}</text>',
        f'<text x="{left - 4}" y="{axis_y}" text-anchor="end">0</text>',
        f'<text x="{left + plot_w / 2:.0f}" y="{axis_y + 16}" text-anchor="middle">'
        "seconds per request</text>",
    ]
    return _svg(
        CHART_HEIGHT,
        "latency histogram",
        [
            *bars,
            f'<line x1="{left}" y1="{axis_y}" x2="{left + plot_w}" y2="{axis_y}" stroke="#888"/>',
            *labels,
        ],
    )


def _bars(groups: tuple[Group, ...]) -> str:
    """Horizontal bars of cost per group; groups without a known price say so."""
    priced = [g for g in groups if g.cost_usd is not None]
    if not priced:
        return "<p>No cost known (no price for these models: set [pricing]).</p>"
    top = max(g.cost_usd or 0.0 for g in priced) or 1.0
    label_w = 200
    plot_w = CHART_WIDTH - label_w - 110  # room for the cost's label after the longest bar
    items = []
    for i, g in enumerate(priced):
        y = 5 + i * (BAR_HEIGHT + 6)
        w = plot_w * (g.cost_usd or 0.0) / top
        items += [
            f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{escape(g.name[:32])}</text>',
            f'<rect x="{label_w}" y="{y}" width="{max(w, 1):.1f}" height="{BAR_HEIGHT}" fill="#d08a2c">'
            f"<title>{escape(g.name)}: {_money(g.cost_usd)}, {g.ok:,} ok</title></rect>",
            f'<text x="{label_w + w + 6:.1f}" y="{y + 15}">{_money(g.cost_usd)}</text>',
        ]
    return _svg(10 + len(priced) * (BAR_HEIGHT + 6), "cost by group", items)


def _group_table(groups: tuple[Group, ...], what: str) -> str:
    head = "".join(
        f"<th>{h}</th>"
        for h in (what, "rows", "ok", "failed", "tokens in", "tokens out", "cost", "p50 s", "p95 s")
    )
    rows = []
    for g in groups:
        cells = [
            f"<td>{escape(g.name)}</td>",
            *(f'<td class="num">{n:,}</td>' for n in (g.rows, g.ok, g.failed, g.prompt_tokens)),
            f'<td class="num">{g.completion_tokens:,}</td>',
            f'<td class="num">{_money(g.cost_usd)}</td>',
            *(f'<td class="num">{_seconds(v)}</td>' for v in (g.latency.p50, g.latency.p95)),
        ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _failed_table(report: Report) -> str:
    columns = list(report.failed_rows[0])
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    rows = [
        "<tr>"
        + "".join(f"<td>{escape('' if row[c] is None else str(row[c]))}</td>" for c in columns)
        + "</tr>"
        for row in report.failed_rows
    ]
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _svg(height: int, label: str, items: list[str]) -> str:
    return (
        f'<svg role="img" aria-label="{label}" font-size="11" font-family="sans-serif" width="{CHART_WIDTH}" '
        f'height="{height}" viewBox="0 0 {CHART_WIDTH} {height}">' + "".join(items) + "</svg>"
    )


def _money(cost: float | None) -> str:
    return f"${cost:,.4f}" if cost is not None else "unknown"


def _seconds(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"
