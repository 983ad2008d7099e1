"""The emulator's fidelity, judged by the official `openai` and `anthropic` SDKs (test-only dependencies):
chat replies, whole and streamed, and the batch calls of both Batch APIs.

Each reply is read by the SDK's own client (whole and streamed, with its stream accumulators) and also
validated against the SDK's pydantic types: the clients build models without validation, so this second
pass is what catches a field of the wrong type or a missing required one.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.messages import MessageBatch, MessageBatchIndividualResponse
from openai.types import Batch, FileObject
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import TypeAdapter

from batchrun.emulator import DIRECTIVE_400, EmulatorServer

Start = Callable[..., EmulatorServer]
KEY = "sk-emulator"
USER = [{"role": "user", "content": "Is this review positive? 'Battery lasts for days.'"}]
SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["positive", "negative"]},
        "confidence": {"type": "number"},
    },
    "required": ["label", "confidence"],
}
STREAM_EVENT: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
POLLS = 400  # x 20 ms at most, waiting for a batch (the emulator's take about 0.3 s)
PROMPTS = ["Battery lasts for days.", f"{DIRECTIVE_400} Broke in a week.", "Fine for the price."]


@pytest.fixture
def server(emulator: Start) -> EmulatorServer:
    """An emulator that wants the key, as a real endpoint does."""
    return emulator(api_key=KEY)


@pytest.fixture
def oai(server: EmulatorServer) -> Iterator[openai.OpenAI]:
    """The official OpenAI client pointed at the emulator, without retries."""
    with openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=10) as client:
        yield client


@pytest.fixture
def claude(server: EmulatorServer) -> Iterator[anthropic.Anthropic]:
    """The official Anthropic client pointed at the emulator, without retries."""
    with anthropic.Anthropic(base_url=server.root_url, api_key=KEY, max_retries=0, timeout=10) as client:
        yield client


def raw_events(
    server: EmulatorServer, path: str, body: dict[str, Any], **headers: str
) -> list[tuple[str, str]]:
    """The (event, data) pairs of a streamed reply, read with plain httpx."""
    with httpx.Client(base_url=server.root_url, timeout=10) as http:
        response = http.post(path, json=body, headers=headers)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = []
    for frame in response.text.split("\n\n"):
        if frame.strip():
            fields = dict(line.split(": ", 1) for line in frame.splitlines())
            events.append((fields.get("event", "message"), fields["data"]))
    return events


def test_openai_sdk_reads_a_plain_reply(server: EmulatorServer, oai: openai.OpenAI) -> None:
    """`chat.completions.create` returns the text, finish reason and usage; the raw body validates."""
    completion = oai.chat.completions.create(model="qwen3-max", messages=USER, max_tokens=64)  # type: ignore[arg-type]
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None
    assert (
        completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        raw = http.post(
            "/chat/completions",
            json={"model": "m", "messages": USER, "n": 2},
            headers={"Authorization": f"Bearer {KEY}"},
        )
    validated = ChatCompletion.model_validate(raw.json())
    assert [c.index for c in validated.choices] == [0, 1]


def test_openai_sdk_reads_tool_calls_reasoning_and_json(oai: openai.OpenAI) -> None:
    """Tool calls parse into the SDK's types with arguments that fit the schema; JSON mode gives JSON."""
    tool = {"type": "function", "function": {"name": "set_label", "parameters": SCHEMA}}
    completion = oai.chat.completions.create(
        model="qwen3-max",
        messages=USER,  # type: ignore[arg-type]
        tools=[tool],  # type: ignore[list-item]
        tool_choice="required",
        extra_body={"enable_thinking": True},
    )
    ChatCompletion.model_validate(completion.model_dump())
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    arguments = json.loads(call.function.arguments)
    assert arguments["label"] in ("positive", "negative")
    assert isinstance(arguments["confidence"], float)
    assert getattr(choice.message, "reasoning_content", None)  # DashScope's extra field is kept
    as_json = oai.chat.completions.create(model="m", messages=USER, response_format={"type": "json_object"})  # type: ignore[arg-type]
    assert isinstance(json.loads(as_json.choices[0].message.content or ""), dict)


