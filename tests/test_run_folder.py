"""The run folder against neighbours and accidents: a second run at once, leftovers of a kill, a corrupt
journal line, folder names that look like Hive partitions, a stopped run's output and `--limit`."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import polars as pl

from batchrun.emulator import EmulatorServer
from tests.conftest import CliResult
from tests.test_durability import start_run, wait_for_journal

Cli = Callable[..., CliResult]
StartEmulator = Callable[..., EmulatorServer]
WriteJob = Callable[..., Path]


def _journal(job: Path) -> Path:
    return job.parent / "out" / "test.parquet.run" / "results.jsonl"


def test_a_second_run_of_a_running_job_exits_2_naming_the_holder_and_sends_nothing(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """While one process runs a job, another run of it exits 2 at once naming the pid; a kill -9 frees it."""
    first_server = emulator(hold_after=5)  # answers 5 requests, then holds the rest: the first run stays up
    job = write_job(first_server.base_url)
    first = start_run(job)
    try:
        wait_for_journal(job, 5, first)
        second_server = emulator()
        second = cli("run", job, "--set", f"provider.base_url={second_server.base_url}")
        assert second.exit_code == 2
        assert f"pid {first.pid}" in second.stderr
        assert "test.parquet.run" in second.stderr
        assert sum(second_server.emulator.requests_by_status.values()) == 0
        assert _journal(job).read_bytes().count(b"\n") == 5  # the first run's journal untouched
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    # The kernel dropped the lock with the process: no stale lock, and the rerun resumes.
    third = cli("run", job, "--set", f"provider.base_url={second_server.base_url}")
    assert third.exit_code == 0, third.stderr
    assert sum(second_server.emulator.answered.values()) == 35


def test_leftovers_of_a_killed_run_are_cleared_and_the_rerun_works(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """A half-written input part and an unfinished output rename (kill -9 mid-write) do not break a rerun."""
    server = emulator()
    job = write_job(server.base_url)
    run_dir = job.parent / "out" / "test.parquet.run"
    run_dir.mkdir(parents=True)
    (run_dir / "input-000001.parquet.tmp").write_bytes(b"PAR1 half")
    leftover = job.parent / "out" / ".test.parquet.4242.tmp"
    leftover.write_bytes(b"PAR1 half")

    result = cli("run", job, "--quiet")

    assert result.exit_code == 0, result.stderr
    assert not leftover.exists()
    assert not list(run_dir.glob("*.tmp"))
    assert pl.read_parquet(job.parent / "out" / "test.parquet").height == 40


def test_a_corrupt_journal_line_is_skipped_with_a_warning_and_its_row_is_sent_again(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """A garbled line mid-journal: a warning naming it, that row resent, every other row reused."""
    server = emulator()
    job = write_job(server.base_url)
    assert cli("run", job, "--quiet").exit_code == 0
    journal = _journal(job)
    lines = journal.read_bytes().splitlines(keepends=True)
    lines[9] = lines[9][:40].replace(b'"', b"#") + b"\x00\xff garbage\n"
    journal.write_bytes(b"".join(lines))

    again = cli("run", job)

    assert again.exit_code == 0, again.stderr
    assert "line 10 is not a readable result" in again.stderr
    assert sum(server.emulator.answered.values()) == 41  # 40, then the one row whose line was lost
    assert pl.read_parquet(job.parent / "out" / "test.parquet")["status"].to_list() == ["ok"] * 40


def test_estimate_reads_a_journal_whose_last_line_was_cut_short(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """`estimate` skips a torn last line, as `run` does, instead of crashing."""
    server = emulator()
    job = write_job(server.base_url)
    assert cli("run", job, "--limit", "10", "--quiet").exit_code == 0
    with _journal(job).open("ab") as journal:
        journal.write(b'{"custom_id": "abc", "status": "o')

    result = cli("estimate", job, "--json")

    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["rows"], data["answered_by_earlier_run"], data["to_send"]) == (40, 10, 30)


def test_folder_names_like_hive_partitions_never_become_columns(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """`model=x` and `date=y` in the output's path leave the output's `model` and the input's `date` alone."""
    server = emulator()
    job = write_job(server.base_url)
    output = job.parent / "out" / "model=not-a-model" / "date=2020-01-01" / "x.parquet"

    result = cli("run", job, "--output", output, "--json")

    assert result.exit_code == 0, result.stderr
    out = pl.read_parquet(output, hive_partitioning=False)
    assert set(out["model"]) == {"qwen3-max"}
    assert out["date"].to_list() == pl.read_ndjson(reviews)["date"].to_list()
    assert [m["model"] for m in json.loads(result.stdout)["by_model"]] == ["qwen3-max"]
    report = cli("report", output, "--json")
    assert [m["model"] for m in json.loads(report.stdout)["by_model"]] == ["qwen3-max"]


