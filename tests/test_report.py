"""The end-of-run summary file and `batchrun report` (text, JSON, HTML) against real emulator runs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import vl_convert

from batchrun.emulator import EmulatorServer
from batchrun.report.overtime import over_time
from batchrun.report.pagedata import gather
from tests.conftest import CliResult

Cli = Callable[..., CliResult]
StartEmulator = Callable[..., EmulatorServer]
WriteJob = Callable[..., Path]


@pytest.fixture
def failing_run(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> tuple[Path, CliResult]:
    """A 40-row run where a share of requests get a 500 and one row a 400, with a single attempt each."""
    frame = pl.read_ndjson(reviews)
    bad_id = frame["id"][3]
    frame = frame.with_columns(
        pl.when(pl.col("id") == bad_id).then(pl.lit("[[emulator:400]]")).otherwise("text").alias("text")
    )
    frame.write_ndjson(reviews)
    server = emulator(rate_500=0.25, seed=11)
    job = write_job(server.base_url)
    result = cli("run", job, "--json", "--set", "limits.max_attempts=1")
    return job.parent / "out" / "test.parquet", result


def test_summary_json_is_written_beside_the_output_and_matches_it(
    failing_run: tuple[Path, CliResult],
) -> None:
    """A run with failures writes out/test.summary.json: counts, errors, cost and latency match the output."""
    output, result = failing_run
    assert result.exit_code == 1
    summary = json.loads((output.parent / "test.summary.json").read_text())
    out = pl.read_parquet(output)
    errors = dict(out.filter(pl.col("status") == "error").group_by("error_type").len().rows())
    assert errors["bad_request"] == 1
    assert errors["server_error"] > 0
    assert summary["errors"] == errors
    assert summary["status"] == "failed"
    assert summary["exit_code"] == 1
    assert (summary["rows"], summary["failed"]) == (40, sum(errors.values()))
    assert summary["ok"] == out.filter(pl.col("status") == "ok").height
    assert summary["prompt_tokens"] == out["prompt_tokens"].sum()
    assert summary["cost_usd"] == pytest.approx(out["cost_usd"].sum())
    latency = out.filter(pl.col("status") == "ok")["latency_s"]
    assert summary["latency"]["max_s"] == pytest.approx(latency.max(), abs=1e-3)
    assert summary["latency"]["p50_s"] == pytest.approx(latency.quantile(0.5, "linear"), abs=1e-3)
    assert summary["latency"]["p95_s"] == pytest.approx(latency.quantile(0.95, "linear"), abs=1e-3)
    assert summary["requests_sent"] == 40
    assert summary["rows_per_s"] > 0
    models = {g["model"]: g for g in summary["by_model"]}
    assert models["(no reply)"]["rows"] == summary["failed"]  # failed rows have no model
    assert models["qwen3-max"]["cost_usd"] == pytest.approx(summary["cost_usd"])
    assert "variants" not in summary  # no sweep, no variant column
    assert summary["ended_at"] >= summary["started_at"]
    printed = json.loads(result.stdout)
    assert printed == {k: v for k, v in summary.items() if k not in ("started_at", "ended_at", "id_column")}
    assert not list(output.parent.glob(".*.tmp"))  # written through a temporary file, renamed


def test_report_text_lists_the_summary_and_the_first_failed_rows(
    failing_run: tuple[Path, CliResult], cli: Cli
) -> None:
    """`batchrun report` prints the counts of the run and the first five failed rows with their errors."""
    output, _ = failing_run
    out = pl.read_parquet(output)
    failed = out.filter(pl.col("status") == "error")
    result = cli("report", output)
    assert result.exit_code == 1
    assert f"40 ({40 - failed.height} ok, {failed.height} failed" in result.stdout
    assert "latency: p50" in result.stdout
    assert "first 5 failed rows:" in result.stdout
    listed = [line for line in result.stdout.splitlines() if line.startswith("  ") and "attempts:" in line]
    assert [line.split(":")[0].strip() for line in listed] == failed["custom_id"].head(5).to_list()
    assert any("bad_request HTTP 400" in line for line in listed) == (
        "bad_request" in failed["error_type"].head(5)
    )


def test_report_json_matches_the_runs_summary(failing_run: tuple[Path, CliResult], cli: Cli) -> None:
    """`report --json` recomputes from the file the counts the run wrote, plus failed rows and a histogram."""
    output, _ = failing_run
    written = json.loads((output.parent / "test.summary.json").read_text())
    report = json.loads(cli("report", output, "--json", "--failed", "3").stdout)
    for key in (
        "rows",
        "ok",
        "failed",
        "errors",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "latency",
    ):
        assert report[key] == written[key], key
    assert report["wall_s"] is None  # not in the output file
    assert len(report["failed_rows"]) == 3
    assert set(report["failed_rows"][0]) == {"custom_id", "error_type", "http_status", "attempts", "error"}
    assert all(row["error"] for row in report["failed_rows"])
    assert sum(b["count"] for b in report["latency_histogram"]) == report["ok"]


def test_report_html_is_one_offline_page_with_failures_grouped_and_charts_that_draw(
    failing_run: tuple[Path, CliResult], cli: Cli, tmp_path: Path
) -> None:
    """`report --html` writes one page that loads nothing from elsewhere: failures grouped by type and
    message with their counts and first row ids (the id column, not the hash), and Vega-Lite charts that
    Vega draws without an error."""
    output, _ = failing_run
    page_path = tmp_path / "pages" / "report.html"
    result = cli("report", output, "--html", page_path)
    assert result.exit_code == 1
    page = page_path.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "<script src" not in page
    markup = re.sub(r"<script\b[^>]*>.*?</script>", "", page, flags=re.DOTALL)
    for external in ("<link", "<img", "<iframe", "@import", "url(", "http"):
        assert external not in markup
    out = pl.read_parquet(output)
    failed = out.filter(pl.col("status") == "error")
    assert f"{failed.height} rows failed" in page
    bad = failed.filter(pl.col("error_type") == "bad_request")
    assert '<td class="kind">bad_request</td>' in page
    assert bad["id"][0] in page  # the row's id (r0004), not its custom_id
    assert bad["custom_id"][0] not in page
    server_errors = failed.filter(pl.col("error_type") == "server_error")
    assert (
        f'<td class="num">{server_errors.height}</td><td><code>{", ".join(server_errors["id"].head(3))}'
        in page
    )
    specs = chart_specs(page)
    assert len(specs) >= 4  # finish reasons, run over time, latency, ...
    for spec in specs:
        assert "<svg" in vl_convert.vegalite_to_svg(spec)  # raises on a spec Vega cannot draw


def chart_specs(page: str) -> list[dict[str, Any]]:
    """The Vega-Lite specs embedded in a report page."""
    found = re.findall(r'<script type="application/json" data-chart="chart-\d+">(.*?)</script>', page)
    return [json.loads(text) for text in found]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless Chromium is not installed")
def test_report_page_draws_every_chart_in_headless_chromium(
    failing_run: tuple[Path, CliResult], cli: Cli, tmp_path: Path
) -> None:
    """Opened offline in headless Chromium, the page draws every chart as SVG, with no error or warning
    on the console."""
    output, _ = failing_run
    page_path = tmp_path / "report.html"
    cli("report", output, "--html", page_path)
    dom = headless_dom(page_path, tmp_path)
    count = len(chart_specs(page_path.read_text()))
    assert f'data-charts="drawn {count}"' in dom
    assert 'data-chart-errors=""' in dom
    assert 'data-chart-warnings=""' in dom
    assert dom.count("<svg") >= count


def headless_dom(page: Path, folder: Path) -> str:
    """The page's DOM after its scripts ran in headless Chromium (no network: a file URL)."""
    command = [
        "chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={folder / 'chromium'}",
        "--virtual-time-budget=10000", "--dump-dom", page.as_uri(),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    return done.stdout


def test_report_groups_by_variant_when_the_output_has_one(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli, tmp_path: Path
) -> None:
    """An output with a `variant` column (a sweep) is summarized per variant, side by side."""
    server = emulator()
    assert cli("run", write_job(server.base_url)).exit_code == 0
    out = pl.read_parquet(tmp_path / "out" / "test.parquet")
    swept = out.with_columns(
        variant=pl.when(pl.int_range(pl.len()) % 4 == 0).then(pl.lit("t=1")).otherwise(pl.lit("t=0")),
        file_row_number=pl.lit("an input column with a name DuckDB also uses"),
    )
    swept_path = tmp_path / "swept.parquet"
    swept.write_parquet(swept_path)
    report = json.loads(cli("report", swept_path, "--json").stdout)
    assert [g["variant"] for g in report["variants"]] == ["t=1", "t=0"]  # in output order
    variants = {g["variant"]: g for g in report["variants"]}
    assert (variants["t=0"]["rows"], variants["t=1"]["rows"]) == (30, 10)
    assert variants["t=1"]["ok_rate"] == 1.0
    assert variants["t=0"]["cost_usd"] + variants["t=1"]["cost_usd"] == pytest.approx(report["cost_usd"])
    p50 = swept.filter(pl.col("variant") == "t=1")["latency_s"].quantile(0.5, "linear")
    assert variants["t=1"]["latency_p50_s"] == pytest.approx(p50, abs=1e-3)
    text = cli("report", swept_path).stdout
    assert "variants:" in text
    assert re.search(r"^\s+t=1\s+10/10 100%\s", text, re.MULTILINE)
    page_path = tmp_path / "swept.html"
    cli("report", swept_path, "--html", page_path)
    page = page_path.read_text()
    assert "<h2>Variants</h2>" in page
    assert '<td class="text">t=1</td>' in page
    assert "Answers side by side" not in page  # variants interleaved: no rows to set side by side


@pytest.mark.parametrize("content", [None, b"not parquet", "no_columns"])
def test_report_on_a_file_that_is_not_an_output_exits_2_naming_it(
    cli: Cli, tmp_path: Path, content: bytes | str | None
) -> None:
    """A missing file, a non-Parquet file or a Parquet without batchrun's columns exits 2 naming the file."""
    path = tmp_path / "thing.parquet"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "no_columns":
        pl.DataFrame({"a": [1]}).write_parquet(path)
    result = cli("report", path)
    assert result.exit_code == 2
    assert str(path) in result.stderr
    if content == "no_columns":
        assert "missing columns: status" in result.stderr


def test_quantiles_that_do_not_fit_the_cap_become_estimates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When exact latency quantiles run out of memory, the summary gives t-digest estimates, never fails."""
    import duckdb

    from batchrun.report import summary as summary_module

    output = tmp_path / "out.parquet"
    latency = [i / 1000 for i in range(1, 1001)]
    pl.DataFrame(
        {"status": ["ok"] * 1000, "latency_s": latency, "model": ["m"] * 1000, "error_type": [None] * 1000}
    ).with_columns(prompt_tokens=1, completion_tokens=1, cost_usd=0.0).write_parquet(output)
    aggregate = summary_module._aggregate
    used: list[str] = []

    def exact_runs_out(db: duckdb.DuckDBPyConnection, path: Path, quantile: str) -> Any:
        used.append(quantile)
        if quantile == "quantile_cont":
            raise duckdb.OutOfMemoryException("out of memory")
        return aggregate(db, path, quantile)

    monkeypatch.setattr(summary_module, "_aggregate", exact_runs_out)
    result = summary_module.summarize(output)

    assert used == ["quantile_cont", "approx_quantile"]
    assert result.latency.p50 == pytest.approx(0.5005, rel=0.02)
    assert result.latency.p95 == pytest.approx(0.95, rel=0.02)
    assert (result.rows, result.ok, result.latency.max) == (1000, 1000, 1.0)


def test_the_run_over_time_is_the_last_runs_with_its_requests_and_retries(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """A job run on 10 rows, then on all 40 with 429s: the run over time is the second run's (30 results,
    10 from earlier), with its requests and retried 429s per bucket adding up to its timeline's totals."""
    server = emulator(rate_429=0.2, seed=5)
    job = write_job(server.base_url)
    tries = ("--set", "limits.max_attempts=12")
    assert cli("run", job, "--limit", "10", *tries).exit_code == 0
    summary = json.loads(cli("run", job, "--json", *tries).stdout)
    timeline, note = over_time(job.parent / "out" / "test.parquet")
    assert note is None
    assert timeline is not None
    assert (timeline.runs, timeline.earlier, timeline.answered) == (2, 10, 30)
    assert timeline.requests == summary["requests_sent"]
    assert sum(n for _, n in timeline.sent) == timeline.requests
    assert sum(timeline.retried.values()) == timeline.requests - 30 > 0
    assert (
        sum(n for _, kind, n in timeline.retries if kind == "rate_limited")
        == timeline.retried["rate_limited"]
    )
    assert sum(rows for _, kind, rows, _ in timeline.results if kind == "ok") == 30
    assert timeline.bucket_s == 0.1  # a run of a few seconds, in tenths of a second
    assert timeline.attempts_bucket_s == 1.0  # the timeline has a line a second


