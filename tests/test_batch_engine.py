"""The Batch API engine end to end against the emulator's Batch APIs: the same output as live at the batch
price, rows sent again after expiry or past the deadline, never a second batch for one row after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchrun.emulator import EmulatorServer
from batchrun.emulator.batchconfig import BatchConfig
from batchrun.engines.batchlog import BatchLog
from batchrun.engines.run import run_job
from batchrun.errors import StopRun
from batchrun.job.loader import load_job
from batchrun.store.runstore import run_folder

Start = Callable[..., EmulatorServer]
WriteJob = Callable[..., Path]
BATCH = "\n[batch]\nenabled = true\npoll_interval_s = 0.05\n"


def openai_batches(server: EmulatorServer) -> dict[str, Any]:
    """The batches the emulator's `/v1/batches` holds, by id."""
    return server.emulator.batches.files.batches


def test_a_batch_run_writes_the_live_runs_output_at_the_batch_price(
    emulator: Start, write_job: WriteJob, reviews: Path, tmp_path: Path
) -> None:
    """Same rows, columns and completions as a live run; cost at half; every row tagged with its batch."""
    server = emulator()
    live = run_job(load_job(write_job(server.base_url, name="live.toml")))
    batch_job = write_job(server.base_url, BATCH, name="batch.toml")
    batched = run_job(load_job(batch_job, [f'output.path="{tmp_path / "batch.parquet"}"']))
    live_out = pl.read_parquet(live.output)
    batch_out = pl.read_parquet(batched.output)
    assert batch_out.columns == live_out.columns
    assert batch_out["completion"].to_list() == live_out["completion"].to_list()
    assert batch_out["cost_usd"].sum() == pytest.approx(live_out["cost_usd"].sum() / 2)
    assert live_out["batch_id"].null_count() == live_out.height
    (batch_id,) = batch_out["batch_id"].unique().to_list()
    assert batched.batches == ((batch_id, 40),)
    assert list(openai_batches(server)) == [batch_id]


def test_expired_rows_are_sent_again_in_the_next_batch(
    emulator: Start, write_job: WriteJob, reviews: Path
) -> None:
    """A batch that expires with part of its rows answered: the rest go in the next batch, within
    max_attempts; a row out of attempts is a `batch_expired` error a rerun sends again."""
    # Requests finish evenly over 0.4 s after 0.05 s of validation; the window ends at 0.35 s: three in
    # four rows of each batch are answered (and a lone row never is).
    server = emulator(batch=BatchConfig(in_progress_s=0.4, expire_after_s=0.35))
    summary = run_job(load_job(write_job(server.base_url, BATCH), ["limits.max_attempts=3"]))
    out = pl.read_parquet(summary.output)
    assert summary.ok + summary.failed == 40
    assert summary.ok >= 35
    assert out.filter(pl.col("status") == "ok")["attempts"].max() >= 2  # answered by a later batch
    assert len(openai_batches(server)) == 3
    failed = out.filter(pl.col("status") == "error")
    assert failed["error_type"].to_list() == ["batch_expired"] * failed.height
    assert failed["attempts"].to_list() == [3] * failed.height


def test_past_live_after_what_batches_still_hold_is_sent_live(
    emulator: Start, write_job: WriteJob, reviews: Path
) -> None:
    """A batch stuck in progress is cancelled at the deadline; its unanswered rows are answered live."""
    server = emulator(batch=BatchConfig(in_progress_s=60))
    job = write_job(server.base_url, BATCH + 'live_after = "1s"\n')
    summary = run_job(load_job(job))
    out = pl.read_parquet(summary.output)
    assert summary.ok == 40
    assert out["batch_id"].null_count() >= 30  # answered live (a few may have made it before the cancel)
    (batch,) = openai_batches(server).values()
    assert batch.job.cancel_at is not None  # cancelled at the deadline
    assert server.emulator.requests_by_status[200] >= 30  # the live route answered them


