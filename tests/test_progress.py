"""Progress while a run goes (log lines, the live display, snapshots), --quiet, and the run's log file."""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import logging
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from rich.console import Console

from batchrun.emulator import EmulatorServer
from batchrun.engines.run import run_job
from batchrun.job.loader import load_job
from batchrun.report import runlog
from batchrun.report.progress import LiveDisplay, Snapshot, binding, describe, eta_s, limiter_state
from batchrun.report.timeline import timeline_path
from batchrun.store.runstore import run_folder
from tests.conftest import CliResult

Cli = Callable[..., CliResult]
StartEmulator = Callable[..., EmulatorServer]
WriteJob = Callable[..., Path]

KEY_ENV = "BATCHRUN_TEST_KEY"
FAKE_KEY = "sk-fake-RECOGNISABLE-4242"


def with_key_env(job: Path) -> Path:
    """The test job, reading its key from KEY_ENV."""
    text = job.read_text().replace('model = "qwen3-max"', f'model = "qwen3-max"\napi_key_env = "{KEY_ENV}"')
    job.write_text(text)
    return job


class Recorder:
    """An observer that keeps every snapshot it is shown."""

    interval_s = 0.01

    def __init__(self) -> None:
        self.seen: list[tuple[Snapshot, int | None]] = []

    def update(self, snap: Snapshot, total: int | None) -> None:
        """Keep it."""
        self.seen.append((snap, total))


def test_snapshots_follow_the_runners_counters_to_the_final_totals(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path
) -> None:
    """An observer sees growing counts, the input's row total, and at the end the output's tokens and cost."""
    server = emulator(latency_s=0.01)
    job = load_job(write_job(server.base_url), ["limits.concurrency=2"])
    recorder = Recorder()
    summary = run_job(job, observers=[recorder])
    assert len(recorder.seen) >= 2
    done = [snap.done for snap, _ in recorder.seen]
    assert done == sorted(done)
    final, total = recorder.seen[-1]
    assert total == 40
    assert (final.ok, final.failed, final.in_flight, final.sent) == (40, 0, 0, 40)
    out = pl.read_parquet(job.output_path)
    assert final.prompt_tokens == out["prompt_tokens"].sum() == summary.prompt_tokens
    assert final.completion_tokens == out["completion_tokens"].sum()
    assert final.cost_usd == pytest.approx(out["cost_usd"].sum())
    assert final.concurrency is not None  # no rate configured: the adaptive window is shown
    assert final.max_concurrency == 2


def test_progress_phrases_name_rate_eta_tokens_cost_limiter_and_errors() -> None:
    """A snapshot reads as rows of total, rate, elapsed time, ETA, tokens, cost, in flight and waiting, the
    limiter state led by what binds, retries and errors by type."""
    snap = Snapshot(
        elapsed_s=10.0, ok=350, failed=40, reused=10, sent=500, in_flight=7, prompt_tokens=1_500_000,
        completion_tokens=2_500, cost_usd=1.25, errors={"rate_limited": 30, "server_error": 10},
        cooldown_s=2.5, concurrency=12, max_concurrency=64, pace_per_s=48.0, down_s=31.0, waiting=5,
        binding="cooldown", retries={"rate_limited": 70, "timeout": 2},
    )  # fmt: skip
    assert eta_s(snap, 1000, 50.0) == pytest.approx(12.0)
    assert eta_s(snap, None, 50.0) is None
    text = "; ".join(describe(snap, 1000, 50.0))
    assert text == (
        "400/1,000 rows (40%); 50.0 rows/s; elapsed 0:10; ETA 0:12; tokens 1.5M in, 2.5k out; $1.2500; "
        "7 in flight, 5 waiting, 500 sent; bound by cooldown, concurrency 12/64 (adaptive), pace 48.0/s, "
        "cooling down 2.5 s, provider down 31 s; retried rate_limited 70, timeout 2; "
        "errors rate_limited 30, server_error 10"
    )


