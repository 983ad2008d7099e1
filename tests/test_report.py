"""The end-of-run summary file and `batchrun report` (text, JSON, HTML) against real emulator runs."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchrun.emulator import EmulatorServer
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
    assert printed == {k: v for k, v in summary.items() if k not in ("started_at", "ended_at")}
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


def test_report_html_is_self_contained_with_a_latency_histogram(
    failing_run: tuple[Path, CliResult], cli: Cli, tmp_path: Path
) -> None:
    """`report --html` writes one page: inline SVG histogram, cost by model, no external resource."""
    output, _ = failing_run
    page_path = tmp_path / "pages" / "report.html"
    result = cli("report", output, "--html", page_path)
    assert result.exit_code == 1
    page = page_path.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert 'aria-label="latency histogram"' in page
    histogram = page.split('aria-label="latency histogram"')[1].split("</svg>")[0]
    counts = [int(c.replace(",", "")) for c in re.findall(r"s: ([\d,]+)</title>", histogram)]
    ok = pl.read_parquet(output).filter(pl.col("status") == "ok").height
    assert sum(counts) == ok
    assert "Cost by model" in page
    assert "qwen3-max" in page
    assert "First 5 failed rows" in page
    for external in ("<script", "<link", "src=", "url(", "@import"):
        assert external not in page


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
    assert "Cost by variant" in page_path.read_text()


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
