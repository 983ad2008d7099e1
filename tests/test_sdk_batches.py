"""The emulator's Batch APIs, judged by the official `openai` and `anthropic` SDKs' batch calls.

As in test_sdk_fidelity.py, each object is also validated against the SDK's pydantic type (the clients build
models without validation), so a field of the wrong type or a missing required one fails here.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import openai
import pytest
from anthropic.types.messages import MessageBatch, MessageBatchIndividualResponse
from openai.types import Batch, FileObject
from openai.types.chat import ChatCompletion

from batchrun.emulator import DIRECTIVE_400, EmulatorServer
from batchrun.emulator.batchconfig import BatchConfig

Start = Callable[..., EmulatorServer]
KEY = "sk-emulator"
POLLS = 400  # x 20 ms at most
PROMPTS = ["Battery lasts for days.", f"{DIRECTIVE_400} Broke in a week.", "Fine for the price."]


@pytest.fixture
def server(emulator: Start) -> EmulatorServer:
    """An emulator that wants the key, with quick batches."""
    return emulator(api_key=KEY, batch=BatchConfig(validating_s=0.02, in_progress_s=0.1, finalizing_s=0.02))


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