def test_a_full_fixed_concurrency_is_named_as_what_binds() -> None:
    """With nothing held in the limiter, every slot of a fixed concurrency taken reads as bound by it."""
    full = Snapshot(
        elapsed_s=1.0, ok=0, failed=0, reused=0, sent=8, in_flight=8, prompt_tokens=0, completion_tokens=0,
        cost_usd=0.0, max_concurrency=8,
    )  # fmt: skip
    assert binding(full) == "concurrency"
    assert binding(dataclasses.replace(full, in_flight=5)) is None
    assert binding(dataclasses.replace(full, in_flight=5, binding="rpm")) == "rpm"
    assert limiter_state(full).startswith("bound by concurrency, concurrency 8")


def test_live_display_draws_the_state_on_a_terminal() -> None:
    """On a terminal the live display shows rows, elapsed time, requests in flight apart from those waiting,
    the limiter's binding limit and cooldown, retries and errors by type."""
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=True, width=120)
    snap = Snapshot(
        elapsed_s=75.0, ok=30, failed=2, reused=0, sent=40, in_flight=3, prompt_tokens=900,
        completion_tokens=60, cost_usd=0.01, errors={"rate_limited": 2}, cooldown_s=1.0, max_concurrency=8,
        waiting=5, binding="cooldown", retries={"rate_limited": 6},
    )  # fmt: skip
    with LiveDisplay(console) as display:
        display.update(snap, 100)
    drawn = stream.getvalue()
    assert "32/100 rows (32%)" in drawn
    assert "elapsed 1:15" in drawn
    assert "3 in flight, 5 waiting, 40 sent" in drawn
    assert "limiter: bound by cooldown" in drawn
    assert "cooling down 1.0 s" in drawn
    assert "retried rate_limited 6" in drawn
    assert "errors rate_limited 2" in drawn


def test_retried_attempts_are_counted_and_written_to_the_timeline(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path
) -> None:
    """429s that are retried are counted by type in the snapshots and in the run folder's timeline, whose
    last line holds the run's final counts."""
    server = emulator(rate_429=0.2, seed=3)
    job = load_job(write_job(server.base_url), ["limits.max_attempts=12"])
    recorder = Recorder()
    summary = run_job(job, observers=[recorder])
    assert summary.ok == 40
    final, _ = recorder.seen[-1]
    assert final.retries.get("rate_limited", 0) == final.sent - 40 > 0  # every extra attempt was a 429
    lines = [json.loads(line) for line in timeline_path(run_folder(job.output_path)).read_text().splitlines()]
    assert set(lines[0]) == {"start", "pid"}
    assert lines[-1]["sent"] == final.sent
    assert lines[-1]["retries"] == final.retries
    assert lines[-1]["ok"] == 40
    assert all(later["t"] >= earlier["t"] for earlier, later in itertools.pairwise(lines[1:]))


def test_progress_lines_appear_when_stderr_is_not_a_terminal(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """Off a terminal, `progress:` lines come every --progress-interval on stderr and in the log file."""
    server = emulator(latency_s=0.03)
    job = write_job(server.base_url)
    result = cli("run", job, "--set", "limits.concurrency=2", "--progress-interval", "0.05")
    assert result.exit_code == 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("batchrun: progress: ")]
    assert len(lines) >= 2
    assert lines[-1].startswith("batchrun: progress: 40/40 rows (100%)")
    assert "40 ok, 0 failed" in result.stdout
    assert "progress:" not in result.stdout
    log = (job.parent / "out" / "test.log").read_text()
    assert log.count(" progress: ") == len(lines)


