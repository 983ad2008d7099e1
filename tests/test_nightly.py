"""Nightly jobs: `${VAR}` in job files, `{date}`/`{datetime}` in output paths, presets set from the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from batchrun.emulator import EmulatorServer
from batchrun.errors import JobFileError
from batchrun.job.loader import load_job
from tests.conftest import CliResult, load_error

Cli = Callable[..., CliResult]
StartEmulator = Callable[..., EmulatorServer]
WriteJob = Callable[..., Path]

URL = "http://127.0.0.1:9/v1"
HEADER = 'name = "t"\n[input]\npath = "in.jsonl"\n[prompt]\ntemplate = "{text}"\n'


def provider(body: str = f'base_url = "{URL}"\nmodel = "qwen3-max"') -> str:
    """A small job file with the given `[provider]` body."""
    return f"{HEADER}[provider]\n{body}\n"


def test_env_vars_expand_in_any_string_value(
    write_job: WriteJob, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`${VAR}` is replaced in paths, prompts, params and headers; `${VAR:-default}` covers an unset VAR."""
    monkeypatch.setenv("EXPORT_DIR", "/data/exports")
    monkeypatch.setenv("TEAM", "search")
    monkeypatch.delenv("UNSET_VAR", raising=False)
    text = provider(
        f'base_url = "{URL}"\nmodel = "${{MODEL:-qwen-max}}"\nheaders = {{ X-Team = "${{TEAM}}" }}'
    )
    text = text.replace('"in.jsonl"', '"${EXPORT_DIR}/reviews.jsonl"').replace("{text}", "${TEAM}: {text}")
    text += '\n[params]\nuser = "batch-${TEAM}-${UNSET_VAR:-}"\nstop = ["${TEAM}"]\n'
    monkeypatch.delenv("MODEL", raising=False)
    job = load_job(write_job(URL, header=text))
    assert job.input.path == Path("/data/exports/reviews.jsonl")
    assert job.provider.model == "qwen-max"
    assert job.provider.headers == {"X-Team": "search"}
    assert job.prompt.template == "search: {text}"
    assert job.params == {"user": "batch-search-", "stop": ["search"]}


def test_a_missing_env_var_names_the_variable_file_and_key(
    write_job: WriteJob, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unset `${VAR}` without a default stops the load naming VAR, the job file and the dotted key."""
    monkeypatch.delenv("NIGHTLY_EXPORT", raising=False)
    path = write_job(URL, header=provider().replace('"in.jsonl"', '"${NIGHTLY_EXPORT}"'))
    message = load_error(path)
    assert message.startswith(f"{path}: [input.path] the environment variable NIGHTLY_EXPORT is not set")
    assert "${NIGHTLY_EXPORT:-default}" in message


def test_double_dollar_is_a_literal_and_a_lone_dollar_is_left_alone(write_job: WriteJob) -> None:
    """`$${X}` reads as the text `${X}`, and a price such as `$5` needs no escaping."""
    text = provider().replace("{text}", "Costs $5. Shell: $${HOME}. {text}")
    job = load_job(write_job(URL, header=text))
    assert job.prompt.template == "Costs $5. Shell: ${HOME}. {text}"


def test_a_malformed_reference_is_refused(write_job: WriteJob) -> None:
    """`${1X}` or an unclosed `${` is an error naming the key, with how to write a literal."""
    for bad in ("${1X}", "${OPEN"):
        text = provider().replace("{text}", bad + " {text}")
        with pytest.raises(JobFileError, match=r"\[prompt.template\] malformed \$\{\.\.\.\}"):
            load_job(write_job(URL, header=text))


def test_env_var_in_the_cli_run_exits_2_when_unset(
    emulator: StartEmulator,
    write_job: WriteJob,
    reviews: Path,
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through the CLI, an unset variable is a bad job file: exit 2, nothing sent, the variable named."""
    monkeypatch.delenv("REVIEWS_FILE", raising=False)
    server = emulator()
    job = write_job(server.base_url)
    job.write_text(job.read_text().replace('"reviews.jsonl"', '"${REVIEWS_FILE}"'))
    result = cli("run", job)
    assert result.exit_code == 2
    assert "REVIEWS_FILE is not set" in result.stderr
    assert sum(server.emulator.requests_by_status.values()) == 0
    monkeypatch.setenv("REVIEWS_FILE", str(reviews))
    assert cli("run", job).exit_code == 0


def test_date_and_datetime_are_fixed_at_the_start_of_the_run(write_job: WriteJob, tmp_path: Path) -> None:
    """`{date}` and `{datetime}` come from the job's start time, local, filesystem-safe, the same all run."""
    before = datetime.now()
    path = write_job(URL, '\n[output]\npath = "out/{job}/{date}/{datetime}.parquet"\n', header=provider())
    job = load_job(path)
    assert before <= job.started <= datetime.now()
    started = job.started
    expected = tmp_path / "out" / "t" / f"{started:%Y-%m-%d}" / f"{started:%Y-%m-%dT%H%M}.parquet"
    assert job.output_path == expected  # from the start time, not the clock: the same all run
    late = job.model_copy(update={"started": datetime(2026, 11, 23, 23, 59, 58)})
    assert late.output_path == tmp_path / "out" / "t" / "2026-11-23" / "2026-11-23T2359.parquet"


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("out/{jobs}.parquet", "unknown placeholder {jobs}; use {job}, {date}, {datetime}, {variant}"),
        ("out/{variant}.parquet", "{variant} names a sweep's variant; this job has no [matrix]"),
    ],
)
def test_unknown_placeholders_in_the_output_path_are_refused(
    write_job: WriteJob, template: str, fragment: str
) -> None:
    """A placeholder batchrun does not fill stops the load, naming [output] path."""
    path = write_job(URL, f'\n[output]\npath = "{template}"\n', header=provider())
    message = load_error(path)
    assert "path" in message
    assert fragment in message


