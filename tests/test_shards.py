"""Shards (`run --shard I/N`) and `merge`: N independent runs whose outputs join into the one output."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from batchrun.emulator import EmulatorServer
from batchrun.errors import UsageError
from batchrun.job.loader import load_job
from batchrun.job.shards import Shard, parse_shard, shard_job, shard_of
from tests.conftest import CliResult

Cli = Callable[..., CliResult]
StartEmulator = Callable[..., EmulatorServer]
WriteJob = Callable[..., Path]

TIMING = ["latency_s"]  # the one column that differs from run to run


def run_shards(cli: Cli, job: Path, count: int, *args: str) -> None:
    """Run every shard of `job` (as N scheduled jobs would), each to exit 0."""
    for index in range(count):
        result = cli("run", job, "--shard", f"{index}/{count}", "--quiet", *args)
        assert result.exit_code == 0, result.stderr


def test_shards_then_merge_give_the_single_runs_output_row_for_row(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """Three shards split the rows between them, and their merge equals one run of the whole job."""
    server = emulator()
    job = write_job(server.base_url)
    run_shards(cli, job, 3)
    out = job.parent / "out"
    sizes = [pl.read_parquet(out / f"test.shard-{i}-of-3.parquet").height for i in range(3)]
    assert sum(sizes) == 40
    assert all(sizes)
    assert sum(server.emulator.answered.values()) == 40  # no row went to two shards

    merged = cli("merge", job)
    assert merged.exit_code == 0, merged.stderr
    assert "40 ok" in merged.stdout
    merged_output = pl.read_parquet(out / "test.parquet")
    assert cli("run", job, "--fresh", "--quiet").exit_code == 0
    single = pl.read_parquet(out / "test.parquet")
    assert merged_output.drop(TIMING).equals(single.drop(TIMING))
    assert merged_output.schema == single.schema


def test_a_sweeps_shards_merge_in_the_sweeps_order(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """A sweep's merged output holds its variants one after another, as a single run's does."""
    server = emulator()
    job = write_job(server.base_url, '[matrix]\nmodel = ["qwen3-max", "qwen-max"]\n')
    run_shards(cli, job, 2, "--limit", "15")
    assert cli("merge", job, "--limit", "15").exit_code == 0
    merged = pl.read_parquet(job.parent / "out" / "test.parquet")
    assert cli("run", job, "--fresh", "--quiet", "--limit", "15").exit_code == 0
    single = pl.read_parquet(job.parent / "out" / "test.parquet")
    assert merged["variant"].to_list()[:15] == ["model=qwen3-max"] * 15
    assert merged.drop(TIMING).equals(single.drop(TIMING))


def test_merge_names_a_missing_shard(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """A shard that has not run yet stops the merge (exit 2), naming its output and how to run it."""
    job = write_job(emulator().base_url)
    for index in (0, 2):
        assert cli("run", job, "--shard", f"{index}/3", "--quiet").exit_code == 0
    result = cli("merge", job)
    assert result.exit_code == 2
    assert "test.shard-1-of-3.parquet (shard 1 of 3)" in result.stderr
    assert "--shard I/3" in result.stderr
    assert not (job.parent / "out" / "test.parquet").exists()


def test_merge_refuses_shards_run_with_other_options(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """Shards run on 20 rows do not merge as the whole input: the merge names the shard and writes nothing."""
    job = write_job(emulator().base_url)
    run_shards(cli, job, 2, "--limit", "20")
    result = cli("merge", job)
    assert result.exit_code == 2
    assert "test.shard-" in result.stderr
    assert "another input, job, --set or --limit" in result.stderr
    assert not (job.parent / "out" / "test.parquet").exists()


def test_merge_without_any_shard_says_how_to_make_them(write_job: WriteJob, reviews: Path, cli: Cli) -> None:
    """No shard output at all: exit 2, saying which command makes them."""
    job = write_job("http://127.0.0.1:9/v1")
    result = cli("merge", job)
    assert result.exit_code == 2
    assert "--shard I/N" in result.stderr


def test_a_rows_shard_follows_its_custom_id_alone() -> None:
    """The shard of a row is a hash of its custom_id: the same anywhere, spread over every shard."""
    ids = [f"{i:032x}" for i in range(4000)]
    counts = [sum(shard_of(custom_id, 4) == s for custom_id in ids) for s in range(4)]
    assert all(900 < count < 1100 for count in counts)
    assert shard_of("row-a", 4) == shard_of("row-a", 4)
    assert [Shard(s, 4).holds("row-a") for s in range(4)].count(True) == 1


def test_a_shard_runs_at_its_share_of_the_limits_and_budget(write_job: WriteJob) -> None:
    """--shard divides RPM, TPM and max_cost_usd by N and moves the output; whole limits keep the rates."""
    limits = ["requests_per_minute=600", "tokens_per_minute=90000", "max_cost_usd=3.0"]
    job = load_job(write_job("http://127.0.0.1:9/v1"), [f"limits.{limit}" for limit in limits])
    shard = shard_job(job, Shard(1, 3))
    assert shard.limits.requests_per_minute == 200
    assert shard.limits.tokens_per_minute == 30000
    assert shard.limits.max_cost_usd == 1.0
    assert shard.output_path.name == "test.shard-1-of-3.parquet"
    whole = shard_job(job, Shard(1, 3), divide_limits=False)
    assert whole.limits.requests_per_minute == 600
    assert whole.limits.max_cost_usd == 1.0
    assert job.limits.requests_per_minute == 600  # the job itself is left alone


def test_the_shard_index_may_come_from_the_environment() -> None:
    """`JOB_COMPLETION_INDEX/4` reads I from that variable (Kubernetes' indexed jobs set it)."""
    assert parse_shard("JOB_COMPLETION_INDEX/4", {"JOB_COMPLETION_INDEX": "3"}) == Shard(3, 4)
    assert parse_shard(" 0 / 2 ", {}) == Shard(0, 2)


@pytest.mark.parametrize(
    ("spec", "environ", "fragment"),
    [
        ("4/4", {}, "must be below N (0 to 3)"),
        ("1", {}, "expected I/N"),
        ("0/0", {}, "N must be between 1"),
        ("JOB_COMPLETION_INDEX/4", {}, "JOB_COMPLETION_INDEX is not set"),
        ("SLURM_ARRAY_TASK_ID/4", {"SLURM_ARRAY_TASK_ID": "two"}, "is not a whole number"),
    ],
)
def test_a_bad_shard_is_refused_naming_the_flag(spec: str, environ: dict[str, str], fragment: str) -> None:
    """A shard that is not I/N with 0 <= I < N exits 2, saying what is wrong."""
    with pytest.raises(UsageError, match="--shard") as info:
        parse_shard(spec, environ)
    assert fragment in str(info.value)
