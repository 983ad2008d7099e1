"""Every example in `jobs/` runs against the emulator with `--set provider.preset=emulator`, and its
snippet reads its output."""

from __future__ import annotations

import itertools
import json
import shutil
import tomllib
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import JOBS, SAMPLE_DATA, CliResult

Cli = Callable[..., CliResult]
JOB_FILES = sorted(JOBS.glob("*.toml"))
ROWS = 5


@pytest.mark.parametrize("job_file", JOB_FILES, ids=[p.stem for p in JOB_FILES])
def test_example_job_runs_on_the_emulator(
    job_file: Path, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job loads, runs its first rows against the emulator (no key) and every row comes back ok."""
    for name in ("MAXTOKEN_API_KEY", "DASHSCOPE_API_KEY", "REVIEWS_EXPORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # a job with [cache] stays in tmp_path
    output = tmp_path / "out.parquet"
    args = ("run", job_file, "--set", "provider.preset=emulator", "--limit", str(ROWS), "--output", output)
    result = cli(*args, "--json")
    assert result.exit_code == 0, result.stderr
    variants = 1
    for values in tomllib.loads(job_file.read_text()).get("matrix", {}).values():
        variants *= len(values)
    out = pl.read_parquet(output)
    assert out.height == ROWS * variants
    assert (out["status"] == "ok").all()
    assert json.loads(result.stdout)["ok"] == ROWS * variants


def test_jobs_folder_has_an_example_for_each_use() -> None:
    """jobs/ holds a JSON-mode labeling job, a sweep across two Qwen models and a dated nightly job."""
    jobs = {p.stem: tomllib.loads(p.read_text()) for p in JOB_FILES}
    json_mode = [j for j in jobs.values() if j.get("params", {}).get("response_format")]
    assert json_mode[0]["params"]["response_format"] == {"type": "json_object"}
    sweeps = [j for j in jobs.values() if "matrix" in j]
    assert sweeps[0]["matrix"]["model"] == ["qwen3-max", "qwen-max"]
    nightly = [j for j in jobs.values() if "{date}" in j.get("output", {}).get("path", "")]
    assert nightly[0]["limits"]["max_cost_usd"] > 0
    assert {"demo", "label_reviews_maxtoken"} <= jobs.keys()


def snippet(job_file: Path) -> str:
    """The Python under the job file's `# Read the output` comment (its `#   ` lines)."""
    lines = job_file.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# Read the output"))
    code = itertools.takewhile(lambda line: line.startswith("#   "), lines[start + 1 :])
    return "\n".join(line[4:] for line in code)


@pytest.mark.parametrize("job_file", JOB_FILES, ids=[p.stem for p in JOB_FILES])
def test_the_jobs_snippet_reads_its_output_with_the_installed_polars(
    job_file: Path,
    cli: Cli,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The job's `# Read the output` snippet runs as written, in a copy of the project, on the output of
    the job's first rows against the emulator, and prints what it reads."""
    shutil.copytree(JOBS, tmp_path / "jobs", ignore=shutil.ignore_patterns("out"))
    shutil.copytree(SAMPLE_DATA, tmp_path / "sample_data")
    for name in ("MAXTOKEN_API_KEY", "DASHSCOPE_API_KEY", "REVIEWS_EXPORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    job = Path("jobs") / job_file.name
    result = cli("run", job, "--set", "provider.preset=emulator", "--limit", "20", "--quiet")
    assert result.exit_code == 0, result.stderr
    code = snippet(job_file)
    assert "pl.read_parquet" in code
    exec(compile(code, f"{job_file.name} snippet", "exec"), {})
    printed = capsys.readouterr().out
    assert "shape:" in printed  # a polars frame was printed
