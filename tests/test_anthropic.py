"""The Anthropic Messages adapter: request translation, replies, usage, errors, job checks, a run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from batchrun.engines.run import run_job
from batchrun.errors import ErrorClass, JobFileError, ProviderError
from batchrun.job.loader import load_job
from batchrun.providers import make_provider
from batchrun.providers.anthropic import AnthropicProvider, to_messages_body
from batchrun.records import Request, Usage
from tests.conftest import load_error
from tests.test_runner_mock import WriteJob

PROVIDER = AnthropicProvider("https://dashscope-intl.aliyuncs.com/apps/anthropic/", "sk-ant", {})
BASE = {"model": "qwen3-max", "max_tokens": 64}


def message(content: list[dict[str, Any]], stop_reason: str = "end_turn", **usage: int) -> bytes:
    """A Messages API reply body."""
    return json.dumps(
        {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": "qwen3-max",
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage or {"input_tokens": 10, "output_tokens": 3},
        }
    ).encode()


def translated(**body: Any) -> dict[str, Any]:
    """What the adapter sends for an OpenAI-shaped body."""
    request = Request("c1", {**BASE, **body}, b"", 1, 1)
    return json.loads(PROVIDER.content(request))  # type: ignore[no-any-return]


def test_url_and_headers_use_x_api_key_and_version() -> None:
    """The URL is `{base}/v1/messages`; the key goes in `x-api-key` next to `anthropic-version`."""
    assert PROVIDER.url() == "https://dashscope-intl.aliyuncs.com/apps/anthropic/v1/messages"
    headers = PROVIDER.headers()
    assert headers["x-api-key"] == "sk-ant"
    assert headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in headers


def test_bearer_auth_is_an_option_and_job_headers_win() -> None:
    """`auth = "bearer"` sends `Authorization: Bearer`; a job's own anthropic-version replaces the default."""
    provider = make_provider("anthropic", "http://x", "k", {"anthropic-version": "2024-01-01"}, "bearer")
    headers = provider.headers()
    assert headers["authorization"] == "Bearer k"
    assert "x-api-key" not in headers
    assert headers["anthropic-version"] == "2024-01-01"


def test_openai_kind_can_send_the_key_as_x_api_key() -> None:
    """`auth = "x-api-key"` works for the OpenAI kind too (gateways that want it), with no Bearer header."""
    headers = make_provider("openai", "http://x/v1", "k", {}, "x-api-key").headers()
    assert headers["x-api-key"] == "k"
    assert "authorization" not in headers


def test_system_and_developer_messages_are_lifted_to_the_top() -> None:
    """System and developer messages leave `messages` and join into the top-level `system`."""
    body = translated(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": "Answer in English."},
            {"role": "user", "content": "Hi"},
        ]
    )
    assert body["system"] == "Be brief.\n\nAnswer in English."
    assert body["messages"] == [{"role": "user", "content": "Hi"}]
    assert body["max_tokens"] == 64


def test_system_blocks_with_cache_control_are_kept_as_blocks() -> None:
    """A system prompt in text blocks with `cache_control` is sent as blocks, not flattened."""
    block = {"type": "text", "text": "Long context", "cache_control": {"type": "ephemeral"}}
    body = translated(messages=[{"role": "system", "content": [block]}, {"role": "user", "content": "q"}])
    assert body["system"] == [block]


def test_parameters_are_renamed_or_passed_through() -> None:
    """`max_completion_tokens`, `stop` are renamed; `top_k`, `thinking`, `temperature` pass as given."""
    body = to_messages_body(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "q"}],
            "max_completion_tokens": 900,
            "stop": "END",
            "top_k": 20,
            "temperature": 1.5,
            "thinking": {"type": "enabled", "budget_tokens": 512},
        }
    )
    assert body["max_tokens"] == 900
    assert body["stop_sequences"] == ["END"]
    assert body["top_k"] == 20
    assert body["temperature"] == 1.5
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 512}
    assert "max_completion_tokens" not in body
    assert "stop" not in body


