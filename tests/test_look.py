"""Commands to look before and after a run: `validate`, `status` and `estimate --fresh`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from batchrun.emulator import EmulatorServer
from batchrun.report.status import running_pid
from batchrun.store.runstore import run_folder, run_lock
from tests.conftest import CliResult

Cli = Callable[..., CliResult]
StartEmulator = Callable[..., EmulatorServer]
WriteJob = Callable[..., Path]
KEY = "sk-validate-SECRET-0042"


def test_validate_prints_the_first_requests_as_sent_with_the_key_hidden(
    write_job: WriteJob, reviews: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`validate` checks every row and prints the first requests: URL, headers with the key as ***, body;
    nothing is sent (the base URL points nowhere) and nothing is written."""
    monkeypatch.setenv("BATCHRUN_TEST_KEY", KEY)
    job = write_job("http://127.0.0.1:9/v1")
    job.write_text(
        job.read_text().replace(
            'model = "qwen3-max"', 'model = "qwen3-max"\napi_key_env = "BATCHRUN_TEST_KEY"'
        )
    )
    result = cli("validate", job, "--show", "2")
    assert result.exit_code == 0, result.stderr
    assert "40 rows read and checked" in result.stdout
    assert result.stdout.count("POST http://127.0.0.1:9/v1/chat/completions") == 2
    assert "authorization: ***" in result.stdout
    assert KEY not in result.stdout + result.stderr
    first = pl.read_ndjson(reviews)["title"][0]
    assert first in result.stdout
    assert not (job.parent / "out").exists()
    data = json.loads(cli("validate", job, "--json", "--show", "1").stdout)
    assert data["rows"] == 40
    assert data["requests"][0]["body"]["max_tokens"] == 16
    assert data["requests"][0]["headers"]["authorization"] == "***"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("[input]\n", '[input]\non_bad_row = "fail"\n'), "cannot be sent"),
        (("[limits]\n", "[limits]\nmax_cost_usd = 1\n"), "needs a price"),
        (("temperature = 0", "temperature = nan"), "temperature"),
        (("[provider]\n", '[provider]\napi_key_env = "BATCHRUN_UNSET_KEY"\n'), "BATCHRUN_UNSET_KEY"),
    ],
    ids=["bad row", "budget without price", "bad param", "missing key"],
)
def test_validate_exits_2_on_what_would_stop_a_run(
    write_job: WriteJob, reviews: Path, cli: Cli, change: tuple[str, str], message: str
) -> None:
    """A row with a null in a template column, a budget without a price, a param no provider takes and a
    missing key variable each exit 2 naming the problem, as a run would before sending."""
    pl.read_ndjson(reviews).with_columns(
        title=pl.when(pl.int_range(pl.len()) == 6).then(None).otherwise(pl.col("title"))
    ).write_ndjson(reviews)
    job = write_job("http://127.0.0.1:9/v1")
    text = job.read_text().replace('model = "qwen3-max"', 'model = "no-such-priced-model"')
    job.write_text(text.replace(*change, 1))
    result = cli("validate", job)
    assert result.exit_code == 2
    assert message in result.stderr


def test_status_counts_rows_and_names_the_last_run_after_a_run_and_a_rerun_plan(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """After a run of 25 of 40 rows with one failing for good, `status` counts 24 ok, 1 failed, 15 pending
    and quotes the last run's exit code; nothing runs."""
    frame = pl.read_ndjson(reviews)
    frame.with_columns(
        text=pl.when(pl.int_range(pl.len()) == 2).then(pl.lit("[[emulator:400]]")).otherwise("text")
    ).write_ndjson(reviews)
    server = emulator()
    job = write_job(server.base_url)
    assert cli("run", job, "--limit", "25").exit_code == 1
    result = cli("status", job)
    assert result.exit_code == 0
    assert "running:  no" in result.stdout
    assert "rows:     40: 24 ok, 1 failed, 15 pending" in result.stdout
    assert "exit 1 (failed)" in result.stdout
    data = json.loads(cli("status", job, "--json").stdout)
    assert (data["ok"], data["failed"], data["pending"], data["running"]) == (24, 1, 15, False)
    assert data["last_run"]["exit_code"] == 1


def test_status_sees_a_run_going_and_one_killed_without_touching_the_folder(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli, tmp_path: Path
) -> None:
    """While a run holds the folder, `status` names its pid and its latest counts from the timeline and
    changes nothing in the folder; after `kill -9`, it says the run ended without a summary."""
    server = emulator(latency_s=0.3)
    job = write_job(server.base_url, "")
    job.write_text(job.read_text().replace("concurrency = 8", "concurrency = 2"))
    run = subprocess.Popen(
        [sys.executable, "-m", "batchrun", "run", str(job), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    folder = run_folder(tmp_path / "out" / "test.parquet")
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (folder / "timeline.jsonl").is_file():
            time.sleep(0.1)
        while time.monotonic() < deadline and (folder / "timeline.jsonl").read_text().count('"t"') < 1:
            time.sleep(0.1)
        before = sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir() if p.name != "results.jsonl")
        result = cli("status", job)
        after = sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir() if p.name != "results.jsonl")
        assert f"running:  yes, pid {run.pid}" in result.stdout
        assert "progress: " in result.stdout
        assert [name for name, _ in before] == [name for name, _ in after]  # nothing added or removed
        assert running_pid(folder) == run.pid
    finally:
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=30)
    result = cli("status", job)
    assert "running:  no" in result.stdout
    assert "ended without a summary" in result.stdout
    assert running_pid(folder) is None
    with run_lock(tmp_path / "out" / "test.parquet"):  # the folder is free: a rerun may take it
        assert running_pid(folder) == os.getpid()


def test_estimate_fresh_counts_rows_an_earlier_run_answered(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """After 10 rows are answered, `estimate` leaves them out and `estimate --fresh` counts all 40."""
    server = emulator()
    job = write_job(server.base_url)
    assert cli("run", job, "--limit", "10", "--quiet").exit_code == 0
    plain = json.loads(cli("estimate", job, "--json").stdout)
    fresh = json.loads(cli("estimate", job, "--json", "--fresh").stdout)
    assert (plain["to_send"], plain["answered_by_earlier_run"]) == (30, 10)
    assert (fresh["to_send"], fresh["answered_by_earlier_run"]) == (40, 0)
    assert fresh["cost_usd"] > plain["cost_usd"]