def test_openai_sdk_streams_text_and_usage(server: EmulatorServer, oai: openai.OpenAI) -> None:
    """A streamed reply parses chunk by chunk, joins to the whole reply's text, and ends with usage."""
    whole = oai.chat.completions.create(model="qwen3-max", messages=USER)  # type: ignore[arg-type]
    stream = oai.chat.completions.create(
        model="qwen3-max",
        messages=USER,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens  # type: ignore[union-attr]
    body = {
        "model": "qwen3-max",
        "messages": USER,
        "stream": True,
        "n": 2,
        "tools": [],
        "stream_options": {"include_usage": True},
    }
    for _, data in raw_events(server, "/v1/chat/completions", body, authorization=f"Bearer {KEY}")[:-1]:
        ChatCompletionChunk.model_validate_json(data)


def test_openai_sdk_stream_accumulator_joins_tool_calls(oai: openai.OpenAI) -> None:
    """The SDK's streaming helper rebuilds the tool call and reasoning from the emulator's fragments."""
    tool = {"type": "function", "function": {"name": "set_label", "parameters": SCHEMA}}
    with oai.chat.completions.stream(
        model="qwen3-max",
        messages=USER,  # type: ignore[arg-type]
        tools=[tool],  # type: ignore[list-item]
        extra_body={"enable_thinking": True},
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    assert json.loads(choice.message.tool_calls[0].function.arguments)["label"] in ("positive", "negative")


def test_anthropic_sdk_reads_a_plain_message(claude: anthropic.Anthropic) -> None:
    """`messages.create` returns a Message with a text block, stop reason and usage."""
    message = claude.messages.create(model="qwen3-max", max_tokens=64, system="Be brief.", messages=USER)  # type: ignore[arg-type]
    Message.model_validate(message.model_dump())
    assert message.content[0].type == "text"
    assert message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 0


def test_anthropic_sdk_reads_thinking_and_tool_use(claude: anthropic.Anthropic) -> None:
    """Thinking and tool_use blocks parse into the SDK's block types, the input fitting the schema."""
    message = claude.messages.create(
        model="qwen3-max",
        max_tokens=512,
        messages=USER,  # type: ignore[arg-type]
        thinking={"type": "enabled", "budget_tokens": 256},
        tools=[{"name": "set_label", "description": "Label it", "input_schema": SCHEMA}],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "set_label"},
    )
    Message.model_validate(message.model_dump())
    thinking, tool_use = message.content
    assert thinking.type == "thinking"
    assert thinking.signature
    assert tool_use.type == "tool_use"
    assert tool_use.name == "set_label"
    assert tool_use.input["label"] in ("positive", "negative")  # type: ignore[index]
    assert message.stop_reason == "tool_use"


def test_anthropic_sdk_stream_accumulates_every_block(
    server: EmulatorServer, claude: anthropic.Anthropic
) -> None:
    """The SDK's stream helper folds the emulator's events into the same message as the whole reply."""
    params: dict[str, Any] = {
        "model": "qwen3-max",
        "max_tokens": 512,
        "messages": USER,
        "thinking": {"type": "enabled", "budget_tokens": 256},
        "tools": [{"name": "set_label", "input_schema": SCHEMA}],
    }
    whole = claude.messages.create(**params)
    with claude.messages.stream(**params) as stream:
        text_events = sum(1 for event in stream if event.type == "content_block_delta")
        final = stream.get_final_message()
    assert text_events > 0
    # Ids and signatures follow the raw request (which differs by `stream`); everything else must match.
    assert [_without_ids(b.model_dump()) for b in final.content] == [
        _without_ids(b.model_dump()) for b in whole.content
    ]
    assert final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens
    plain = {**params, "stream": True, "tools": []}
    events = raw_events(server, "/v1/messages", plain, **{"x-api-key": KEY})
    assert ("ping", '{"type": "ping"}') in events  # the SDK skips pings; they are not in its event union
    for name, data in events:
        if name != "ping":
            assert STREAM_EVENT.validate_json(data).type == name


def _without_ids(block: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in block.items() if k not in ("id", "signature")}


def test_anthropic_sdk_raises_its_own_error_types(
    claude: anthropic.Anthropic, server: EmulatorServer
) -> None:
    """Emulator errors on the messages route map to the SDK's typed exceptions."""
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model="m", max_tokens=0, messages=USER)  # type: ignore[arg-type]
    with (
        anthropic.Anthropic(base_url=server.root_url, api_key="wrong", max_retries=0) as bad,
        pytest.raises(anthropic.AuthenticationError),
    ):
        bad.messages.create(model="m", max_tokens=5, messages=USER)  # type: ignore[arg-type]


