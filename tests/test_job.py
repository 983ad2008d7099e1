"""The job file: presets, `--set` overrides, path resolution and validation errors that name file and key."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batchrun.errors import JobFileError
from batchrun.job.loader import load_job
from tests.conftest import load_error

WriteJob = Callable[..., Path]

URL = "http://127.0.0.1:9/v1"

PRESET_JOB = """\
name = "p"

[input]
path = "in.jsonl"

[prompt]
template = "{text}"

[provider]
preset = "siray"
model = "alibaba/qwen3-max-256k"
"""


def job_text(provider: str = f'base_url = "{URL}"\nmodel = "qwen3-max"', extra: str = "") -> str:
    """A small valid job file with the given `[provider]` body and extra TOML after it."""
    head = 'name = "t"\n\n[input]\npath = "in.jsonl"\n\n[prompt]\ntemplate = "{text}"\n\n'
    return f"{head}[provider]\n{provider}\n{extra}"


def test_preset_fills_kind_base_url_and_key_env(write_job: WriteJob) -> None:
    """A preset fills kind, base_url, api_key_env and api_key_required of `[provider]`."""
    job = load_job(write_job(URL, header=PRESET_JOB))
    assert job.provider.kind == "openai"
    assert job.provider.base_url == "https://api.siray.ai/v1"
    assert job.provider.api_key_env == "SIRAY_API_KEY"
    assert job.provider.api_key_required is True
    assert job.provider.model == "alibaba/qwen3-max-256k"


def test_keys_set_in_the_job_win_over_the_preset(write_job: WriteJob) -> None:
    """`base_url`, `api_key_env` and `api_key_required` written in the job replace the preset's values."""
    text = PRESET_JOB.replace(
        'preset = "siray"',
        'preset = "vllm"\nbase_url = "http://10.0.0.5:8000/v1"\n'
        'api_key_env = "MY_KEY"\napi_key_required = true',
    )
    job = load_job(write_job(URL, header=text))
    assert job.provider.base_url == "http://10.0.0.5:8000/v1"
    assert job.provider.api_key_env == "MY_KEY"
    assert job.provider.api_key_required is True  # the vllm preset says False


def test_preset_given_by_override_fills_the_provider(write_job: WriteJob) -> None:
    """`--set provider.preset=maxtoken` applies the preset as if it were in the file."""
    path = write_job(URL, header=job_text('model = "qwen3-max"'))
    job = load_job(path, ["provider.preset=maxtoken"])
    assert job.provider.base_url == "https://api.maxtoken.io/v1"
    assert job.provider.api_key_env == "MAXTOKEN_API_KEY"


def test_unknown_preset_names_the_key_and_lists_known_presets(write_job: WriteJob) -> None:
    """An unknown preset raises JobFileError keyed `provider.preset` that lists the known presets."""
    path = write_job(URL, header=PRESET_JOB.replace('"siray"', '"sirey"'))
    with pytest.raises(JobFileError) as info:
        load_job(path)
    message = str(info.value)
    assert info.value.key == "provider.preset"
    assert message.startswith(f"{path}: [provider.preset] ")
    assert "'sirey'" in message
    for known in ("emulator", "maxtoken", "aimlapi", "siray", "dashscope-intl", "openai", "ollama"):
        assert known in message


@pytest.mark.parametrize(
    ("override", "where", "expected"),
    [
        ("limits.concurrency=8", ("limits", "concurrency"), 8),
        ("limits.timeout_s=2.5", ("limits", "timeout_s"), 2.5),
        ("provider.api_key_required=false", ("provider", "api_key_required"), False),
        ('provider.model="qwen-max"', ("provider", "model"), "qwen-max"),
        ("provider.model=qwen-max", ("provider", "model"), "qwen-max"),
        ("prompt.system=a=b", ("prompt", "system"), "a=b"),
        (" limits.max_attempts = 3", ("limits", "max_attempts"), 3),
    ],
)
def test_override_values_are_parsed_as_toml_else_text(
    write_job: WriteJob, override: str, where: tuple[str, str], expected: Any
) -> None:
    """`section.key=value` takes a TOML value (int, float, bool, quoted string) or else the bare text."""
    job = load_job(write_job(URL), [override])
    value = getattr(getattr(job, where[0]), where[1])
    assert value == expected
    assert type(value) is type(expected)


def test_override_into_params_builds_nested_tables_and_typed_values(write_job: WriteJob) -> None:
    """`params.*` overrides create nested tables and keep TOML types (float, bool, array)."""
    overrides = [
        "params.response_format.type=json_object",
        "params.temperature=0.7",
        "params.enable_thinking=true",
        'params.stop=["END", "\\n"]',
    ]
    job = load_job(write_job(URL), overrides)
    assert job.params["response_format"] == {"type": "json_object"}
    assert job.params["temperature"] == 0.7
    assert job.params["enable_thinking"] is True
    assert job.params["stop"] == ["END", "\n"]
    assert job.params["max_tokens"] == 16  # untouched keys of the file stay


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("limits.concurrency", "expected section.key=value"),
        ("=8", "expected section.key=value"),
        ("limits.concurrency.max=8", "limits.concurrency is a value, not a table"),
    ],
)
def test_malformed_override_raises_naming_it(write_job: WriteJob, override: str, fragment: str) -> None:
    """An override without `=`, without a key, or through a value (not a table) raises JobFileError."""
    path = write_job(URL)
    message = load_error(path, (override,))
    assert str(path) in message
    assert fragment in message


