"""Every error a user can cause exits 2 or 3 with one message, and a bug exits 4; never a traceback."""

from __future__ import annotations

import errno
import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchrun.cli import common as cli_module
from batchrun.emulator import EmulatorServer
from batchrun.engines import run as runner_module
from batchrun.money import estimate as estimate_module
from batchrun.report import runlog
from batchrun.store.runstore import RunStore
from tests.conftest import CliResult

WriteJob = Callable[..., Path]
Cli = Callable[..., CliResult]
StartEmulator = Callable[..., EmulatorServer]


def disk_full(*args: Any, **kwargs: Any) -> None:
    """A write that fails as a full disk does."""
    raise OSError(errno.ENOSPC, "No space left on device")


@dataclass(frozen=True, slots=True)
class Case:
    """One way a user can get a run wrong, and what batchrun must answer."""

    name: str
    setup: Callable[[Path, pytest.MonkeyPatch], list[str]]  # returns extra CLI arguments
    exit_code: int
    says: str
    env: dict[str, str] | None = None
    nothing_sent: bool = True


def bad_jsonl_line(folder: Path, _: pytest.MonkeyPatch) -> list[str]:
    """Line 41 of the input does not parse."""
    with (folder / "reviews.jsonl").open("a", encoding="utf-8") as file:
        file.write('{"id": "r9999", "text": \n')
    return []


def non_utf8_csv(folder: Path, _: pytest.MonkeyPatch) -> list[str]:
    """The input as CSV, with one row in Latin-1."""
    path = folder / "reviews.csv"
    pl.read_ndjson(folder / "reviews.jsonl").write_csv(path)
    with path.open("ab") as file:
        file.write("r9999,Chair,office chair,5,Tr\xe8s bien,Parfait,2026-01-01\n".encode("latin-1"))
    return ["--input", str(path)]