def _wait(read: Callable[[], Any], done: Callable[[Any], bool]) -> Any:
    for _ in range(POLLS):
        value = read()
        if done(value):
            return value
        time.sleep(0.02)
    raise AssertionError(f"never done: {value}")


def test_openai_sdk_runs_a_whole_batch(oai: openai.OpenAI) -> None:
    """files.create, batches.create/retrieve/list/cancel and files.content parse, and validate as types."""
    lines = [
        {
            "custom_id": f"row-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "qwen-max",
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": 16,
            },
        }
        for i, prompt in enumerate(PROMPTS)
    ]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = oai.files.create(file=("reviews.jsonl", io.BytesIO(content)), purpose="batch")
    FileObject.model_validate(uploaded.model_dump())
    assert oai.files.retrieve(uploaded.id).bytes == len(content)
    batch = oai.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"batchrun_run": "r1", "batchrun_part": "0"},
    )
    Batch.model_validate(batch.model_dump())
    done = _wait(lambda: oai.batches.retrieve(batch.id), lambda b: b.status == "completed")
    Batch.model_validate(done.model_dump())
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (3, 2, 1)
    assert done.metadata == {"batchrun_run": "r1", "batchrun_part": "0"}
    assert done.output_file_id is not None
    assert done.error_file_id is not None
    output = [json.loads(line) for line in oai.files.content(done.output_file_id).text.splitlines()]
    for line in output:
        ChatCompletion.model_validate(line["response"]["body"])
    errors = [json.loads(line) for line in oai.files.content(done.error_file_id).text.splitlines()]
    assert [e["custom_id"] for e in errors] == ["row-1"]
    listed = list(oai.batches.list(limit=1))  # the SDK follows `after` itself
    assert [b.id for b in listed] == [batch.id]
    second = oai.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    cancelled = oai.batches.cancel(second.id)
    Batch.model_validate(cancelled.model_dump())
    assert cancelled.status == "cancelling"
    assert [b.id for b in oai.batches.list(limit=1)] == [second.id, batch.id]


def test_anthropic_sdk_runs_a_whole_message_batch(claude: anthropic.Anthropic) -> None:
    """messages.batches.create/retrieve/list/results/cancel parse, and validate as the SDK's types."""
    requests: Any = [
        {
            "custom_id": f"row-{i}",
            "params": {"model": "qwen3-max", "max_tokens": 16, "messages": [{"role": "user", "content": p}]},
        }
        for i, p in enumerate(PROMPTS)
    ]
    batch = claude.messages.batches.create(requests=requests)
    MessageBatch.model_validate(batch.model_dump())
    assert batch.processing_status == "in_progress"
    ended = _wait(
        lambda: claude.messages.batches.retrieve(batch.id), lambda b: b.processing_status == "ended"
    )
    MessageBatch.model_validate(ended.model_dump())
    assert (ended.request_counts.succeeded, ended.request_counts.errored) == (2, 1)
    results = {r.custom_id: r for r in claude.messages.batches.results(batch.id)}
    for result in results.values():
        MessageBatchIndividualResponse.model_validate(result.model_dump())
    assert results["row-0"].result.type == "succeeded"
    assert results["row-1"].result.type == "errored"
    assert results["row-1"].result.error.error.type == "invalid_request_error"
    second = claude.messages.batches.create(requests=requests)
    canceling = claude.messages.batches.cancel(second.id)
    MessageBatch.model_validate(canceling.model_dump())
    assert canceling.processing_status in ("canceling", "ended")
    assert [b.id for b in claude.messages.batches.list(limit=1)] == [second.id, batch.id]
