"""The emulator's Anthropic route and its replies on request: thinking, tool calls, JSON, n choices, SSE."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from batchrun.emulator import EmulatorServer
from batchrun.engines.run import run_job
from batchrun.job.loader import load_job
from tests.test_runner_mock import WriteJob

Start = Callable[..., EmulatorServer]
USER = [{"role": "user", "content": "Label this review: great battery."}]
SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["positive", "negative"]},
        "score": {"type": "integer"},
    },
    "required": ["label", "score"],
}
OPENAI_TOOL = {"type": "function", "function": {"name": "set_label", "parameters": SCHEMA}}
ANTHROPIC_TOOL = {"name": "set_label", "input_schema": SCHEMA}


def post(server: EmulatorServer, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    """POST a JSON body to the emulator's root URL + path."""
    with httpx.Client(base_url=server.root_url, timeout=10) as http:
        return http.post(path, json=body, headers=headers)


def sse(response: httpx.Response) -> list[tuple[str | None, str]]:
    """(event name, data) of each server-sent event of a whole response."""
    events = []
    for frame in response.text.split("\n\n"):
        if not frame.strip():
            continue
        fields = dict(line.split(": ", 1) for line in frame.splitlines())
        events.append((fields.get("event"), fields["data"]))
    return events


def test_messages_route_answers_like_chat_completions(emulator: Start) -> None:
    """`/v1/messages` answers the same text as `/v1/chat/completions` for the same conversation."""
    server = emulator()
    system = "Be brief."
    chat = post(
        server,
        "/v1/chat/completions",
        {"model": "m", "messages": [{"role": "system", "content": system}, *USER]},
    )
    message = post(
        server, "/v1/messages", {"model": "m", "max_tokens": 64, "system": system, "messages": USER}
    )
    assert message.status_code == 200
    body = message.json()
    assert body["type"] == "message"
    assert body["content"] == [{"type": "text", "text": chat.json()["choices"][0]["message"]["content"]}]
    assert body["stop_reason"] == "end_turn"
    assert body["usage"]["input_tokens"] == chat.json()["usage"]["prompt_tokens"]


def test_messages_route_checks_key_and_body_in_anthropic_shape(emulator: Start) -> None:
    """A wrong key is a 401 authentication_error; a missing max_tokens is a 400 invalid_request_error."""
    server = emulator(api_key="sk-emu")
    denied = post(
        server, "/v1/messages", {"model": "m", "max_tokens": 5, "messages": USER}, **{"x-api-key": "nope"}
    )
    assert denied.status_code == 401
    assert denied.json()["error"]["type"] == "authentication_error"
    missing = post(server, "/v1/messages", {"model": "m", "messages": USER}, **{"x-api-key": "sk-emu"})
    assert missing.status_code == 400
    assert missing.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required (an integer >= 1)"},
    }
    bearer = post(
        server,
        "/v1/messages",
        {"model": "m", "max_tokens": 5, "messages": USER},
        authorization="Bearer sk-emu",
    )
    assert bearer.status_code == 200


def test_injected_faults_use_the_anthropic_error_shape(emulator: Start) -> None:
    """A 529 fault on the messages route is Anthropic's overloaded_error body."""
    server = emulator(rate_529=1.0)
    response = post(server, "/v1/messages", {"model": "m", "max_tokens": 5, "messages": USER})
    assert response.status_code == 529
    assert response.json()["error"]["type"] == "overloaded_error"


def test_thinking_and_tool_use_blocks_on_request(emulator: Start) -> None:
    """`thinking` adds a signed thinking block; `tools` gets a tool_use whose input fits the schema."""
    server = emulator()
    body = {
        "model": "m",
        "max_tokens": 256,
        "messages": USER,
        "thinking": {"type": "enabled", "budget_tokens": 128},
        "tools": [ANTHROPIC_TOOL],
        "tool_choice": {"type": "any"},
    }
    reply = post(server, "/v1/messages", body).json()
    thinking, tool_use = reply["content"]
    assert thinking["type"] == "thinking"
    assert thinking["thinking"]
    assert thinking["signature"]
    assert tool_use["type"] == "tool_use"
    assert tool_use["name"] == "set_label"
    assert tool_use["input"]["label"] in ("positive", "negative")
    assert isinstance(tool_use["input"]["score"], int)
    assert reply["stop_reason"] == "tool_use"


