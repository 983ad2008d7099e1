"""Shared fixtures: an emulator on 127.0.0.1, job files in a temporary folder, and the CLI."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner

from batchrun.cli import main
from batchrun.emulator import EmulatorConfig, EmulatorServer
from batchrun.errors import JobFileError
from batchrun.job.loader import load_job

SAMPLE_DATA = Path(__file__).resolve().parent.parent / "sample_data"
JOBS = Path(__file__).resolve().parent.parent / "jobs"


def load_error(path: Path, overrides: tuple[str, ...] = ()) -> str:
    """The message of the JobFileError that loading `path` raises."""
    with pytest.raises(JobFileError) as info:
        load_job(path, overrides)
    return str(info.value)


@pytest.fixture
def emulator() -> Iterator[Callable[..., EmulatorServer]]:
    """Start emulators on 127.0.0.1 (free ports) with the given config; all stop when the test ends."""
    servers: list[EmulatorServer] = []

    def start(**config: Any) -> EmulatorServer:
        server = EmulatorServer(EmulatorConfig(**config))
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def reviews(tmp_path: Path) -> Path:
    """The first 40 sample reviews as JSONL in the test's folder."""
    path = tmp_path / "reviews.jsonl"
    pl.read_ndjson(SAMPLE_DATA / "reviews.jsonl").head(40).write_ndjson(path)
    return path


@pytest.fixture
def batch_lines(tmp_path: Path) -> Path:
    """The sample OpenAI Batch API lines in the test's folder."""
    return Path(shutil.copy(SAMPLE_DATA / "reviews_batch.jsonl", tmp_path / "batch.jsonl"))


@pytest.fixture
def write_job(tmp_path: Path) -> Callable[..., Path]:
    """Write a job file into the test's folder: a minimal working job, with extra TOML appended."""

    def write(base_url: str, extra: str = "", *, name: str = "job.toml", header: str | None = None) -> Path:
        head = header if header is not None else JOB_HEAD.format(base_url=base_url)
        path = tmp_path / name
        path.write_text(textwrap.dedent(head) + textwrap.dedent(extra), encoding="utf-8")
        return path

    return write


JOB_HEAD = """\
name = "test"

[input]
path = "reviews.jsonl"
id_column = "id"

[prompt]
system = "You label the sentiment of product reviews."
template = "Review: {{title}}. {{text}}\\nAnswer with one word."

[provider]
kind = "openai"
base_url = "{base_url}"
model = "qwen3-max"

[params]
temperature = 0
max_tokens = 16

[limits]
concurrency = 8
backoff_base_s = 0.001
backoff_max_s = 0.01

[output]
path = "out/{{job}}.parquet"
"""


@dataclass(frozen=True, slots=True)
class CliResult:
    """What one `batchrun` invocation did."""

    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli() -> Callable[..., CliResult]:
    """Invoke the `batchrun` command in-process."""

    def invoke(*args: str | Path, env: dict[str, str] | None = None) -> CliResult:
        result = CliRunner().invoke(main, [str(a) for a in args], env=env, catch_exceptions=False)
        return CliResult(result.exit_code, result.stdout, result.stderr)

    return invoke