def test_override_with_a_wrong_type_names_section_and_key(write_job: WriteJob) -> None:
    """A bare word where a number belongs fails validation naming `[limits] concurrency`."""
    message = load_error(write_job(URL), ("limits.concurrency=many",))
    assert "[limits] concurrency" in message


def test_paths_in_the_job_file_resolve_against_its_folder(write_job: WriteJob, tmp_path: Path) -> None:
    """`[input] path` and the default output path are relative to the job file's folder, not to cwd."""
    (tmp_path / "jobs").mkdir()
    text = job_text().replace('path = "in.jsonl"', 'path = "../data/in.jsonl"')
    path = write_job(URL, header=text, name="jobs/nightly.toml")
    elsewhere = tmp_path / "elsewhere"
    job = load_job(path, cwd=elsewhere)
    assert job.input.path == tmp_path / "data" / "in.jsonl"
    assert job.output_path == tmp_path / "jobs" / "out" / "t.parquet"


def test_name_defaults_to_the_job_file_stem(write_job: WriteJob, tmp_path: Path) -> None:
    """A job without `name` is named after its file, and `{job}` in the output path uses that name."""
    text = job_text().replace('name = "t"\n', "")
    job = load_job(write_job(URL, header=text, name="nightly.toml"))
    assert job.name == "nightly"
    assert job.output_path == tmp_path / "out" / "nightly.parquet"


def test_job_placeholder_in_output_path_takes_the_overridden_name(
    write_job: WriteJob, tmp_path: Path
) -> None:
    """`{job}` in `[output] path` is replaced by the job's name, including one set with `--set name=`."""
    path = write_job(URL, '\n[output]\npath = "results/{job}-labels.parquet"\n', header=job_text())
    assert load_job(path).output_path == tmp_path / "results" / "t-labels.parquet"
    assert load_job(path, ["name=v2"]).output_path == tmp_path / "results" / "v2-labels.parquet"


def test_command_line_paths_resolve_against_cwd(write_job: WriteJob, tmp_path: Path) -> None:
    """`input_path`, `output_path` and `--set input.path=` are relative to `cwd`, not the job folder."""
    (tmp_path / "jobs").mkdir()
    path = write_job(URL, header=job_text(), name="jobs/j.toml")
    cwd = tmp_path / "work"
    job = load_job(path, input_path="other.parquet", output_path="res/{job}.parquet", cwd=cwd)
    assert job.input.path == cwd / "other.parquet"
    assert job.output_path == cwd / "res" / "t.parquet"
    job = load_job(path, ["input.path=data/x.csv", "output.path=y.parquet"], cwd=cwd)
    assert job.input.path == cwd / "data" / "x.csv"
    assert job.output_path == cwd / "y.parquet"


def test_absolute_command_line_path_is_kept(write_job: WriteJob, tmp_path: Path) -> None:
    """An absolute `input_path` is used as given whatever `cwd` is."""
    target = tmp_path / "abs" / "in.parquet"
    job = load_job(write_job(URL), input_path=target, cwd=tmp_path / "cwd")
    assert job.input.path == target


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ("\n[limits]\nconcurency = 8\n", "[limits] concurency: unknown key"),
        ("\n[oops]\nx = 1\n", "oops: unknown key"),
        ('\n[limits]\nconcurrency = "many"\n', "[limits] concurrency"),
        ("\n[limits]\nconcurrency = 0\n", "[limits] concurrency"),
        ("\n[limits]\nmax_attempts = 1.5\n", "[limits] max_attempts"),
        ('\n[pricing]\ninput = "cheap"\n', "[pricing] input"),
        ("\n[provider.headers]\nx-team = [1]\n", "[provider] headers.x-team"),
        ('\n[output]\npath = "x.parquet"\nformat = "csv"\n', "[output] format: unknown key"),
    ],
)
def test_unknown_keys_and_wrong_types_name_the_file_and_key(
    write_job: WriteJob, extra: str, named: str
) -> None:
    """A misspelt key or a value of the wrong type raises JobFileError naming the file and `[section] key`."""
    path = write_job(URL, header=job_text(extra=extra))
    message = load_error(path)
    assert message.startswith(f"{path}: invalid job file")
    assert named in message


def test_wrong_provider_kind_is_rejected(write_job: WriteJob) -> None:
    """A `kind` batchrun does not speak is rejected naming `[provider] kind`."""
    path = write_job(URL, header=job_text(f'kind = "gemini"\nbase_url = "{URL}"\nmodel = "m"'))
    message = load_error(path)
    assert "[provider] kind: unknown kind 'gemini'; known: anthropic, openai" in message


