"""Streamed replies for both kinds: SSE folded into one reply, broken streams retried, mid-stream errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from batchrun.emulator import STATUS_TRUNCATED, EmulatorServer
from batchrun.engines.run import run_job
from batchrun.errors import ErrorClass, ProviderError
from batchrun.job.loader import load_job
from batchrun.providers.openai import OpenAIProvider
from batchrun.providers.streaming import AnthropicStream, OpenAIStream
from batchrun.records import Request, Usage
from tests.test_runner_mock import WriteJob

Start = Callable[..., EmulatorServer]


def chunk(delta: dict[str, Any], index: int = 0, finish: str | None = None) -> str:
    """One `chat.completion.chunk` payload."""
    choice = {"index": index, "delta": delta, "finish_reason": finish}
    return json.dumps({"id": "chatcmpl-s1", "model": "qwen3-max", "choices": [choice]})


def feed_all(parser: OpenAIStream | AnthropicStream, events: list[tuple[str, str]]) -> bool:
    """Feed (event, data) pairs until the parser says the stream ended; True if it did."""
    return any(parser.feed(event, data) for event, data in events)


def test_openai_chunks_join_content_reasoning_and_tool_calls_by_index() -> None:
    """Content, reasoning_content / reasoning and tool-call fragments (two calls, interleaved) are joined."""
    calls = [
        {"index": 0, "id": "call_a", "type": "function", "function": {"name": "get", "arguments": ""}},
        {"index": 1, "id": "call_b", "type": "function", "function": {"name": "put", "arguments": '{"x"'}},
    ]
    usage = {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16}
    datas = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"reasoning_content": "Think "}),
        chunk({"reasoning": "twice."}),
        chunk({"content": "Calling"}),
        chunk({"content": " tools."}),
        chunk({"tool_calls": calls}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"id": '}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": ": 1}"}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "7}"}}]}),
        chunk({}, finish="tool_calls"),
        json.dumps({"id": "chatcmpl-s1", "choices": [], "usage": usage}),
        "[DONE]",
    ]
    parser = OpenAIStream()
    assert feed_all(parser, [("message", d) for d in datas])
    reply = parser.reply()
    assert reply.completion == "Calling tools."
    assert reply.reasoning == "Think twice."
    assert reply.finish_reason == "tool_calls"
    assert reply.usage == Usage(prompt_tokens=9, completion_tokens=7, total_tokens=16)
    assert reply.response_id == "chatcmpl-s1"
    assert reply.tool_calls is not None
    assert json.loads(reply.tool_calls) == [
        {"id": "call_a", "type": "function", "function": {"name": "get", "arguments": '{"id": 7}'}},
        {"id": "call_b", "type": "function", "function": {"name": "put", "arguments": '{"x": 1}'}},
    ]


def test_openai_stream_with_n_choices() -> None:
    """Chunks of several choices fill `completions`, the first choice giving `completion`."""
    datas = [chunk({"content": "a"}, 0), chunk({"content": "b"}, 1), chunk({"content": "c"}, 0), "[DONE]"]
    parser = OpenAIStream()
    feed_all(parser, [("message", d) for d in datas])
    reply = parser.reply()
    assert reply.completion == "ac"
    assert reply.completions == ("ac", "b")


def test_openai_stream_without_done_is_retried() -> None:
    """A stream that ends before `[DONE]` and before a finish_reason is a retryable `truncated`."""
    parser = OpenAIStream()
    assert not feed_all(parser, [("message", chunk({"content": "Half an ans"}))])
    with pytest.raises(ProviderError) as info:
        parser.reply()
    assert info.value.retryable
    assert info.value.error_type == "truncated"


def test_openai_stream_ending_after_its_finish_reason_without_done_is_an_answer() -> None:
    """Some servers never send `data: [DONE]`: a stream that ends after its finish_reason is whole."""
    parser = OpenAIStream()
    events = [("message", chunk({"content": "Whole"})), ("message", chunk({}, finish="stop"))]
    assert not feed_all(parser, events)
    reply = parser.reply()
    assert (reply.completion, reply.finish_reason) == ("Whole", "stop")


@pytest.mark.parametrize(
    ("payload", "error_type", "error_class"),
    [
        (
            {"error": {"message": "Inappropriate content", "code": "data_inspection_failed"}},
            "content_filter",
            ErrorClass.ROW,
        ),
        (
            {"code": "DataInspectionFailed", "message": "Inappropriate content"},
            "content_filter",
            ErrorClass.ROW,
        ),
        ({"error": {"message": "busy", "type": "server_error"}}, "server_error", ErrorClass.RETRY),
    ],
)
def test_openai_error_chunk_is_classified(
    payload: dict[str, Any], error_type: str, error_class: ErrorClass
) -> None:
    """An error object inside the stream (after HTTP 200) raises the classified error."""
    parser = OpenAIStream()
    parser.feed("message", chunk({"content": "Some"}))
    with pytest.raises(ProviderError) as info:
        parser.feed("message", json.dumps(payload))
    assert info.value.error_type == error_type
    assert info.value.error_class is error_class


def anthropic_events(*, stop: bool = True, error: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """A Messages stream with a thinking, a text and a tool_use block, pings, and cache usage."""
    usage = {
        "input_tokens": 12,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 0,
        "output_tokens": 1,
    }
    message = {
        "id": "msg_s1",
        "type": "message",
        "role": "assistant",
        "model": "qwen3-max",
        "content": [],
        "usage": usage,
    }
    items: list[dict[str, Any]] = [
        {"type": "message_start", "message": message},
        {"type": "ping"},
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""},
        },
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Hmm, "}},
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "a label."},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "signature_delta", "signature": "c2ln"},
        },
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Label"}},
        {"type": "ping"},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "ling."}},
        {"type": "content_block_stop", "index": 1},
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "set", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": '{"label": '},
        },
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": '"pos"}'},
        },
        {"type": "content_block_stop", "index": 2},
    ]
    if error is not None:
        items.append({"type": "error", "error": error})
    items.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 42},
        }
    )
    if stop:
        items.append({"type": "message_stop"})
    return [(item["type"], json.dumps(item)) for item in items]


def test_anthropic_events_fold_into_blocks_and_usage() -> None:
    """Thinking, text and tool_use deltas join; message_delta's usage counts output; pings change nothing."""
    parser = AnthropicStream()
    assert feed_all(parser, anthropic_events())
    reply = parser.reply()
    assert reply.reasoning == "Hmm, a label."
    assert reply.completion == "Labelling."
    assert reply.finish_reason == "tool_calls"
    assert reply.tool_calls is not None
    assert json.loads(json.loads(reply.tool_calls)[0]["function"]["arguments"]) == {"label": "pos"}
    assert reply.usage == Usage(prompt_tokens=112, completion_tokens=42, cached_tokens=100, total_tokens=154)
    assert reply.response_id == "msg_s1"