def test_a_split_sweep_named_after_its_variants_keeps_each_model(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """`{variant}` output files (`model=qwen-max.parquet`) hold the model each variant was answered by."""
    server = emulator()
    job = write_job(server.base_url, '\n[matrix]\nmodel = ["qwen3-max", "qwen-max"]\n')
    job.write_text(job.read_text().replace('path = "out/{job}.parquet"', 'path = "split/{variant}.parquet"'))

    result = cli("run", job, "--limit", "5", "--json")

    assert result.exit_code == 0, result.stderr
    for model in ("qwen3-max", "qwen-max"):
        out = pl.read_parquet(job.parent / "split" / f"model={model}.parquet")
        assert (out.height, set(out["model"])) == (5, {model})


def test_an_interrupted_run_writes_every_row_with_the_rest_pending(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """Ctrl+C: the output holds every input row, the unanswered ones pending; the summary counts them."""
    server = emulator(latency_s=0.3)
    job = write_job(server.base_url)
    process = start_run(job, "--set", "limits.concurrency=2")
    wait_for_journal(job, 4, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 3, stderr.decode()

    out = pl.read_parquet(job.parent / "out" / "test.parquet")
    answered = sum(server.emulator.answered.values())
    assert out["id"].to_list() == pl.read_ndjson(reviews)["id"].to_list()
    assert out["status"].value_counts().sort("status").rows() == [
        ("ok", answered),
        ("pending", 40 - answered),
    ]
    assert out.filter(pl.col("status") == "pending")["completion"].null_count() == 40 - answered
    summary = json.loads((job.parent / "out" / "test.summary.json").read_text())
    assert (summary["status"], summary["exit_code"]) == ("stopped", 3)
    assert (summary["ok"], summary["failed"], summary["pending"]) == (answered, 0, 40 - answered)
    assert summary["cost_usd"] > 0
    assert "Interrupted" in summary["message"]
    page = job.parent / "report.html"
    assert cli("report", job.parent / "out" / "test.parquet", "--html", page).exit_code == 3
    assert f"{40 - answered:,} pending" in page.read_text()


def test_limit_over_a_larger_finished_run_says_what_the_output_leaves_out(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """`--limit 5` after a full run: the summary says the output holds 5 of 40 answers; nothing is resent."""
    server = emulator()
    job = write_job(server.base_url)
    assert cli("run", job, "--quiet").exit_code == 0

    limited = cli("run", job, "--limit", "5", "--json")

    assert limited.exit_code == 0
    note = "output holds 5 of 40 answered rows; rerun without --limit to write all; nothing is resent"
    assert json.loads(limited.stdout)["note"] == note
    assert sum(server.emulator.answered.values()) == 40
    full = cli("run", job)
    assert "note:" not in full.stdout
    assert pl.read_parquet(job.parent / "out" / "test.parquet").height == 40


def test_a_sweep_stopped_by_its_budget_writes_every_row_of_every_variant(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """The budget stops a two-variant sweep: 80 rows in variant order, the unsent ones pending in both."""
    server = emulator()
    extra = '\n[pricing]\ninput = 1000\noutput = 1000\n\n[matrix]\nmodel = ["qwen3-max", "qwen-max"]\n'
    job = write_job(server.base_url, extra)

    result = cli("run", job, "--set", "limits.max_cost_usd=1.0", "--set", "limits.concurrency=2")

    assert result.exit_code == 3, result.stderr
    out = pl.read_parquet(job.parent / "out" / "test.parquet")
    ids = pl.read_ndjson(reviews)["id"].to_list()
    assert out["id"].to_list() == ids + ids
    assert out["variant"].to_list() == ["model=qwen3-max"] * 40 + ["model=qwen-max"] * 40
    answered = sum(server.emulator.answered.values())
    assert out["status"].value_counts().sort("status").rows() == [
        ("ok", answered),
        ("pending", 80 - answered),
    ]
    summary = json.loads((job.parent / "out" / "test.summary.json").read_text())
    assert [v["pending"] for v in summary["variants"]] == [
        out.filter((pl.col("variant") == v) & (pl.col("status") == "pending")).height
        for v in ("model=qwen3-max", "model=qwen-max")
    ]