def test_openai_route_tool_call_reasoning_json_and_n(emulator: Start) -> None:
    """The chat route answers tool calls, reasoning_content, JSON mode and n choices on request."""
    server = emulator()
    tool = post(
        server,
        "/v1/chat/completions",
        {"model": "m", "messages": USER, "tools": [OPENAI_TOOL], "enable_thinking": True},
    )
    choice = tool.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["reasoning_content"]
    assert json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"])["label"] in (
        "positive",
        "negative",
    )
    assert tool.json()["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0
    no_tools = post(
        server,
        "/v1/chat/completions",
        {"model": "m", "messages": USER, "tools": [OPENAI_TOOL], "tool_choice": "none"},
    )
    assert no_tools.json()["choices"][0]["finish_reason"] in ("stop", "length")
    fmt = {"type": "json_schema", "json_schema": {"name": "label", "schema": SCHEMA}}
    as_json = post(server, "/v1/chat/completions", {"model": "m", "messages": USER, "response_format": fmt})
    assert set(json.loads(as_json.json()["choices"][0]["message"]["content"])) == {"label", "score"}
    several = post(server, "/v1/chat/completions", {"model": "m", "messages": USER, "n": 3}).json()["choices"]
    assert [c["index"] for c in several] == [0, 1, 2]
    assert len({c["message"]["content"] for c in several}) > 1


def test_openai_stream_ends_with_usage_and_done(emulator: Start) -> None:
    """A streamed chat reply joins to the whole reply's text and ends with a usage chunk, then [DONE]."""
    server = emulator()
    whole = post(server, "/v1/chat/completions", {"model": "m", "messages": USER}).json()
    body = {"model": "m", "messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    events = sse(post(server, "/v1/chat/completions", body))
    assert events[-1] == (None, "[DONE]")
    chunks = [json.loads(data) for _, data in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == whole["usage"]


def test_anthropic_stream_event_order(emulator: Start) -> None:
    """A streamed message runs message_start, ping, block events, message_delta with usage, message_stop."""
    server = emulator()
    body = {"model": "m", "max_tokens": 64, "messages": USER, "stream": True}
    names = [name for name, _ in sse(post(server, "/v1/messages", body))]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-2:] == ["message_delta", "message_stop"]
    assert "content_block_delta" in names


def test_emulator_preset_runs_an_anthropic_job(write_job: WriteJob, reviews: Path) -> None:
    """The emulator preset with `--set provider.kind=anthropic` runs a job over the messages route."""
    header = """\
        name = "emu-anthropic"
        [input]
        path = "reviews.jsonl"
        id_column = "id"
        [prompt]
        system = "Label the review."
        template = "{{text}}"
        [provider]
        preset = "emulator"
        model = "qwen3-max"
        [params]
        max_tokens = 32
        thinking = {type = "enabled", budget_tokens = 64}
        """
    job = load_job(write_job("", header=header), ["provider.kind=anthropic"])
    summary = run_job(job)
    frame = pl.read_parquet(job.output_path)
    assert summary.exit_code == 0
    assert frame["response_id"].str.starts_with("msg_emu_").all()
    assert frame["reasoning"].null_count() == 0
    assert frame["completion"].null_count() == 0
    assert frame["finish_reason"].is_in(["stop", "length"]).all()


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_tool_calls_column_through_a_run(
    write_job: WriteJob, reviews: Path, emulator: Start, kind: str
) -> None:
    """A job offering a tool gets `tool_calls` JSON text and finish_reason tool_calls for both kinds."""
    server = emulator()
    base_url = server.base_url if kind == "openai" else server.root_url
    tools = (
        '[{type="function", function={name="set_label", parameters={properties={label={type="string"}}}}}]'
    )
    job = load_job(write_job(base_url), [f"provider.kind={kind}", f"params.tools={tools}"])
    summary = run_job(job)
    frame = pl.read_parquet(job.output_path)
    assert summary.exit_code == 0
    assert frame["finish_reason"].unique().to_list() == ["tool_calls"]
    calls = [json.loads(text) for text in frame["tool_calls"].to_list()]
    assert {call[0]["function"]["name"] for call in calls} == {"set_label"}
    assert all("label" in json.loads(call[0]["function"]["arguments"]) for call in calls)