def test_anthropic_stream_without_message_stop_is_retried() -> None:
    """A Messages stream cut before its stop_reason is a retryable `truncated`; one cut after it is whole."""
    events = anthropic_events(stop=False)
    parser = AnthropicStream()
    assert not feed_all(parser, events[:-1])  # without message_delta
    with pytest.raises(ProviderError) as info:
        parser.reply()
    assert (info.value.retryable, info.value.error_type) == (True, "truncated")
    whole = AnthropicStream()
    assert not feed_all(whole, events)
    assert whole.reply().finish_reason == "tool_calls"


def test_anthropic_error_event_is_classified() -> None:
    """An `error` event mid-stream (overloaded) raises a retryable `overloaded` error."""
    parser = AnthropicStream()
    with pytest.raises(ProviderError) as info:
        feed_all(parser, anthropic_events(error={"type": "overloaded_error", "message": "Overloaded"}))
    assert info.value.error_type == "overloaded"
    assert info.value.retryable


def sse_response(frames: list[str], status: int = 200) -> httpx.Response:
    """An HTTP response whose body is these SSE frames."""
    return httpx.Response(
        status, content="".join(frames).encode(), headers={"content-type": "text/event-stream"}
    )


def test_broken_stream_then_error_event_then_success(write_job: WriteJob, reviews: Path) -> None:
    """Through a run: a cut stream and an overloaded error event are retried; the third try is saved."""
    events = anthropic_events()
    whole = [f"event: {name}\ndata: {data}\n\n" for name, data in events]
    error = json.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    outcomes = [whole[:5], [*whole[:5], f"event: error\ndata: {error}\n\n"], whole]
    tries: dict[str, int] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert body["stream"] is True
        row = body["messages"][-1]["content"]
        tries[row] = tries.get(row, 0) + 1
        assert tries[row] <= 3, "runaway retries"
        return sse_response(outcomes[tries[row] - 1])

    pl.read_ndjson(reviews).head(1).write_ndjson(reviews.parent / "one.jsonl")
    overrides = [
        "provider.kind=anthropic",
        "params.stream=true",
        f"input.path={reviews.parent / 'one.jsonl'}",
    ]
    job = load_job(write_job("http://llm.test"), overrides)
    summary = run_job(job, transport=httpx.MockTransport(handler))
    (row,) = pl.read_parquet(job.output_path).iter_rows(named=True)
    assert summary.exit_code == 0
    assert row["attempts"] == 3
    assert row["completion"] == "Labelling."
    assert row["prompt_tokens"] == 112