def test_quiet_prints_only_the_summary(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """`--quiet` writes nothing to stderr on a good run, yet prints the summary and logs to the file."""
    server = emulator(latency_s=0.01)
    job = write_job(server.base_url)
    result = cli("run", job, "--quiet", "--progress-interval", "0.02", "--json")
    assert result.exit_code == 0
    assert result.stderr == ""
    assert json.loads(result.stdout)["ok"] == 40
    log = (job.parent / "out" / "test.log").read_text()
    assert " progress: 40/40 rows" in log


def test_quiet_still_prints_errors(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """`--quiet` keeps the message of a run that stops (bad key, exit 3) on stderr."""
    server = emulator(api_key="the-right-key")
    job = with_key_env(write_job(server.base_url))
    result = cli("run", job, "--quiet", env={KEY_ENV: FAKE_KEY})
    assert result.exit_code == 3
    assert KEY_ENV in result.stderr
    assert "progress:" not in result.stderr
    assert result.stdout == ""


def test_log_file_records_the_run_and_never_the_key(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """out/test.log gets start, end and exit status of a stopped run and a good one, and never the key."""
    server = emulator(api_key=FAKE_KEY)
    job = with_key_env(write_job(server.base_url))
    stopped = cli("run", job, env={KEY_ENV: "sk-wrong-RECOGNISABLE-1313"})
    assert stopped.exit_code == 3
    stopped_summary = json.loads((job.parent / "out" / "test.summary.json").read_text())
    assert (stopped_summary["status"], stopped_summary["exit_code"]) == ("stopped", 3)
    assert KEY_ENV in stopped_summary["message"]
    good = cli("run", job, "--progress-interval", "0.01", env={KEY_ENV: FAKE_KEY})
    assert good.exit_code == 0
    log = (job.parent / "out" / "test.log").read_text()
    assert log.count(" start: job test ") == 2
    assert "end: exit 3 (stopped early; a rerun resumes)" in log
    assert "end: exit 0 (every row ok): 40 rows, 40 ok, 0 failed" in log
    assert KEY_ENV in log
    assert "RECOGNISABLE" not in log
    assert "RECOGNISABLE" not in good.stderr + stopped.stderr
    assert json.loads((job.parent / "out" / "test.summary.json").read_text())["status"] == "ok"


def test_log_file_redacts_the_key_should_a_message_hold_it(tmp_path: Path) -> None:
    """A log line that somehow carries the key is written with `***` in its place."""
    path = tmp_path / "run.log"
    with runlog.file_logging(path, secret=FAKE_KEY):
        logging.getLogger("batchrun").warning("header was Bearer %s", FAKE_KEY)
    text = path.read_text()
    assert "header was Bearer ***" in text
    assert FAKE_KEY not in text


def test_a_bad_input_writes_an_error_summary_and_exit_2(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """A run refused before sending (key variable unset) leaves summary.json and the log saying why."""
    server = emulator()
    job = with_key_env(write_job(server.base_url))
    result = cli("run", job, env={KEY_ENV: ""})
    assert result.exit_code == 2
    summary = json.loads((job.parent / "out" / "test.summary.json").read_text())
    assert (summary["status"], summary["exit_code"]) == ("error", 2)
    assert KEY_ENV in summary["message"]
    assert "end: exit 2 (bad job file, input or flags)" in (job.parent / "out" / "test.log").read_text()


def test_with_a_live_display_log_lines_print_through_it_and_progress_lines_go_to_the_file_only(
    tmp_path: Path,
) -> None:
    """Under a live display a warning still reaches stderr; `progress:` lines reach only the log file."""
    stream = io.StringIO()
    path = tmp_path / "run.log"
    with runlog.stderr_logging(stream, quiet=False) as stderr, runlog.file_logging(path, secret=None):
        with runlog.progress(stderr, stream, quiet=False, interval_s=1.0, live=True) as observers:
            assert [type(o).__name__ for o in observers] == ["LiveDisplay", "LogLines"]
            logging.getLogger("batchrun").warning("provider answering again")
            logging.getLogger("batchrun.report.progress").info("progress: 1/2 rows")
        logging.getLogger("batchrun").info("after the display")
    shown, logged = stream.getvalue(), path.read_text()
    assert "batchrun: provider answering again" in shown
    assert "progress: 1/2 rows" not in shown
    assert "batchrun: after the display" in shown
    assert "progress: 1/2 rows" in logged
    assert "provider answering again" in logged


def test_a_log_file_that_cannot_be_written_is_a_warning_not_a_failure(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """When out/test.log cannot be opened (here it is a folder), the run warns and finishes all the same."""
    server = emulator()
    job = write_job(server.base_url)
    (job.parent / "out" / "test.log").mkdir(parents=True)
    result = cli("run", job)
    assert result.exit_code == 0
    assert "cannot write the log file" in result.stderr
    assert "40 ok, 0 failed" in result.stdout