def test_openai_tools_become_input_schema_tools_and_anthropic_tools_pass() -> None:
    """OpenAI function tools get `input_schema`; a tool already in Anthropic's shape is sent as it is."""
    schema = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}
    native = {"name": "lookup", "description": "Find it", "input_schema": {"type": "object"}}
    body = translated(
        messages=[{"role": "user", "content": "q"}],
        tools=[
            {
                "type": "function",
                "function": {"name": "set_label", "description": "Label", "parameters": schema},
            },
            native,
        ],
    )
    assert body["tools"] == [{"name": "set_label", "input_schema": schema, "description": "Label"}, native]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        ({"type": "function", "function": {"name": "set_label"}}, {"type": "tool", "name": "set_label"}),
        ({"type": "any"}, {"type": "any"}),
        ({"type": "tool", "name": "x"}, {"type": "tool", "name": "x"}),
    ],
)
def test_tool_choice_in_either_dialect(choice: Any, expected: dict[str, Any]) -> None:
    """OpenAI's tool_choice values map to Anthropic's auto/any/none/tool; Anthropic's own pass."""
    assert (
        translated(messages=[{"role": "user", "content": "q"}], tool_choice=choice)["tool_choice"] == expected
    )


def test_image_parts_and_tool_turns_are_translated() -> None:
    """image_url parts become image blocks; assistant tool_calls and tool results become blocks."""
    call = {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    body = translated(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
                ],
            },
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "t1", "content": "42"},
        ]
    )
    user, assistant, result = body["messages"]
    assert user["content"][1] == {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}}
    assert user["content"][2]["source"] == {"type": "base64", "media_type": "image/png", "data": "iVBOR"}
    assert assistant["content"] == [{"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]
    assert result == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "42"}],
    }


def test_missing_max_tokens_in_a_request_is_a_row_error() -> None:
    """A batch line without max_tokens fails its row (the Messages API requires it), not the run."""
    request = Request("c1", {"model": "m", "messages": [{"role": "user", "content": "q"}]}, b"", 1, 1)
    with pytest.raises(ProviderError) as info:
        PROVIDER.content(request)
    assert info.value.error_class is ErrorClass.ROW
    assert "max_tokens" in info.value.message


def test_text_thinking_and_tool_use_blocks_map_to_columns() -> None:
    """Text, thinking and tool_use blocks land in completion, reasoning and OpenAI-shaped tool_calls."""
    reply = PROVIDER.parse(
        message(
            [
                {"type": "thinking", "thinking": "The user wants a label.", "signature": "sig"},
                {"type": "text", "text": "Labelling now."},
                {"type": "tool_use", "id": "toolu_1", "name": "set_label", "input": {"label": "positivo ✓"}},
            ],
            stop_reason="tool_use",
        )
    )
    assert reply.completion == "Labelling now."
    assert reply.reasoning == "The user wants a label."
    assert reply.finish_reason == "tool_calls"
    assert reply.tool_calls is not None
    calls = json.loads(reply.tool_calls)
    assert calls == [
        {
            "id": "toolu_1",
            "type": "function",
            "function": {"name": "set_label", "arguments": '{"label": "positivo ✓"}'},
        }
    ]
    assert reply.model == "qwen3-max"
    assert reply.response_id == "msg_01"


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("max_tokens", "length"),
        ("stop_sequence", "stop"),
        ("refusal", "content_filter"),
    ],
)
def test_stop_reason_maps_to_finish_reason(stop_reason: str, finish_reason: str) -> None:
    """Anthropic's stop reasons read as OpenAI's finish reasons."""
    reply = PROVIDER.parse(message([{"type": "text", "text": "x"}], stop_reason))
    assert reply.finish_reason == finish_reason