def test_stream_request_answered_with_plain_json_is_read(write_job: WriteJob, reviews: Path) -> None:
    """A server that ignores `stream` and answers one JSON reply still gives the row its answer."""

    def handler(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["stream_options"] == {"include_usage": True}
        message = {"role": "assistant", "content": "ok"}
        return httpx.Response(
            200,
            json={
                "id": "x",
                "model": "m",
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            },
        )

    job = load_job(write_job("http://llm.test/v1"), ["params.stream=true"])
    summary = run_job(job, transport=httpx.MockTransport(handler))
    assert summary.exit_code == 0
    assert pl.read_parquet(job.output_path)["completion"].unique().to_list() == ["ok"]


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_streamed_run_matches_the_whole_reply_run_despite_cut_streams(
    write_job: WriteJob, reviews: Path, emulator: Start, kind: str
) -> None:
    """Streaming through the emulator, with a third of streams cut midway, gives the same rows as JSON."""
    plain_server = emulator()
    faulty = emulator(rate_truncate=0.3, seed=5)
    base = {"openai": plain_server.base_url, "anthropic": plain_server.root_url}[kind]
    faulty_base = {"openai": faulty.base_url, "anthropic": faulty.root_url}[kind]
    whole = load_job(
        write_job(base), [f"provider.kind={kind}", f"output.path={reviews.parent / 'whole.parquet'}"]
    )
    streamed = load_job(
        write_job(faulty_base, name="s.toml"),
        [f"provider.kind={kind}", "params.stream=true", f"output.path={reviews.parent / 'streamed.parquet'}"],
    )
    assert run_job(whole).exit_code == 0
    assert run_job(streamed).exit_code == 0
    columns = ["id", "completion", "finish_reason", "prompt_tokens", "completion_tokens", "total_tokens"]
    a = pl.read_parquet(whole.output_path).select(columns)
    b = pl.read_parquet(streamed.output_path)
    assert b.select(columns).equals(a)
    assert faulty.emulator.requests_by_status[STATUS_TRUNCATED] > 0
    assert b["attempts"].max() > 1  # type: ignore[operator]


def test_batch_line_streaming_body_gets_the_usage_option() -> None:
    """A streaming body lacking stream_options (a batch line) gets include_usage; others go as they are."""
    provider = OpenAIProvider("http://llm.test/v1", None, {})
    streaming = Request("c1", {"model": "m", "messages": [], "stream": True}, b"{}", 1, 1)
    thinking = Request("c2", {"model": "m", "messages": [], "enable_thinking": True}, b"{}", 1, 1)
    plain = Request("c3", {"model": "m", "messages": []}, b'{"as":"given"}', 1, 1)
    assert json.loads(provider.content(streaming))["stream_options"] == {"include_usage": True}
    assert json.loads(provider.content(thinking))["stream"] is True
    assert provider.streams(thinking)
    assert provider.content(plain) == b'{"as":"given"}'
    assert not provider.streams(plain)
