"""`batchrun report OUT --html PAGE`: one self-contained page that answers what a run did.

The page holds everything it needs: its style, its figures, the charts as Vega-Lite specs (written with
altair) and Vega's JavaScript, inlined (~0.9 MB, bundled by vl-convert), so it draws offline, from a mail
attachment or a ticket, with no CDN. The tables (figures, variants, failures, sample rows) are plain HTML
and read without JavaScript; the charts draw as SVG. Every string from the output (completions, errors,
ids) is escaped, and the specs are embedded as JSON that cannot close their script element.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from batchrun import humanize
from batchrun.report import charts
from batchrun.report.pagedata import PageData, Samples
from batchrun.report.summary import Group, write_text_atomic

STYLE = """
:root { --ink: #212529; --muted: #6c757d; --line: #e9ecef; --ok: #2f9e44; --bad: #e03131; --warn: #f08c00; }
* { box-sizing: border-box; }
body { font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
  color: var(--ink); background: #f8f9fa; margin: 0; }
main { max-width: 1000px; margin: 0 auto; padding: 28px 32px 48px; background: #fff; min-height: 100vh; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 36px 0 10px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
p { margin: 6px 0; }
.sub { color: var(--muted); font-size: 13px; word-break: break-all; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 999px; font-size: 12px; font-weight: 600;
  color: #fff; vertical-align: middle; margin-left: 8px; }
.badge.ok { background: var(--ok); } .badge.failed { background: var(--bad); }
.badge.stopped { background: var(--warn); }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 10px;
  margin: 18px 0 6px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; }
.card .label { color: var(--muted); font-size: 12px; }
.card .value { font-size: 20px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .note { color: var(--muted); font-size: 12px; }
.value.ok { color: var(--ok); } .value.bad { color: var(--bad); } .value.warn { color: var(--warn); }
table { border-collapse: collapse; width: 100%; font-size: 13px; margin: 8px 0; }
th, td { padding: 6px 8px; text-align: left; vertical-align: top; border-bottom: 1px solid var(--line); }
th { font-weight: 600; color: #495057; background: #f8f9fa; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.text { max-width: 360px; overflow-wrap: anywhere; }
td.answer { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px;
  overflow-wrap: anywhere; }
tr.differ td.answer { background: #fff9db; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; }
.kind { font-weight: 600; color: var(--bad); white-space: nowrap; }
.chart { margin: 12px 0 4px; min-height: 40px; }
.note { color: var(--muted); font-size: 13px; }
.warnbox { border-left: 4px solid var(--warn); background: #fff9db; padding: 8px 12px; margin: 10px 0; }
.badbox { border-left: 4px solid var(--bad); background: #fff5f5; padding: 8px 12px; margin: 10px 0;
  white-space: pre-wrap; }
footer { color: var(--muted); font-size: 12px; margin-top: 40px; }
#vg-tooltip-element { font: 12px system-ui, sans-serif; }
"""

BUNDLE_SNIPPET = "window.vegaEmbed = vegaEmbed;"  # what the page needs of the bundle: Vega-Embed

# Draws every chart, and says on <body> whether all drew (`data-charts`), for a test or a reader.
EMBED = """
(function () {
  var errors = [], warnings = [];
  window.addEventListener("error", function (e) { errors.push(String(e.message)); });
  // Vega reports a chart it cannot draw on the console, not to vegaEmbed's promise.
  var consoleError = console.error, consoleWarn = console.warn;
  console.error = function () {
    errors.push(Array.from(arguments).join(" "));
    consoleError.apply(console, arguments);
  };
  console.warn = function () {
    warnings.push(Array.from(arguments).join(" "));
    consoleWarn.apply(console, arguments);
  };
  var jobs = [];
  document.querySelectorAll('script[type="application/json"][data-chart]').forEach(function (el) {
    var target = document.getElementById(el.getAttribute("data-chart"));
    var spec = JSON.parse(el.textContent);
    jobs.push(vegaEmbed(target, spec, { actions: false, renderer: "svg" }).catch(function (e) {
      errors.push(String(e));
      target.textContent = "This chart could not be drawn: " + e;
    }));
  });
  Promise.all(jobs).then(function () {
    document.body.setAttribute("data-charts", errors.length ? "failed" : "drawn " + jobs.length);
    document.body.setAttribute("data-chart-errors", errors.join("\\n"));
    document.body.setAttribute("data-chart-warnings", warnings.join("\\n"));
  });
})();
"""


def write_html(data: PageData, path: Path) -> None:
    """Write the page for `data` to `path` (atomically)."""
    write_text_atomic(path, render(data))


def render(data: PageData) -> str:
    """The page as one string."""
    page = _Page()
    s = data.summary
    title = f"batchrun report: {(data.last_run or {}).get('job') or s.output.stem}"
    page.add(f"<h1>{escape(title)}{_badge(s.exit_code)}</h1>")
    page.add(f'<p class="sub">{escape(str(s.output))}</p>')
    page.add(_last_run_line(data))
    page.add(_cards(data))
    if s.note:
        page.add(f'<p class="warnbox">{escape(s.note)}</p>')
    if len(data.variants) > 1:
        page.add("<h2>Variants</h2>")
        page.chart(charts.variants(s.by_variant))
        page.add(_variant_table(s.by_variant))
        if data.samples is not None:
            page.add("<h2>Answers side by side</h2>")
            page.add(_agreement(data.samples))
            page.add(_samples_table(data.samples, len(data.variants)))
    page.add("<h2>Failures</h2>")
    page.add(_failures(data))
    if data.distributions:
        what = "the <code>json</code> column's values" if data.distribution_of == "json" else "the answers"
        page.add(f"<h2>Distribution of {what}</h2>")
        page.chart(charts.distributions(data.distributions, data.variants, data.distribution_of or "json"))
    page.add("<h2>Why answers ended</h2>")
    if data.finish_reasons:
        page.add(_length_warning(data))
        page.chart(charts.finish_reasons(data.finish_reasons, data.variants))
    else:
        page.add('<p class="note">No answer yet.</p>')
    page.add("<h2>The run over time</h2>")
    page.add(_over_time_text(data))
    if data.over_time is not None:
        page.chart(charts.over_time(data.over_time))
    page.add("<h2>Latency</h2>")
    if data.histogram:
        page.add(f'<p class="note">{escape(s.latency.text())}; answers from the response cache excluded.</p>')
        page.chart(charts.latency(data.histogram, data.variants))
    else:
        page.add('<p class="note">No answered request to measure.</p>')
    if len(data.variants) <= 1 and data.samples is not None:
        page.add("<h2>Sample answers</h2>")
        page.add(_samples_table(data.samples, 1))
    return page.html(title)


class _Page:
    """The body's parts and the chart specs, put together with the style and Vega's JavaScript."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.specs: list[dict[str, Any]] = []

    def add(self, html: str) -> None:
        self.parts.append(html)

    def chart(self, spec: dict[str, Any] | None) -> None:
        if spec is None:
            return
        self.parts.append(f'<div class="chart" id="chart-{len(self.specs)}"></div>')
        self.specs.append(spec)

    def html(self, title: str) -> str:
        import vl_convert

        specs = "".join(
            f'<script type="application/json" data-chart="chart-{i}">{_script_json(spec)}</script>'
            for i, spec in enumerate(self.specs)
        )
        made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        return "\n".join(
            [
                "<!DOCTYPE html>",
                '<html lang="en"><head><meta charset="utf-8">',
                '<meta name="viewport" content="width=device-width, initial-scale=1">',
                f"<title>{escape(title)}</title><style>{STYLE}</style></head>",
                "<body><main>",
                '<noscript><p class="warnbox">The charts need JavaScript; the tables hold the figures.</p>'
                "</noscript>",
                *self.parts,
                f"<footer>Made by batchrun {escape(_version())} on {made}.</footer>",
                "</main>",
                f"<script>{vl_convert.javascript_bundle(BUNDLE_SNIPPET)}</script>",
                specs,
                f"<script>{EMBED}</script>",
                "</body></html>",
            ]
        )


def _script_json(spec: dict[str, Any]) -> str:
    """JSON that cannot end its <script> element early, whatever the strings inside it say."""
    text = json.dumps(spec, ensure_ascii=False, allow_nan=False, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _badge(code: int) -> str:
    kind, text = {0: ("ok", "every row ok"), 1: ("failed", "some rows failed")}.get(
        code, ("stopped", "stopped early")
    )
    return f'<span class="badge {kind}">{text}</span>'


def _last_run_line(data: PageData) -> str:
    run = data.last_run
    if not run:
        return (
            '<p class="note">No summary file beside the output: the figures below come from the output.</p>'
        )
    ended = escape(str(run.get("ended_at") or "?"))
    line = f'<p class="note">Last run ended {ended}, exit {escape(str(run.get("exit_code")))}'
    line += f" ({escape(str(run.get('status')))}).</p>"
    if run.get("message"):
        line += f'<p class="badbox">{escape(str(run["message"]))}</p>'
    return line


def _cards(data: PageData) -> str:
    s = data.summary
    run = data.last_run or {}
    timeline = data.over_time
    cards = [
        ("rows", f"{s.rows:,}", None, ""),
        ("ok", f"{s.ok:,}", f"{s.ok / s.rows:.1%} of rows" if s.rows else None, "ok"),
        ("failed", f"{s.failed:,}", _top_error(s.errors), "bad" if s.failed else ""),
    ]
    if s.pending:
        cards.append(("pending", f"{s.pending:,}", "not answered yet: rerun to resume", "warn"))
    cards.append(
        ("cost", _money(s.cost_usd), "no price known for some rows" if s.rows_without_cost else None, "")
    )
    cards.append(
        (
            "tokens in / out",
            f"{humanize.count(s.prompt_tokens)} / {humanize.count(s.completion_tokens)}",
            None,
            "",
        )
    )
    if s.latency.p50 is not None:
        cards.append(("latency p50", f"{s.latency.p50:.2f} s", f"p95 {s.latency.p95 or 0:.2f} s", ""))
    wall = timeline.wall_s if timeline is not None and timeline.requests is not None else run.get("wall_s")
    if isinstance(wall, int | float) and wall > 0:
        answered = timeline.answered if timeline is not None else s.rows - int(run.get("rows_reused") or 0)
        cards.append(
            ("wall time (last run)", humanize.duration(float(wall)), f"{answered / wall:,.1f} rows/s", "")
        )
    sent = (
        timeline.requests
        if timeline is not None and timeline.requests is not None
        else run.get("requests_sent")
    )
    if isinstance(sent, int):
        retried = timeline.retried if timeline is not None else {}
        note = ", ".join(f"{k} {v:,}" for k, v in sorted(retried.items())) if retried else "no retries"
        cards.append(("requests sent", f"{sent:,}", note, "warn" if retried else ""))
    body = "".join(
        f'<div class="card"><div class="label">{escape(label)}</div>'
        f'<div class="value {style}">{escape(value)}</div>'
        + (f'<div class="note">{escape(note)}</div>' if note else "")
        + "</div>"
        for label, value, note, style in cards
    )
    return f'<section class="cards">{body}</section>'


def _top_error(errors: dict[str, int]) -> str | None:
    if not errors:
        return None
    return ", ".join(f"{k} {v:,}" for k, v in sorted(errors.items(), key=lambda kv: -kv[1])[:3])


def _variant_table(groups: tuple[Group, ...]) -> str:
    head = ["variant", "rows", "ok", "failed", "ok rate", "tokens in", "tokens out", "cost", "p50 s", "p95 s"]
    rows = []
    for g in groups:
        cells = [
            f'<td class="text">{escape(g.name)}</td>',
            *(f'<td class="num">{n:,}</td>' for n in (g.rows, g.ok, g.failed)),
            f'<td class="num">{g.ok_rate:.1%}</td>',
            *(f'<td class="num">{n:,}</td>' for n in (g.prompt_tokens, g.completion_tokens)),
            f'<td class="num">{_money(g.cost_usd)}</td>',
            *(f'<td class="num">{humanize.seconds(v)}</td>' for v in (g.latency.p50, g.latency.p95)),
        ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    header = "".join(f'<th class="{"num" if i else ""}">{h}</th>' for i, h in enumerate(head))
    return f"<table><tr>{header}</tr>{''.join(rows)}</table>"


def _agreement(samples: Samples) -> str:
    if not samples.positions:
        return ""
    same = samples.positions - samples.differ
    return (
        f"<p>The variants gave the same answer for <b>{same:,} of {samples.positions:,}</b> input rows "
        f"({same / samples.positions:.1%}). Rows where they differ come first (highlighted).</p>"
    )


def _samples_table(samples: Samples, answers: int) -> str:
    columns = samples.columns
    inputs = len(columns) - answers
    header = "".join(f"<th>{escape(c)}</th>" for c in columns)
    rows = []
    for row, differ in zip(samples.rows, samples.differing, strict=True):
        cells = [f'<td class="text">{escape(v)}</td>' for v in row[:inputs]]
        cells += [f'<td class="answer">{escape(v)}</td>' for v in row[inputs:]]
        rows.append(f'<tr class="{"differ" if differ else ""}">' + "".join(cells) + "</tr>")
    return f"<table><tr>{header}</tr>{''.join(rows)}</table>"


def _failures(data: PageData) -> str:
    s = data.summary
    if not s.failed:
        return '<p class="note">No row failed.</p>'
    who = f"<code>{escape(data.id_column)}</code>" if data.id_column else "row number"
    rows = "".join(
        f'<tr><td class="kind">{escape(g.error_type)}</td><td class="text">{escape(g.message) or "-"}</td>'
        f'<td class="num">{g.count:,}</td><td><code>{escape(", ".join(g.ids))}</code></td></tr>'
        for g in data.failures
    )
    more = ""
    if data.failure_groups > len(data.failures):
        more = f'<p class="note">{data.failure_groups - len(data.failures):,} smaller groups not listed.</p>'
    return (
        f"<p>{s.failed:,} rows failed ({s.failed / s.rows:.1%}), grouped by error type and message. "
        "A rerun sends again the rows that ran out of retries (rate limits, server errors); the others "
        "failed for good.</p>"
        f'<table><tr><th>error_type</th><th>message</th><th class="num">rows</th><th>first rows ({who})'
        f"</th></tr>{rows}</table>{more}"
    )


def _length_warning(data: PageData) -> str:
    total = sum(n for _, _, n in data.finish_reasons)
    length = sum(n for _, reason, n in data.finish_reasons if reason == "length")
    if not total or length / total < 0.05:
        return ""
    return (
        f'<p class="warnbox"><b>{length / total:.0%}</b> of answers stopped at the token limit '
        "(<code>finish_reason = length</code>): they are cut short. Raise <code>max_tokens</code> in "
        "<code>[params]</code> if the whole answer matters.</p>"
    )


def _over_time_text(data: PageData) -> str:
    timeline = data.over_time
    if timeline is None:
        return f'<p class="note">Not shown: {escape(data.over_time_note or "no data")}.</p>'
    started = datetime.fromtimestamp(timeline.start, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    rate = timeline.answered / timeline.wall_s if timeline.wall_s else 0
    parts = [
        f"The last run started {started} and journaled {timeline.answered:,} results in "
        f"{humanize.duration(timeline.wall_s)} ({rate:,.1f} rows/s)"
    ]
    if timeline.requests is not None:
        retried = sum(timeline.retried.values())
        parts.append(f"; it sent {timeline.requests:,} requests, {retried:,} of them failed and were retried")
    text = "".join(parts) + "."
    if timeline.earlier:
        text += f" {timeline.earlier:,} results came from earlier runs of the job and are not charted."
    if timeline.requests is None:
        text += " Requests and retries per second are written by the live engine only."
    return f"<p>{escape(text)}</p>"


def _money(cost: float | None) -> str:
    return f"${cost:,.4f}" if cost is not None else "unknown"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("batchrun")
    except PackageNotFoundError:
        return "(unknown version)"
