"""Crashes and interrupts: a real `batchrun` process killed or interrupted mid-run, then resumed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl

from batchrun.emulator import EmulatorServer
from tests.conftest import CliResult

Cli = Callable[..., CliResult]
StartEmulator = Callable[..., EmulatorServer]
WriteJob = Callable[..., Path]


def start_run(job: Path, *args: str) -> subprocess.Popen[bytes]:
    """Start `batchrun run JOB` as its own process, as cron would."""
    return subprocess.Popen(
        [sys.executable, "-m", "batchrun", "run", str(job), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def journal_lines(job: Path) -> int:
    """How many results the run of the test job has journaled so far."""
    journal = job.parent / "out" / "test.parquet.run" / "results.jsonl"
    return journal.read_bytes().count(b"\n") if journal.exists() else 0


def wait_for_journal(job: Path, lines: int, process: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    """Wait (bounded) until the journal holds `lines` results."""
    deadline = time.monotonic() + timeout_s
    while journal_lines(job) < lines:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"journal stuck at {journal_lines(job)} of {lines} lines"
        time.sleep(0.05)


def test_kill_9_mid_run_then_resume_answers_every_row_exactly_once(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """After SIGKILL, a rerun sends only the rows never answered: no request is answered twice."""
    first = emulator(hold_after=25)  # answers 25 requests, then hangs: the kill lands mid-run
    job = write_job(first.base_url, "")
    process = start_run(job)
    try:
        wait_for_journal(job, 25, process)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        process.kill()
    assert not (job.parent / "out" / "test.parquet").exists()

    second = emulator()
    result = cli("run", job, "--set", f"provider.base_url={second.base_url}")
    assert result.exit_code == 0, result.stderr
    answered_first, answered_second = first.emulator.answered, second.emulator.answered
    assert sum(answered_first.values()) == 25
    assert sum(answered_second.values()) == 15
    assert not set(answered_first) & set(answered_second)
    out = pl.read_parquet(job.parent / "out" / "test.parquet")
    assert out["id"].to_list() == pl.read_ndjson(reviews)["id"].to_list()
    assert out["status"].to_list() == ["ok"] * 40


def test_sigint_finishes_requests_in_flight_saves_them_and_exits_3(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """Ctrl+C stops taking rows, journals every answer already paid for, says how to resume, exits 3."""
    server = emulator(latency_s=0.3)
    job = write_job(server.base_url, "")
    process = start_run(job, "--set", "limits.concurrency=4")
    wait_for_journal(job, 8, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 3, stderr.decode()
    assert b"rerun" in stderr
    answered = sum(server.emulator.answered.values())
    assert answered < 40
    assert journal_lines(job) == answered  # the requests in flight at Ctrl+C were saved too

    result = cli("run", job)
    assert result.exit_code == 0
    assert sum(server.emulator.answered.values()) == 40
    assert max(server.emulator.answered.values()) == 1


def test_second_sigint_stops_at_once_without_corrupting_the_journal(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """Two Ctrl+C with requests hanging: the run stops within seconds and a rerun still completes."""
    first = emulator(hold_after=10)
    job = write_job(first.base_url, "")
    process = start_run(job)
    wait_for_journal(job, 10, process)
    process.send_signal(signal.SIGINT)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 3, stderr.decode()
    assert journal_lines(job) == 10

    second = emulator()
    result = cli("run", job, "--set", f"provider.base_url={second.base_url}")
    assert result.exit_code == 0
    assert sum(second.emulator.answered.values()) == 30
