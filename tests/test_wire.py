"""Values a provider cannot take are refused at load naming the key, and `--set` values must be TOML."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batchrun.inputs import wire
from batchrun.job.loader import load_job
from tests.conftest import load_error

WriteJob = Callable[..., Path]

URL = "http://127.0.0.1:9/v1"


def nested(depth: int) -> Any:
    """A list nested `depth` levels deep."""
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (float("nan"), "is nan, which JSON cannot carry"),
        ({"a": [1, float("inf")]}, "value.a[1] is inf"),
        (datetime.date(2026, 1, 1), "is a date"),
        ({1: "x"}, "a key that is not text"),
        (2**70, "too large"),
        (nested(100_000), f"nests deeper than {wire.MAX_DEPTH} levels"),
    ],
)
def test_json_problem_names_what_json_cannot_carry(value: Any, fragment: str) -> None:
    """NaN, infinity, dates, non-text keys, huge integers and deep nesting are refused, with their path."""
    problem = wire.json_problem(value)
    assert problem is not None
    assert fragment in problem


def test_json_problem_accepts_ordinary_bodies() -> None:
    """A body of text, numbers, booleans, nulls, lists and tables within the depth is fine."""
    body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.5, "stop": None, "n": 1}
    assert wire.json_problem(body) is None
    assert wire.json_problem(nested(wire.MAX_DEPTH - 1)) is None  # MAX_DEPTH lists, one in another


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        ([], "non-empty list"),
        (["hello"], "messages[0] is 'hello': a message is an object"),
        ([{"content": "x"}], "has no role"),
        ([{"role": "user", "content": 5}], "content must be text or a list of part objects"),
        ([{"role": "user", "content": ["part"]}], "content must be text or a list of part objects"),
        ([{"role": "assistant", "content": None, "tool_calls": ["x"]}], "tool_calls must be a list"),
    ],
)
def test_messages_problem_names_the_message(messages: Any, fragment: str) -> None:
    """A message that is not an object with a role and text or part content is refused, naming it."""
    problem = wire.messages_problem(messages)
    assert problem is not None
    assert fragment in problem


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ("max_tokens = 1e999", "max_tokens must be a whole number of 1 or more, not inf"),
        ("max_tokens = [1]", "max_tokens must be a whole number of 1 or more, not [1]"),
        ('max_tokens = "sixteen"', "max_tokens must be a whole number of 1 or more, not 'sixteen'"),
        ("max_tokens = 0", "max_tokens must be a whole number of 1 or more, not 0"),
        ("temperature = nan", "temperature is nan, which JSON cannot carry"),
        ("top_p = inf", "top_p is inf"),
        ('stream = "yes"', "stream must be true or false"),
        ("stop = [1, 2]", "stop must be text or a list of text"),
        ("tools = [1]", "tools must be a list of tool tables"),
        ("when = 2026-01-01", "when is a date"),
        ("extra = { a = nan }", "extra.a is nan"),
    ],
)
def test_params_a_provider_cannot_take_are_refused_at_load(
    write_job: WriteJob, params: str, fragment: str
) -> None:
    """NaN, infinity, dates and wrong types in `[params]` stop the job at load, naming the file and key."""
    path = write_job(URL, header=_job(params))
    message = load_error(path)
    assert str(path) in message
    assert f"[params] {fragment}" in message


def test_unknown_params_keep_any_json_value(write_job: WriteJob) -> None:
    """A parameter the wire formats do not define passes with any JSON value (servers add their own)."""
    job = load_job(write_job(URL, header=_job('custom = { a = [1, "x"] }\nseed = 7')))
    assert job.params["custom"] == {"a": [1, "x"]}


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("params.temperature=0.7.1", "[params] temperature takes a number, and '0.7.1' is not a TOML value"),
        ("params.max_tokens=sixteen", "[params] max_tokens takes a whole number of 1 or more, and 'sixteen'"),
        ("limits.concurrency=many", "[limits] concurrency takes a whole number, and 'many'"),
        ("cache.enabled=yes", "[cache] enabled takes true or false"),
        ("matrix.model=qwen", "[matrix] model takes a list of values"),
    ],
)
def test_set_value_that_is_not_toml_for_a_typed_key_is_refused(
    write_job: WriteJob, override: str, fragment: str
) -> None:
    """`--set` with a bare word for a key that is not text exits naming the key and the value."""
    message = load_error(write_job(URL), (override,))
    assert f"--set {override}:" in message
    assert fragment in message


@pytest.mark.parametrize(
    ("override", "section", "key", "expected"),
    [
        ("provider.model=qwen-max", "provider", "model", "qwen-max"),
        ("params.user=alice", "params", "user", "alice"),
        ("params.reasoning_effort=low", "params", "reasoning_effort", "low"),
        ("input.on_bad_row=skip", "input", "on_bad_row", "skip"),
        ("params.vendor_flag=on", "params", "vendor_flag", "on"),
    ],
)
def test_set_bare_word_is_text_for_a_text_key(
    write_job: WriteJob, override: str, section: str, key: str, expected: str
) -> None:
    """A key that takes text (or a parameter with no fixed type) takes a bare word as text, as before."""
    job = load_job(write_job(URL), [override])
    value = getattr(job, section)
    assert (value[key] if isinstance(value, dict) else getattr(value, key)) == expected


def test_toml_nested_too_deep_is_a_job_file_error(write_job: WriteJob) -> None:
    """A job file (or a `--set` value) nested deeper than tomllib can read is refused naming the file."""
    path = write_job(URL, header=_job("deep = " + "[" * 100_000 + "]" * 100_000))
    assert "nested too deep" in load_error(path)
    message = load_error(write_job(URL, name="two.toml"), ("params.max_tokens=" + "[" * 100_000,))
    assert "nested too deep" in message


def test_a_non_ascii_header_is_refused_at_load(write_job: WriteJob) -> None:
    """A `[provider.headers]` value HTTP cannot carry is refused naming the header."""
    path = write_job(URL, header=_job("", headers='[provider.headers]\nx-team = "caf\\u00e9"\n'))
    assert "header 'x-team' holds a character that is not ASCII" in load_error(path)


def test_bytes_from_the_command_line_that_are_not_utf8_are_refused(write_job: WriteJob) -> None:
    """A `--set` text holding bytes that are not UTF-8 (argv's surrogate escapes) is refused at load."""
    message = load_error(write_job(URL), ("prompt.system=caf\udce9",))
    assert "system holds bytes that are not UTF-8" in message


def _job(params: str, headers: str = "") -> str:
    """A small job file with the given `[params]` body."""
    return (
        'name = "t"\n\n[input]\npath = "in.jsonl"\n\n[prompt]\ntemplate = "{text}"\n\n'
        f'[provider]\nbase_url = "{URL}"\nmodel = "qwen3-max"\n\n{headers}\n[params]\n{params}\n'
    )


@pytest.mark.parametrize(
    "value",
    [nested(wire.MAX_DEPTH - 1), nested(wire.MAX_DEPTH), {"n": 2**64 - 1}, {"n": 2**64}, {"n": -(2**63) - 1}],
)
def test_the_fast_check_of_parsed_json_agrees_with_the_walk(value: Any) -> None:
    """For values orjson parsed, orjson's own limits (depth, 64-bit integers) and the walk say the same."""
    assert (wire.json_problem(value, parsed=True) is None) == (wire.json_problem(value) is None)
