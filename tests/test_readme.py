"""The README's examples work as written.

Every line of a `sh` block runs (in order, in a fresh copy of `jobs/` and `sample_data/`, with no key set)
and exits 0; every `toml` block is a valid job or part of one; the `python` block runs. `bash` blocks need a
key, a network or cron, and are left to the reader.
"""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from batchrun import load_job
from tests.conftest import JOBS, SAMPLE_DATA, CliResult

README = Path(__file__).resolve().parent.parent / "README.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)
KEYS = ("MAXTOKEN_API_KEY", "DASHSCOPE_API_KEY", "REVIEWS_EXPORT", "ANTHROPIC_API_KEY", "OPENAI_API_KEY")


def _blocks(language: str) -> list[str]:
    return [m.group(2) for m in FENCE.finditer(README.read_text()) if m.group(1) == language]


def _job_example() -> str:
    return next(block for block in _blocks("toml") if block.startswith("name ="))


@pytest.fixture
def fresh_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory like a fresh clone's: `jobs/` (no outputs) and `sample_data/`, no keys set."""
    shutil.copytree(JOBS, tmp_path / "jobs", ignore=shutil.ignore_patterns("out"))
    shutil.copytree(SAMPLE_DATA, tmp_path / "sample_data")
    for name in KEYS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_sh_line_runs_as_written(fresh_copy: Path, cli: Callable[..., CliResult]) -> None:
    lines = [line for block in _blocks("sh") for line in block.splitlines() if line.strip()]
    assert len(lines) >= 10, "the tour's examples were found"
    for line in lines:
        argv = shlex.split(line, comments=True)
        assert argv[0] == "batchrun", f"a sh block runs batchrun commands only: {line}"
        result = cli(*argv[1:])
        assert result.exit_code == 0, f"{line}\n{result.stderr}"
    # What the lines promise came true.
    assert pl.read_parquet(fresh_copy / "jobs/out/demo.parquet").height == 300
    assert pl.read_parquet(fresh_copy / "labels.parquet").height == 20
    assert (fresh_copy / "demo-report.html").read_text().startswith("<!DOCTYPE html>")
    sweep = pl.read_parquet(fresh_copy / "jobs/out/eval-qwen-sweep.parquet")
    assert sweep["variant"].unique().sort().to_list() == ["model=qwen-max", "model=qwen3-max"]
    split = sorted(path.name for path in (fresh_copy / "split").glob("*.parquet"))
    assert split == ["model=qwen-max.parquet", "model=qwen3-max.parquet"]


def test_a_rerun_of_a_finished_job_sends_nothing(fresh_copy: Path, cli: Callable[..., CliResult]) -> None:
    """The resume example: `batchrun run jobs/demo.toml` a second time reuses every answer."""
    assert cli("run", "jobs/demo.toml", "--limit", "30", "--quiet").exit_code == 0
    result = cli("run", "jobs/demo.toml", "--limit", "30", "--quiet")
    assert result.exit_code == 0
    assert "30 answered by an earlier run" in result.stdout
    assert ", 0 requests sent" in result.stdout


def test_the_job_file_example_runs_on_the_emulator(fresh_copy: Path, cli: Callable[..., CliResult]) -> None:
    job = fresh_copy / "jobs" / "readme.toml"
    job.write_text(_job_example())
    result = cli("run", job, "--limit", "5", "--quiet")
    assert result.exit_code == 0, result.stderr
    out = pl.read_parquet(fresh_copy / "jobs/out/reviews-sentiment.parquet")
    assert out.height == 5
    # [pricing] in the example overrides the built-in table: 1.2 in and 6.0 out per 1M tokens.
    expected = (out["prompt_tokens"] * 1.2 + out["completion_tokens"] * 6.0) / 1e6
    assert (out["cost_usd"] - expected).abs().max() < 1e-12


def test_every_toml_snippet_is_valid_in_a_job(fresh_copy: Path) -> None:
    """Blocks that are part of a job (a [matrix] table) load when added to the job example."""
    snippets = [block for block in _blocks("toml") if not block.startswith("name =")]
    assert snippets
    for i, snippet in enumerate(snippets):
        job = fresh_copy / "jobs" / f"snippet{i}.toml"
        job.write_text(_job_example() + "\n" + snippet)
        assert load_job(job) is not None


def test_the_python_example_runs(fresh_copy: Path) -> None:
    (code,) = _blocks("python")
    exec(compile(code, str(README), "exec"), {})  # our own README's example
    assert (fresh_copy / "jobs/out/demo.parquet").is_file()
