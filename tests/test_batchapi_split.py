"""Splitting prepared requests into Batch API uploads: by model, thinking mode, request and byte limits."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchrun.inputs.render import encode
from batchrun.providers import make_provider
from batchrun.providers.batchapi import (
    AnthropicBatchAPI,
    FileLimits,
    OpenAIBatchAPI,
    Part,
    Refused,
    limits_for,
    split,
    wire_id,
)
from batchrun.providers.batchapi.split import MB
from batchrun.records import Request


def request(i: int, model: str = "qwen-max", **extra: Any) -> Request:
    """A prepared request with our usual 32-hex custom_id."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"Review {i}"}],
        "max_tokens": 8,
        **extra,
    }
    return Request(f"{i:032x}", body, encode(body), 10, 4)


def openai_api() -> OpenAIBatchAPI:
    """A client that is never asked to send anything."""
    base = "https://dashscope-intl.aliyuncs.com/compatible-mode/v1"
    return OpenAIBatchAPI(httpx.AsyncClient(), make_provider("openai", base, "k", {}), base, "k")


def anthropic_api() -> AnthropicBatchAPI:
    """A client that is never asked to send anything."""
    base = "https://api.anthropic.com"
    return AnthropicBatchAPI(httpx.AsyncClient(), make_provider("anthropic", base, "k", {}), base, "k")


def test_limits_follow_the_provider_less_a_margin_or_the_job() -> None:
    """DashScope hosts get 500 MB and 6 MB lines, OpenAI 200 MB, Anthropic 100,000 / 256 MB; overrides win."""
    dashscope = limits_for("openai", "https://dashscope-intl.aliyuncs.com/compatible-mode/v1")
    assert dashscope == FileLimits(50_000, int(500 * MB * 0.95), int(6 * MB * 0.95))
    workspace = limits_for("openai", "https://ws-1.ap-southeast-1.maas.aliyuncs.com/compatible-mode/v1")
    assert workspace == dashscope
    assert limits_for("openai", "https://api.openai.com/v1") == FileLimits(50_000, 190 * MB, 190 * MB)
    assert limits_for("openai", "http://127.0.0.1:8000/v1").max_bytes == 190 * MB  # vLLM: OpenAI's
    assert limits_for("anthropic", "https://api.anthropic.com") == FileLimits(
        100_000, int(256 * MB * 0.95), int(256 * MB * 0.95)
    )
    assert limits_for("openai", "https://api.openai.com/v1", 10, 5000) == FileLimits(10, 5000, 5000)
    with pytest.raises(ValueError, match="max_requests"):
        limits_for("openai", "https://api.openai.com/v1", 0)


def test_parts_hold_one_model_and_thinking_mode_within_the_request_limit(tmp_path: Path) -> None:
    """Models and thinking modes never share a file; a full part is closed and a new one started."""
    requests = [request(i) for i in range(5)]
    requests += [request(10 + i, "qwen-plus") for i in range(2)]
    requests += [request(20 + i, enable_thinking=True) for i in range(2)]
    parts = list(split(requests, openai_api(), FileLimits(3, 10**6, 10**6), tmp_path))
    assert all(isinstance(p, Part) for p in parts)
    shape = [(p.index, p.model, len(p.custom_ids)) for p in parts if isinstance(p, Part)]
    assert shape == [(0, "qwen-max", 3), (1, "qwen-max", 2), (2, "qwen-plus", 2), (3, "qwen-max", 2)]
    last = parts[-1]
    assert isinstance(last, Part)
    lines = [json.loads(line) for line in last.path.read_text().splitlines()]
    assert [line["body"]["enable_thinking"] for line in lines] == [True, True]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"part-{i:05d}.jsonl" for i in range(4)]


def test_parts_stay_within_the_byte_limit_exactly(tmp_path: Path) -> None:
    """Each file's size is at most max_bytes, and a part is not closed while the next line still fits."""
    api = openai_api()
    requests = [request(i) for i in range(10, 40)]  # lines of one length
    line = len(api.line(requests[0])) + 1
    limits = FileLimits(1000, 4 * line, line)
    parts = [p for p in split(requests, api, limits, tmp_path) if isinstance(p, Part)]
    assert [len(p.custom_ids) for p in parts] == [4] * 7 + [2]
    for part in parts:
        assert part.size == part.path.stat().st_size <= limits.max_bytes
    assert sum((p.custom_ids for p in parts), ()) == tuple(r.custom_id for r in requests)