def test_wait_false_submits_and_stops_then_a_rerun_collects_without_a_second_batch(
    emulator: Start, write_job: WriteJob, reviews: Path
) -> None:
    """cron's night one: submit, exit 3 with the rows pending; night two: collect the same batch, exit 0."""
    server = emulator(batch=BatchConfig(in_progress_s=0.5))
    job = write_job(server.base_url, BATCH + "wait = false\n")
    with pytest.raises(StopRun) as stopped:
        run_job(load_job(job))
    assert "40 rows pending in batches" in str(stopped.value)
    assert stopped.value.exit_code == 3
    assert pl.read_parquet(load_job(job).output_path)["status"].to_list() == ["pending"] * 40
    time.sleep(0.7)  # the batch finishes meanwhile
    summary = run_job(load_job(job, ["batch.wait=true"]))
    assert summary.ok == 40
    assert summary.sent == 0  # nothing sent again: the first night's batch answered every row
    assert len(openai_batches(server)) == 1


def test_a_crash_between_create_and_record_finds_the_batch_again(
    emulator: Start, write_job: WriteJob, reviews: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch was created but its id never written down: the rerun finds it by its tag, not a new one."""
    server = emulator(batch=BatchConfig(in_progress_s=0.2))
    job = write_job(server.base_url, BATCH)

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("killed between create and record")

    monkeypatch.setattr(BatchLog, "submitted", crash)
    with pytest.raises(Exception) as crashed:  # noqa: PT011 (task groups wrap it in an ExceptionGroup)
        run_job(load_job(job))
    assert "killed between create and record" in repr(crashed.value.exceptions[0])
    monkeypatch.undo()
    assert len(openai_batches(server)) == 1
    summary = run_job(load_job(job))
    assert summary.ok == 40
    assert len(openai_batches(server)) == 1
    (batch_id,) = pl.read_parquet(summary.output)["batch_id"].unique().to_list()
    assert batch_id == next(iter(openai_batches(server)))


def test_kill_9_while_waiting_then_the_same_command_reattaches(
    emulator: Start, write_job: WriteJob, reviews: Path, tmp_path: Path
) -> None:
    """`kill -9` of a run waiting on its batch; the rerun polls that batch and collects it, sends nothing."""
    server = emulator(batch=BatchConfig(in_progress_s=1.5))
    job = write_job(server.base_url, BATCH)
    journal = run_folder(load_job(job).output_path) / "batches.jsonl"
    command = [sys.executable, "-m", "batchrun", "run", str(job), "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while b'"submitted"' not in (journal.read_bytes() if journal.is_file() else b""):
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the run never recorded its batch"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=10)
    assert len(openai_batches(server)) == 1
    summary = run_job(load_job(job))
    assert summary.ok == 40
    assert summary.sent == 0
    assert len(openai_batches(server)) == 1


def test_a_file_the_provider_refuses_fails_its_rows(
    emulator: Start, write_job: WriteJob, reviews: Path
) -> None:
    """A model the Batch API does not take (DashScope's regions): the batch fails and its rows are errors."""
    server = emulator(batch=BatchConfig(models=("qwen-max",)))
    summary = run_job(load_job(write_job(server.base_url, BATCH)))
    assert summary.failed == 40
    assert summary.errors == {"batch_refused": 40}
    out = pl.read_parquet(summary.output)
    assert "qwen3-max" in out["error"][0]
    assert out["batch_id"].null_count() == 0


def test_a_sweep_makes_files_per_model_within_the_request_limit(
    emulator: Start, write_job: WriteJob, reviews: Path
) -> None:
    """Two models and 15 requests a file: three files a model, each of one model, every row answered."""
    server = emulator()
    extra = BATCH + 'max_requests_per_file = 15\n[matrix]\nmodel = ["qwen3-max", "qwen-max"]\n'
    summary = run_job(load_job(write_job(server.base_url, extra)))
    assert summary.ok == 80
    batches = openai_batches(server).values()
    assert sorted(batch.model for batch in batches) == ["qwen-max"] * 3 + ["qwen3-max"] * 3
    assert sorted(batch.job.total for batch in batches) == [10, 10, 15, 15, 15, 15]


def test_anthropic_jobs_go_through_message_batches(
    emulator: Start, write_job: WriteJob, reviews: Path
) -> None:
    """kind = "anthropic": one message batch, the same answers as the Messages API gives live."""
    server = emulator()
    job = write_job(server.root_url, BATCH)
    job.write_text(job.read_text().replace('kind = "openai"', 'kind = "anthropic"'))
    summary = run_job(load_job(job))
    assert summary.ok == 40
    assert len(server.emulator.batches.messages.batches) == 1
    assert pl.read_parquet(summary.output)["batch_id"].str.starts_with("msgbatch_").all()


def test_the_budget_holds_at_the_batch_price(emulator: Start, write_job: WriteJob, reviews: Path) -> None:
    """max_cost_usd reserves each row's worst case at the batch price: what fits is sent, the run stops."""
    server = emulator()
    job = write_job(server.base_url, BATCH + "[pricing]\ninput = 1000\noutput = 1000\n")
    with pytest.raises(StopRun, match="Budget reached") as stopped:
        run_job(load_job(job, ["limits.max_cost_usd=0.5"]))
    summary = stopped.value.summary
    assert summary is not None
    assert 0 < summary.ok < 40
    assert summary.cost_usd is not None
    assert summary.cost_usd <= 0.5


def test_cancel_cancels_the_batches_a_stopped_run_left(
    emulator: Start, write_job: WriteJob, reviews: Path, cli: Callable[..., Any]
) -> None:
    """`batchrun cancel JOB` cancels what `wait = false` left running; the rows stay pending."""
    server = emulator(batch=BatchConfig(in_progress_s=60))
    job = write_job(server.base_url, BATCH + "wait = false\n")
    assert cli("run", job, "--quiet").exit_code == 3
    result = cli("cancel", job)
    assert result.exit_code == 0
    (batch_id,) = openai_batches(server)
    assert result.stdout.strip() in (f"{batch_id}: cancelling", f"{batch_id}: cancelled")


def test_a_row_twice_goes_once(emulator: Start, write_job: WriteJob, reviews: Path) -> None:
    """Two identical rows (same id, same text) make one request in the file, and both get its answer."""
    rows = pl.read_ndjson(reviews)
    pl.concat([rows, rows.head(1)]).write_ndjson(reviews)
    server = emulator()
    summary = run_job(load_job(write_job(server.base_url, BATCH)))
    assert summary.ok == 41
    (batch,) = openai_batches(server).values()
    assert batch.job.total == 40


def test_ctrl_c_stops_waiting_and_says_the_batches_keep_running(
    emulator: Start, write_job: WriteJob, reviews: Path
) -> None:
    """Ctrl+C while waiting: exit 3 at once, naming the batch still running and how to cancel it."""
    server = emulator(batch=BatchConfig(in_progress_s=60))
    job = write_job(server.base_url, BATCH)
    journal = run_folder(load_job(job).output_path) / "batches.jsonl"
    command = [sys.executable, "-m", "batchrun", "run", str(job), "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while '"submitted"' not in (journal.read_text() if journal.is_file() else ""):
            assert process.poll() is None
            assert time.monotonic() < deadline, "the run never recorded its batch"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 3
    (batch_id,) = openai_batches(server)
    assert f"40 rows are in batches still running at the provider ({batch_id})" in stderr
    assert "batchrun cancel" in stderr
    assert "Traceback" not in stderr


def test_status_names_the_batches_a_run_left_waiting(
    emulator: Start, write_job: WriteJob, reviews: Path, cli: Callable[..., Any]
) -> None:
    """`batchrun status JOB` after a `wait = false` run lists its batch, with its rows and model."""
    server = emulator(batch=BatchConfig(in_progress_s=60))
    job = write_job(server.base_url, BATCH + "wait = false\n")
    assert cli("run", job, "--quiet").exit_code == 3
    result = cli("status", job)
    (batch_id,) = openai_batches(server)
    assert f"{batch_id}: 40 rows of qwen3-max" in result.stdout
