"""The Ray engine on a local Ray cluster started by the tests (2 CPUs): same output, one limit, resumable."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchrun.emulator import EmulatorServer
from batchrun.engines.run import run_job
from batchrun.errors import StopRun, UsageError
from batchrun.job.loader import load_job
from tests.conftest import CliResult

Cli = Callable[..., CliResult]
StartEmulator = Callable[..., EmulatorServer]
WriteJob = Callable[..., Path]

WRONG_KEY_ENV = "BATCHRUN_TEST_RAY_WRONG_KEY"  # set before the cluster starts, so its workers have it
RAY = ["--set", 'engine.kind="ray"', "--set", "engine.workers=2", "--quiet"]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """A local Ray with 2 CPUs for this module's tests (skipped when Ray is not installed)."""
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'batchrun[ray]'")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # tests never touch the internet
    os.environ[WRONG_KEY_ENV] = "sk-not-the-emulators-key"
    ray.init(num_cpus=2, include_dashboard=False, logging_level="error")
    yield ray
    ray.shutdown()


def journal_lines(folder: Path) -> int:
    """Results journaled so far in the test job's run folder."""
    journal = folder / "out" / "test.parquet.run" / "results.jsonl"
    return journal.read_bytes().count(b"\n") if journal.exists() else 0


def test_the_ray_engine_writes_the_local_engines_output_row_for_row(
    ray_cluster: Any, emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """Two Ray workers answer into the same file, row for row and column for column, as one process does."""
    server = emulator()
    job = write_job(server.base_url)
    assert cli("run", job, "--quiet").exit_code == 0
    local = pl.read_parquet(job.parent / "out" / "test.parquet")
    result = cli("run", job, "--fresh", *RAY)
    assert result.exit_code == 0, result.stderr
    on_ray = pl.read_parquet(job.parent / "out" / "test.parquet")
    assert on_ray.drop("latency_s").equals(local.drop("latency_s"))
    assert on_ray.schema == local.schema
    assert "40 requests sent" in result.stdout
    assert sum(server.emulator.answered.values()) == 80  # once per run: no row went to two workers


def test_two_workers_keep_to_one_rate_limit(
    ray_cluster: Any, emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """Against a strict sliding one-second window, two workers leasing one schedule are seldom refused.

    Each pacing at the limit on its own, they would send twice the limit and see about half refused in the
    first second (the share of the limit reached is the benchmark's: `benchmarks/ray.py`).
    """
    server = emulator(
        requests_per_minute=900, limit_window="sliding", rate_limit_headers=False, latency_s=0.02
    )
    job = write_job(server.base_url)
    limits = ["--set", "limits.requests_per_minute=900", "--set", "limits.concurrency=8"]
    result = cli("run", job, *RAY, *limits)
    assert result.exit_code == 0, result.stderr
    statuses = server.emulator.requests_by_status
    assert statuses[200] == 40
    assert statuses[429] <= 10  # one process sees 1-3 here: a request a moment late fills the window


def test_a_killed_workers_rows_are_sent_by_the_rerun_without_duplicates(
    ray_cluster: Any, emulator: StartEmulator, write_job: WriteJob, reviews: Path
) -> None:
    """A worker killed mid-run loses only what it held; the run exits 3, and a rerun answers the rest once."""
    server = emulator(latency_s=0.1)
    path = write_job(server.base_url)
    job = load_job(path, ['engine.kind="ray"', "engine.workers=2", "limits.concurrency=4"])
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            run_job(job)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 60
    while journal_lines(path.parent) < 6:
        assert thread.is_alive(), outcome
        assert time.monotonic() < deadline
        time.sleep(0.02)
    victims = [
        actor for actor in ray_cluster.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith("batchrun-worker-0-")
    ]  # fmt: skip
    assert len(victims) == 1
    ray_cluster.kill(ray_cluster.get_actor(victims[0]["name"], namespace=victims[0]["namespace"]))
    thread.join(timeout=60)
    assert not thread.is_alive()
    (stopped,) = outcome
    assert isinstance(stopped, StopRun), stopped
    assert "Ray worker 1 of 2 was lost" in str(stopped)
    out = pl.read_parquet(path.parent / "out" / "test.parquet")
    assert 0 < (out["status"] == "pending").sum() < 40

    run_job(load_job(path, ['engine.kind="ray"', "engine.workers=2"]))
    out = pl.read_parquet(path.parent / "out" / "test.parquet")
    assert out["status"].to_list() == ["ok"] * 40
    assert out["id"].to_list() == pl.read_ndjson(path.parent / "reviews.jsonl")["id"].to_list()
    answered = server.emulator.answered
    assert len(answered) == 40
    assert sum(count > 1 for count in answered.values()) <= 2  # at most the 2 it had in flight


def test_the_budget_holds_across_workers(
    ray_cluster: Any, emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """max_cost_usd is one budget for the cluster: the run stops before passing it (exit 3)."""
    job = write_job(emulator().base_url)
    budget = ["--set", "limits.max_cost_usd=0.002", "--set", "limits.concurrency=4"]
    result = cli("run", job, *RAY, *budget)
    assert result.exit_code == 3, result.stderr
    assert "Budget reached" in result.stderr
    out = pl.read_parquet(job.parent / "out" / "test.parquet")
    assert 0 < (out["status"] == "ok").sum() < 40
    assert out["cost_usd"].sum() <= 0.002


def test_a_fatal_error_on_one_worker_stops_every_worker(
    ray_cluster: Any, emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """A key the provider refuses stops the whole run within its first requests, naming the variable."""
    server = emulator(api_key="sk-the-emulators-own-key")
    job = write_job(server.base_url)
    result = cli("run", job, *RAY, "--set", f'provider.api_key_env="{WRONG_KEY_ENV}"')
    assert result.exit_code == 3, result.stderr
    assert WRONG_KEY_ENV in result.stderr
    assert server.emulator.requests_by_status[401] <= 16  # the first wave at most, not every row


def test_a_worker_without_the_key_stops_the_run_before_anything_is_sent(
    ray_cluster: Any, write_job: WriteJob, reviews: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key is read on each worker's node: one missing there exits 2 naming the variable and the worker."""
    monkeypatch.setenv("BATCHRUN_TEST_DRIVER_ONLY_KEY", "sk-set-after-the-cluster-started")
    job = write_job("http://127.0.0.1:9/v1")
    result = cli("run", job, *RAY, "--set", 'provider.api_key_env="BATCHRUN_TEST_DRIVER_ONLY_KEY"')
    assert result.exit_code == 2, result.stderr
    assert "BATCHRUN_TEST_DRIVER_ONLY_KEY is not set" in result.stderr
    assert "on Ray worker" in result.stderr


def test_without_ray_the_ray_engine_exits_2_saying_how_to_install_it(
    write_job: WriteJob, reviews: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kind = "ray" without Ray installed: exit 2 before anything is sent, with the pip command."""
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    job = write_job("http://127.0.0.1:9/v1")
    result = cli("run", job, "--set", 'engine.kind="ray"')
    assert result.exit_code == 2
    assert 'pip install "batchrun[ray]"' in result.stderr
    with pytest.raises(UsageError):
        run_job(load_job(job, ['engine.kind="ray"']))