def test_a_line_over_the_limit_is_refused_and_the_rest_go_on(tmp_path: Path) -> None:
    """A request too big for any batch comes back as Refused with a row error naming the sizes."""
    api = openai_api()
    small, big = request(1), request(2, stop=["x" * 500])
    limits = FileLimits(10, 10_000, len(api.line(small)) + 10)
    out = list(split([small, big, request(3)], api, limits, tmp_path))
    refused = [o for o in out if isinstance(o, Refused)]
    assert [r.custom_id for r in refused] == [big.custom_id]
    assert refused[0].error.error_type == "bad_request"
    assert not refused[0].error.retryable
    assert "shorten it, or send it without the Batch API" in refused[0].error.message
    assert [len(p.custom_ids) for p in out if isinstance(p, Part)] == [2]


def test_openai_lines_are_the_live_body_without_streaming(tmp_path: Path) -> None:
    """A line carries the body bytes sent live; `stream` and `stream_options` are dropped."""
    api = openai_api()
    plain, streamed = request(1), request(2, stream=True, stream_options={"include_usage": True})
    assert api.line(plain) == (
        b'{"custom_id":"'
        + plain.custom_id.encode()
        + b'","method":"POST","url":"/v1/chat/completions","body":'
        + plain.payload
        + b"}"
    )
    body = json.loads(api.line(streamed))["body"]
    assert "stream" not in body
    assert "stream_options" not in body


def test_anthropic_parts_are_create_requests_with_translated_params(tmp_path: Path) -> None:
    """An Anthropic part is `{"requests": [...]}` with Messages params (system lifted, no stream)."""
    api = anthropic_api()
    body = {
        "model": "claude-x",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "max_tokens": 8,
        "stream": True,
    }
    requests = [Request(f"{i:032x}", body, encode(body), 5, 4) for i in range(3)]
    (part,) = split(requests, api, limits_for("anthropic", api.base), tmp_path)
    assert isinstance(part, Part)
    assert part.path.name == "part-00000.json"
    sent = json.loads(part.path.read_bytes())
    assert [item["custom_id"] for item in sent["requests"]] == list(part.custom_ids)
    params = sent["requests"][0]["params"]
    assert params["system"] == "Be brief."
    assert "stream" not in params
    assert part.size == part.path.stat().st_size


def test_anthropic_refuses_a_request_without_max_tokens(tmp_path: Path) -> None:
    """The Messages API needs max_tokens: such a request is Refused as a row error, the others batched."""
    body = {"model": "claude-x", "messages": [{"role": "user", "content": "Hi"}]}
    bare = Request("a" * 32, body, encode(body), 5, 4)
    out = list(split([bare, request(1, "claude-x")], anthropic_api(), FileLimits(10, 10**6, 10**6), tmp_path))
    assert [type(o).__name__ for o in out] == ["Refused", "Part"]


@pytest.mark.parametrize(
    ("custom_id", "kept"),
    [
        ("0123456789abcdef0123456789abcdef", True),
        ("row_1-A", True),
        ("r0001 with space", False),
        ("x" * 65, False),
        ("batchrun_abc", False),
        ("ünïcode", False),
    ],
)
def test_anthropic_wire_ids_keep_valid_ids_and_map_the_rest(custom_id: str, kept: bool) -> None:
    """Ids matching ^[a-zA-Z0-9_-]{1,64}$ pass; others become batchrun_ + 40 hex, which matches it."""
    sent = wire_id(custom_id)
    assert (sent == custom_id) is kept
    if not kept:
        assert sent.startswith("batchrun_")
        assert len(sent) == 49
        assert wire_id(sent) != sent  # a mapped id sent back in would be mapped again, never confused


def test_an_abandoned_split_leaves_no_part_behind(tmp_path: Path) -> None:
    """An input that fails mid-way (as a kill would stop it) leaves no file, complete-looking or temporary."""

    def failing() -> Iterator[Request]:
        yield from (request(i) for i in range(3))
        raise OSError("the input went away")

    with pytest.raises(OSError, match="went away"):
        list(split(failing(), openai_api(), FileLimits(100, 10**6, 10**6), tmp_path))
    assert list(tmp_path.iterdir()) == []