def test_a_batch_api_job_on_a_ray_cluster_is_refused_saying_which_to_change(write_job: WriteJob) -> None:
    """`[batch] enabled` with `[engine] kind = "ray"` is refused at load (the provider runs the batch)."""
    path = write_job(URL, header=job_text(extra="\n[batch]\nenabled = true\n"))
    message = load_error(path, ('engine.kind="ray"',))
    assert "[batch] enabled needs no cluster" in message
    assert 'set [engine] kind = "local"' in message


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ('model = "qwen-max"', "params.model is not allowed: set it in [provider] model"),
        (
            'messages = [{ role = "user", content = "hi" }]',
            "params.messages is not allowed: set it in [prompt]",
        ),
    ],
)
def test_reserved_params_are_rejected(write_job: WriteJob, params: str, fragment: str) -> None:
    """`params.model` and `params.messages` are refused at load time."""
    path = write_job(URL, header=job_text(extra=f"\n[params]\n{params}\n"))
    message = load_error(path)
    assert str(path) in message
    assert fragment in message


def test_stream_false_is_accepted(write_job: WriteJob) -> None:
    """`params.stream = false` loads as it is, with nothing added."""
    job = load_job(write_job(URL, header=job_text(extra="\n[params]\nstream = false\n")))
    assert job.params == {"stream": False}


def test_stream_true_asks_for_the_usage_chunk(write_job: WriteJob) -> None:
    """`params.stream = true` (kind openai) gets `stream_options.include_usage` added, so usage arrives."""
    job = load_job(write_job(URL, header=job_text(extra="\n[params]\nstream = true\n")))
    assert job.params == {"stream": True, "stream_options": {"include_usage": True}}


def test_dashscope_thinking_streams(write_job: WriteJob) -> None:
    """`enable_thinking = true` without `stream` turns streaming on (DashScope allows thinking only so)."""
    job = load_job(write_job(URL, header=job_text(extra="\n[params]\nenable_thinking = true\n")))
    assert job.params["stream"] is True
    assert job.params["stream_options"] == {"include_usage": True}
    kept = load_job(
        write_job(URL, header=job_text(extra="\n[params]\nenable_thinking = true\nstream = false\n"))
    )
    assert kept.params == {"enable_thinking": True, "stream": False}


def test_template_and_messages_column_together_are_rejected(write_job: WriteJob) -> None:
    """`[prompt]` with both template and messages_column names both keys in the error."""
    text = job_text().replace('template = "{text}"', 'template = "{text}"\nmessages_column = "messages"')
    message = load_error(write_job(URL, header=text))
    assert "prompt" in message
    assert "either template or messages_column" in message


def test_toml_syntax_error_names_the_file(write_job: WriteJob) -> None:
    """A job file that is not valid TOML raises JobFileError naming the file and the TOML error's line."""
    path = write_job(URL, header=job_text(extra="\n[limits\nconcurrency = 8\n"))
    message = load_error(path)
    assert message.startswith(f"{path}: not valid TOML")
    assert "line" in message


def test_missing_job_file_is_named(tmp_path: Path) -> None:
    """A job path that does not exist raises JobFileError saying so."""
    path = tmp_path / "nope.toml"
    assert load_error(path) == f"{path}: no such job file"


def test_missing_provider_section_is_reported(write_job: WriteJob) -> None:
    """A job without `[provider]` fails saying the provider section is required."""
    text = 'name = "t"\n\n[input]\npath = "in.jsonl"\n\n[prompt]\ntemplate = "{text}"\n'
    message = load_error(write_job(URL, header=text))
    assert "provider: required key is missing" in message


def test_provider_without_preset_or_base_url_is_rejected(write_job: WriteJob) -> None:
    """A `[provider]` that names neither a preset nor a base_url says to set one of them."""
    message = load_error(write_job(URL, header=job_text('model = "qwen3-max"')))
    assert "set preset (see `batchrun providers`) or base_url" in message


def test_model_is_required_with_a_template(write_job: WriteJob) -> None:
    """A template job without `[provider] model` is rejected; a batch-lines job may omit the model."""
    message = load_error(write_job(URL, header=job_text(f'base_url = "{URL}"')))
    assert "[provider] model is required" in message
    batch = job_text(f'base_url = "{URL}"').replace('[prompt]\ntemplate = "{text}"\n', "")
    job = load_job(write_job(URL, header=batch, name="batch.toml"))
    assert job.provider.model is None
    assert job.prompt.template is None


def test_numeric_looking_names_from_the_command_line_stay_text(write_job: WriteJob) -> None:
    """`--set provider.model=123` parses as a TOML number but is taken as the model's name."""
    job = load_job(write_job(URL, header=job_text()), ("provider.model=123",))
    assert job.provider.model == "123"


def test_a_header_with_a_line_break_is_rejected_naming_it(write_job: WriteJob) -> None:
    """A header value is one line: a line break would end the request's headers early."""
    provider = f'base_url = "{URL}"\nmodel = "qwen3-max"\nheaders = {{ "X-Note" = "a\\r\\nX-Evil: 1" }}'
    message = load_error(write_job(URL, header=job_text(provider)))
    assert "[provider] headers" in message
    assert "'X-Note' holds a line break" in message