def test_usage_counts_every_input_token_and_cache_reads() -> None:
    """prompt_tokens = input + cache read + cache write; cached_tokens = cache read; total adds output."""
    reply = PROVIDER.parse(
        message(
            [{"type": "text", "text": "x"}],
            input_tokens=100,
            cache_read_input_tokens=2000,
            cache_creation_input_tokens=300,
            output_tokens=50,
        )
    )
    assert reply.usage == Usage(
        prompt_tokens=2400, completion_tokens=50, cached_tokens=2000, total_tokens=2450
    )


@pytest.mark.parametrize(
    ("status", "error", "error_class", "error_type"),
    [
        (529, {"type": "overloaded_error", "message": "Overloaded"}, ErrorClass.RETRY, "overloaded"),
        (429, {"type": "rate_limit_error", "message": "slow"}, ErrorClass.RETRY, "rate_limited"),
        (500, {"type": "api_error", "message": "oops"}, ErrorClass.RETRY, "server_error"),
        (401, {"type": "authentication_error", "message": "bad key"}, ErrorClass.FATAL, "auth"),
        (403, {"type": "permission_error", "message": "no"}, ErrorClass.FATAL, "auth"),
        (404, {"type": "not_found_error", "message": "model"}, ErrorClass.FATAL, "model_not_found"),
        (400, {"type": "invalid_request_error", "message": "bad"}, ErrorClass.ROW, "bad_request"),
        (413, {"type": "request_too_large", "message": "big"}, ErrorClass.ROW, "bad_request"),
    ],
)
def test_anthropic_error_bodies_are_classified(
    status: int, error: dict[str, str], error_class: ErrorClass, error_type: str
) -> None:
    """Every documented Anthropic error type gets its class and error_type, with its message kept."""
    body = json.dumps({"type": "error", "error": error}).encode()
    exc = PROVIDER.error(status, httpx.Headers({"retry-after": "3"}), body)
    assert exc.error_class is error_class
    assert exc.error_type == error_type
    assert exc.message == error["message"]
    assert exc.code == error["type"]
    assert exc.retry_after_s == 3


@pytest.mark.parametrize(
    ("body", "error_type", "error_class"),
    [
        (
            {"error": {"message": "Access denied, account in arrears", "code": "Arrearage"}},
            "billing",
            ErrorClass.FATAL,
        ),
        (
            {"code": "DataInspectionFailed", "message": "Inappropriate content"},
            "content_filter",
            ErrorClass.ROW,
        ),
    ],
)
def test_openai_and_dashscope_shaped_errors_are_accepted(
    body: dict[str, Any], error_type: str, error_class: ErrorClass
) -> None:
    """Qwen Cloud's Anthropic mode may answer in OpenAI's or DashScope's shape: the code still decides."""
    exc = PROVIDER.error(400, httpx.Headers(), json.dumps(body).encode())
    assert exc.error_type == error_type
    assert exc.error_class is error_class


def test_a_200_carrying_an_error_raises() -> None:
    """A 200 whose body is an Anthropic error object raises that error, classified by its type."""
    body = json.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    with pytest.raises(ProviderError) as info:
        PROVIDER.parse(body.encode())
    assert info.value.error_type == "overloaded"
    assert info.value.retryable


ANTHROPIC_JOB = """\
    name = "claude"
    [input]
    path = "reviews.jsonl"
    id_column = "id"
    [prompt]
    system = "Label the review."
    template = "{{text}}"
    [provider]
    preset = "qwen-cloud-anthropic"
    model = "qwen3-max"
    api_key_required = false
    [params]
    """


def test_missing_max_tokens_is_refused_at_load(write_job: WriteJob) -> None:
    """An anthropic job without [params] max_tokens fails at load, naming the file and the key."""
    path = write_job("", header=ANTHROPIC_JOB + "temperature = 0\n")
    message = load_error(path)
    assert message.startswith(str(path))
    assert "[params] max_tokens is required" in message