def test_a_sweep_page_sets_the_variants_answers_side_by_side_and_counts_json_values(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli, tmp_path: Path
) -> None:
    """A two-model sweep in JSON mode: the page lists rows whose answers differ first, says how often the
    variants agree, and charts the `json` column's values per variant."""
    server = emulator()
    job = write_job(
        server.base_url,
        """
        [matrix]
        model = ["qwen3-max", "qwen-max"]
        """,
    )
    text = job.read_text().replace(
        'template = "Review: {title}. {text}\\nAnswer with one word."',
        'template = """Review: {title}. {text}\nReply in JSON: {{"sentiment": "positive" | "negative"}}"""',
    )
    job.write_text(
        text.replace("max_tokens = 16", 'max_tokens = 40\nresponse_format = { type = "json_object" }')
    )
    assert cli("run", job).exit_code == 0
    output = tmp_path / "out" / "test.parquet"
    data = gather(output)
    assert data.samples is not None
    assert data.samples.columns == ("id", "text", "model=qwen3-max", "model=qwen-max")
    out = pl.read_parquet(output)
    first, second = (out.filter(pl.col("variant") == v)["json"] for v in data.samples.columns[2:])
    differ = int((first != second).sum())
    assert 0 < differ < 40
    assert (data.samples.positions, data.samples.differ) == (40, differ)
    assert data.samples.differing == tuple(i < differ for i in range(len(data.samples.rows)))
    (sentiment,) = [d for d in data.distributions if d.key == "sentiment"]
    counted = {(variant, value): n for variant, value, n in sentiment.counts}
    for variant, answers in zip(data.samples.columns[2:], (first, second), strict=True):
        labels = answers.str.json_path_match("$.sentiment")
        assert counted[(variant, "positive")] == int((labels == "positive").sum())
    page = tmp_path / "sweep.html"
    cli("report", output, "--html", page)
    html = page.read_text()
    assert f"same answer for <b>{40 - differ} of 40</b>" in html
    assert html.count('<tr class="differ">') == min(differ, len(data.samples.rows))
