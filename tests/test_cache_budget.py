"""The response cache shared across jobs, and the `max_cost_usd` budget, through the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import polars as pl

from batchrun.emulator import EmulatorServer
from tests.conftest import CliResult

Cli = Callable[..., CliResult]
StartEmulator = Callable[..., EmulatorServer]
WriteJob = Callable[..., Path]


def answered(server: EmulatorServer) -> int:
    """How many requests the emulator has answered with a 200."""
    return sum(server.emulator.answered.values())


def test_cache_is_shared_across_jobs_and_marks_rows(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli, tmp_path: Path
) -> None:
    """A second job with the same requests sends none: rows come from the cache, marked, at no cost."""
    server = emulator()
    job = write_job(server.base_url, f'\n[cache]\nenabled = true\npath = "{tmp_path / "cache"}"\n')
    assert cli("run", job).exit_code == 0
    first = pl.read_parquet(tmp_path / "out" / "test.parquet")
    assert not first["cached"].any()

    result = cli("run", job, "--output", tmp_path / "other.parquet")
    assert result.exit_code == 0
    assert answered(server) == 40
    second = pl.read_parquet(tmp_path / "other.parquet")
    assert second["cached"].all()
    assert second["cost_usd"].to_list() == [0.0] * 40
    assert second["completion"].to_list() == first["completion"].to_list()
    assert second["prompt_tokens"].to_list() == first["prompt_tokens"].to_list()
    assert "40 from the cache" in result.stdout


def test_sweep_with_one_variant_changed_sends_only_that_variant(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli, tmp_path: Path
) -> None:
    """Changing a parameter misses the cache; going back to the first value hits it again."""
    server = emulator()
    job = write_job(server.base_url, f'\n[cache]\nenabled = true\npath = "{tmp_path / "cache"}"\n')
    assert cli("run", job, "--output", tmp_path / "t0.parquet").exit_code == 0
    assert (
        cli("run", job, "--output", tmp_path / "t7.parquet", "--set", "params.temperature=0.7").exit_code == 0
    )
    assert answered(server) == 80
    assert cli("run", job, "--output", tmp_path / "t0-again.parquet").exit_code == 0
    assert answered(server) == 80


def test_errors_are_never_cached(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli, tmp_path: Path
) -> None:
    """A row that failed with a 400 is sent again by the next job; its answer is not taken from the cache."""
    frame = pl.read_ndjson(reviews)
    first_row = pl.col("id") == frame["id"][0]
    frame.with_columns(
        text=pl.when(first_row).then(pl.lit("[[emulator:400]]")).otherwise("text")
    ).write_ndjson(reviews)
    server = emulator()
    job = write_job(server.base_url, f'\n[cache]\nenabled = true\npath = "{tmp_path / "cache"}"\n')
    assert cli("run", job).exit_code == 1
    assert cli("run", job, "--output", tmp_path / "again.parquet").exit_code == 1
    assert server.emulator.requests_by_status[400] == 2
    again = pl.read_parquet(tmp_path / "again.parquet")
    assert again["cached"].sum() == 39
    assert again.row(0, named=True)["status"] == "error"


def test_budget_stops_sending_saves_and_resumes(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli, tmp_path: Path
) -> None:
    """With max_cost_usd the run stops before passing the cap, exits 3; a larger cap finishes the rest."""
    server = emulator()
    # At $1,000 per 1M tokens a request costs about $0.1, so a $1 cap allows about ten of the forty rows.
    job = write_job(server.base_url, "\n[pricing]\ninput = 1000\noutput = 1000\n")
    result = cli("run", job, "--set", "limits.max_cost_usd=1.0", "--set", "limits.concurrency=2")
    assert result.exit_code == 3
    assert "Budget reached" in result.stderr
    assert "max_cost_usd" in result.stderr
    journal = tmp_path / "out" / "test.parquet.run" / "results.jsonl"
    spent = sum(json.loads(line)["cost_usd"] for line in journal.read_text().splitlines())
    assert 0.5 < spent <= 1.0
    sent_first = answered(server)
    assert 5 <= sent_first < 40

    resumed = cli("run", job, "--set", "limits.max_cost_usd=100")
    assert resumed.exit_code == 0
    assert answered(server) == 40
    assert max(server.emulator.answered.values()) == 1


def test_budget_without_a_price_is_refused_before_sending(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """A cap on a model with no known price exits 2 asking for [pricing]; nothing is sent."""
    server = emulator()
    job = write_job(server.base_url)
    result = cli("run", job, "--set", "limits.max_cost_usd=1", "--set", "provider.model=unpriced-model")
    assert result.exit_code == 2
    assert "[pricing]" in result.stderr
    assert answered(server) == 0