def test_rerun_the_same_day_resumes_the_dated_run(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """Two runs of a `{date}` job on one day share the run folder: the second sends nothing."""
    server = emulator()
    job = write_job(server.base_url)
    job.write_text(job.read_text().replace('"out/{job}.parquet"', '"out/{job}/{date}.parquet"'))
    first = json.loads(cli("run", job, "--json").stdout)
    assert first["output"].endswith(f"/out/test/{datetime.now():%Y-%m-%d}.parquet")
    second = json.loads(cli("run", job, "--json").stdout)
    assert second["output"] == first["output"]
    assert (second["rows_reused"], second["requests_sent"]) == (40, 0)
    assert server.emulator.requests_by_status[200] == 40


def test_preset_set_on_the_command_line_replaces_the_files_endpoint(write_job: WriteJob) -> None:
    """`--set provider.preset=emulator` drops the file's base_url and api_key_env: the emulator wins."""
    body = 'preset = "maxtoken"\nbase_url = "https://example.test/v1"\napi_key_env = "MY_KEY"\nmodel = "m"'
    path = write_job(URL, header=provider(body))
    job = load_job(path, ["provider.preset=emulator"])
    assert (job.provider.preset, job.provider.base_url, job.provider.api_key_env) == ("emulator", None, None)
    assert job.provider.api_key_required is False
    kept = load_job(path, ["provider.preset=emulator", "provider.api_key_env=OTHER"])
    assert kept.provider.api_key_env == "OTHER"
    in_file = load_job(path)
    assert (in_file.provider.base_url, in_file.provider.api_key_env) == ("https://example.test/v1", "MY_KEY")


def test_an_api_key_variable_cannot_be_expanded_into_the_request_or_output(
    write_job: WriteJob, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`${KEY}` of the job's api_key_env (or a preset's) is refused outside [provider.headers]."""
    monkeypatch.setenv("MY_KEY", "sk-secret-123")
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-secret-456")
    body = f'base_url = "{URL}"\nmodel = "m"\napi_key_env = "MY_KEY"'
    for name, text in (
        ("MY_KEY", provider(body).replace("{text}", "${MY_KEY} {text}")),
        ("DASHSCOPE_API_KEY", provider(body) + '\n[params]\nuser = "${DASHSCOPE_API_KEY}"\n'),
    ):
        message = load_error(write_job(URL, header=text))
        assert f"${{{name}}} holds an API key" in message
        assert "sk-secret" not in message
    headers = provider(body + '\nheaders = { api-key = "${MY_KEY}" }')
    assert load_job(write_job(URL, header=headers)).provider.headers == {"api-key": "sk-secret-123"}


def test_started_can_be_set_to_resume_or_backfill_an_earlier_day(write_job: WriteJob, tmp_path: Path) -> None:
    """`--set started=2026-11-22` points `{date}` at that day, so yesterday's stopped run can be resumed."""
    path = write_job(URL, '\n[output]\npath = "out/{date}.parquet"\n', header=provider())
    assert load_job(path, ["started=2026-11-22"]).output_path == tmp_path / "out" / "2026-11-22.parquet"
    with pytest.raises(JobFileError, match="started takes a date"):
        load_job(path, ["started=yesterday"])