def test_openai_only_params_are_refused_for_anthropic(write_job: WriteJob) -> None:
    """`n = 2` with kind anthropic is refused at load with what to do instead."""
    path = write_job("", header=ANTHROPIC_JOB + "max_tokens = 8\nn = 2\n")
    with pytest.raises(JobFileError, match=r"\[params\] n is not part of the Messages API"):
        load_job(path)


def test_preset_fills_the_anthropic_endpoint(write_job: WriteJob) -> None:
    """The qwen-cloud-anthropic preset fills kind, base URL and key variable."""
    job = load_job(write_job("", header=ANTHROPIC_JOB + "max_tokens = 8\n"))
    assert job.provider.kind == "anthropic"
    assert job.provider.base_url == "https://dashscope-intl.aliyuncs.com/apps/anthropic"
    assert job.provider.api_key_env == "DASHSCOPE_API_KEY"


@pytest.mark.parametrize("auth", [None, "bearer"])
def test_anthropic_run_end_to_end(
    write_job: WriteJob, reviews: Path, monkeypatch: pytest.MonkeyPatch, auth: str | None
) -> None:
    """A run with kind anthropic sends Messages bodies (key per `auth`) and writes usage and cost."""
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-qwen")
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert len(seen) < 100, "runaway request loop"
        seen.append(request)
        body = json.loads(request.content)
        assert body["system"] == "Label the review."
        assert body["messages"][0]["role"] == "user"
        usage = {"input_tokens": 20, "cache_read_input_tokens": 10, "output_tokens": 2}
        return httpx.Response(200, content=message([{"type": "text", "text": "positive"}], **usage))

    path = write_job("", header=ANTHROPIC_JOB.replace("api_key_required = false\n", "") + "max_tokens = 8\n")
    job = load_job(path, [f"provider.auth={auth}"] if auth else [])
    summary = run_job(job, transport=httpx.MockTransport(handler))
    frame = pl.read_parquet(job.output_path)
    assert summary.exit_code == 0
    assert len(seen) == 40
    assert str(seen[0].url) == "https://dashscope-intl.aliyuncs.com/apps/anthropic/v1/messages"
    if auth == "bearer":
        assert seen[0].headers["authorization"] == "Bearer sk-qwen"
    else:
        assert seen[0].headers["x-api-key"] == "sk-qwen"
    assert frame["completion"].unique().to_list() == ["positive"]
    assert frame["prompt_tokens"].unique().to_list() == [30]
    assert frame["cached_tokens"].unique().to_list() == [10]
    expected_cost = (20 * 1.2 + 10 * 0.24 + 2 * 6.0) / 1e6  # qwen3-max, cached at 20% of input
    assert frame["cost_usd"][0] == pytest.approx(expected_cost)


def test_example_anthropic_job_runs_on_the_emulator(cli: Callable[..., Any], tmp_path: Path) -> None:
    """jobs/label_reviews_qwen_anthropic.toml runs on the emulator: every row a set_label tool call."""
    output = tmp_path / "labels.parquet"
    job = Path(__file__).resolve().parent.parent / "jobs" / "label_reviews_qwen_anthropic.toml"
    overrides = ("--set", "provider.preset=emulator", "--set", "provider.kind=anthropic")
    overrides += ("--set", "limits.requests_per_minute=600000")  # the job's 600 RPM would take 30 s
    result = cli("run", job, *overrides, "--output", output)
    frame = pl.read_parquet(output)
    assert result.exit_code == 0, result.stderr
    assert frame.height == 300
    assert frame["finish_reason"].unique().to_list() == ["tool_calls"]
    labels = {
        json.loads(json.loads(calls)[0]["function"]["arguments"])["label"] for calls in frame["tool_calls"]
    }
    assert labels <= {"positive", "negative", "mixed"}
    assert frame["reasoning"].null_count() == 0