def messages_job(folder: Path, cells: list[str], kind: str = "openai") -> Path:
    """A job over a messages column holding `cells`, one row each."""
    rows = [{"id": f"m{i}", "msgs": cell} for i, cell in enumerate(cells)]
    (folder / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    job = folder / "chats.toml"
    job.write_text(
        'name = "chats"\n[input]\npath = "chats.jsonl"\nid_column = "id"\n'
        '[prompt]\nmessages_column = "msgs"\n'
        f'[provider]\nkind = "{kind}"\nbase_url = "http://127.0.0.1:9"\nmodel = "qwen3-max"\n'
        "[params]\nmax_tokens = 8\n",
        encoding="utf-8",
    )
    return job


def messages_too_deep(folder: Path, _: pytest.MonkeyPatch) -> list[str]:
    """A messages column whose second row nests 100,000 lists deep."""
    deep = '[{"role": "user", "content": ' + "[" * 100_000 + "]" * 100_000 + "}]"
    return [str(messages_job(folder, ['[{"role": "user", "content": "hi"}]', deep]))]


def anthropic_string_message(folder: Path, _: pytest.MonkeyPatch) -> list[str]:
    """A plain-string message for kind = "anthropic"."""
    return [str(messages_job(folder, ['["just text"]'], kind="anthropic"))]


def set_args(*pairs: str) -> Callable[[Path, pytest.MonkeyPatch], list[str]]:
    """Setup that only adds `--set` overrides."""
    return lambda folder, _: [arg for pair in pairs for arg in ("--set", pair)]


def corrupt_cache(folder: Path, _: pytest.MonkeyPatch) -> list[str]:
    """A cache file that is not a database."""
    (folder / "cache").mkdir()
    (folder / "cache" / "responses.sqlite").write_bytes(b"not a database" * 100)
    return ["--set", "cache.enabled=true", "--set", f'cache.path="{folder / "cache"}"']


def cache_path_is_a_file(folder: Path, _: pytest.MonkeyPatch) -> list[str]:
    """A cache path that is a file, so no cache folder can be made there."""
    (folder / "taken").write_text("a file", encoding="utf-8")
    return ["--set", "cache.enabled=true", "--set", f'cache.path="{folder / "taken"}"']


def disk_full_before_sending(folder: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The run folder cannot be made: the disk is full."""
    monkeypatch.setattr(RunStore, "open", disk_full)
    return []


def disk_full_journaling(folder: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The journal cannot be written once answers arrive: the disk is full."""
    monkeypatch.setattr(RunStore, "write_results", disk_full)
    return []


def disk_full_writing_output(folder: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The input parts and output cannot be written at the end: the disk is full."""
    monkeypatch.setattr(RunStore, "flush_input", disk_full)
    return []


CASES = [
    Case("bad JSONL line", bad_jsonl_line, 2, "line 41: not valid JSON"),
    Case(
        "non-UTF-8 CSV", non_utf8_csv, 2, "row 41, column 'title' is not UTF-8 text: save the file as UTF-8"
    ),
    Case(
        "messages 100,000 deep", messages_too_deep, 2, "line 2 (id \"m1\"): column 'msgs' is not valid JSON"
    ),
    Case("anthropic string message", anthropic_string_message, 2, "column 'msgs'[0] is 'just text'"),
    Case("NaN in params", set_args("params.temperature=nan"), 2, "[params] temperature is nan"),
    Case("max_tokens 1e999", set_args("params.max_tokens=1e999"), 2, "[params] max_tokens must be a whole"),
    Case("max_tokens [1]", set_args("params.max_tokens=[1]"), 2, "max_tokens must be a whole number"),
    Case("max_tokens text", set_args('params.max_tokens="sixteen"'), 2, "not 'sixteen'"),
    Case("--set not TOML", set_args("params.temperature=0.7.1"), 2, "[params] temperature takes a number"),
    Case(
        "non-ASCII key",
        set_args("provider.api_key_env=BR_TEST_KEY"),
        2,
        "the key in BR_TEST_KEY holds a character that is not ASCII",
        env={"BR_TEST_KEY": "sk-abc\u2026def"},
    ),
    Case("corrupt cache file", corrupt_cache, 0, "is not a database", nothing_sent=False),
    Case("unusable cache folder", cache_path_is_a_file, 2, "cannot use the response cache"),
    Case(
        "disk full before sending", disk_full_before_sending, 2, "No space left on device. Nothing was sent"
    ),
    Case("disk full journaling", disk_full_journaling, 3, "No space left on device", nothing_sent=False),
    Case(
        "disk full writing output", disk_full_writing_output, 3, "No space left on device", nothing_sent=False
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_every_error_a_user_can_cause_is_one_message(
    case: Case,
    emulator: StartEmulator,
    write_job: WriteJob,
    reviews: Path,
    cli: Cli,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each error exits 2 before sending or 3 after, with a message naming the fix and no traceback."""
    server = emulator()
    job = write_job(server.base_url)
    extra = case.setup(tmp_path, monkeypatch)
    if extra and extra[0].endswith(".toml"):
        job = Path(extra.pop(0))  # a case with a job file of its own
    result = cli("run", job, "--quiet", *extra, env=case.env)
    assert "Traceback" not in result.stderr
    assert result.exit_code == case.exit_code, result.stderr
    assert case.says in result.stderr
    if case.nothing_sent:
        assert sum(server.emulator.requests_by_status.values()) == 0


def test_a_bug_in_a_run_exits_4_with_one_line_and_the_traceback_in_the_log(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception exits 4: one stderr line naming the log file, which holds the traceback."""

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(runner_module.Run, "run", broken)
    job = write_job(emulator().base_url)
    result = cli("run", job, "--quiet")
    assert result.exit_code == 4
    assert "Traceback" not in result.stderr
    log_file = job.parent / "out" / "test.log"
    (line,) = result.stderr.splitlines()
    assert line.startswith("batchrun: internal error (a bug in batchrun): ZeroDivisionError: a bug")
    assert f"the traceback is in {log_file}" in line
    log = log_file.read_text(encoding="utf-8")
    assert "Traceback (most recent call last)" in log
    assert "end: exit 4" in log
    summary = json.loads((job.parent / "out" / "test.summary.json").read_text(encoding="utf-8"))
    assert summary["exit_code"] == 4
    assert summary["message"].startswith("internal error (a bug in batchrun): ZeroDivisionError")


def test_a_bug_outside_a_run_exits_4_with_the_traceback_in_a_file_of_its_own(
    write_job: WriteJob, reviews: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A bug in a command with no log file (estimate) writes its traceback to a temporary file."""

    def broken(*args: Any, **kwargs: Any) -> None:
        raise KeyError("oops")

    monkeypatch.setattr(estimate_module, "estimate_job", broken)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    result = cli("estimate", write_job("http://127.0.0.1:9/v1"))
    assert result.exit_code == 4
    assert "Traceback" not in result.stderr
    (crash,) = tmp_path.glob("batchrun-internal-error-*.log")
    assert f"the traceback is in {crash}" in result.stderr
    assert "KeyError: 'oops'" in crash.read_text(encoding="utf-8")


def test_the_exit_codes_the_cli_names_cover_4() -> None:
    """The log file's end line has a meaning for every exit code, 4 included."""
    assert set(cli_module.EXIT_MEANING) == {0, 1, 2, 3, 4}


class _FullDisk(io.StringIO):
    """A stream whose every write fails as a full disk does."""

    def write(self, text: str) -> int:
        """Fail."""
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_log_file_that_cannot_be_written_is_one_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A log file on a full disk is dropped with one warning on stderr, never logging's traceback."""
    stderr = io.StringIO()
    log = logging.getLogger("batchrun")
    with runlog.stderr_logging(stderr, quiet=False), runlog.file_logging(tmp_path / "x.log", secret=None):
        (handler,) = [h for h in log.handlers if isinstance(h, logging.FileHandler)]
        handler.stream = _FullDisk()
        log.info("first")
        log.info("second")
    assert stderr.getvalue().count("cannot write the log file") == 1
    assert "batchrun: second" in stderr.getvalue()
    assert "Traceback" not in capsys.readouterr().err
