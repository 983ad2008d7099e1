"""Whole reply bodies of the seed providers (maxtoken, AI/ML API, siray), parsed whole.

The AI/ML API body follows the shape its documentation shows (checked against its qwen-max reference);
maxtoken's and siray's published pages show requests only, so theirs follow `../shared/PROVIDERS.md`.

Each body is a complete `chat.completion` document as the provider sends it, extra fields included
(`system_fingerprint`, `logprobs`, `service_tier`, the details objects with their audio/image counts),
so the test also proves that fields batchrun does not use are ignored rather than tripping the parser.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from batchrun.money.pricing import PriceBook
from batchrun.providers.openai import OpenAIProvider
from batchrun.records import Usage

PROVIDER = OpenAIProvider("https://api.example.test/v1", "sk-test", {})

MAXTOKEN = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion",
    "created": 1741570283,
    "model": "qwen3-max",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "The review is positive: the customer praises the battery life.",
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 1117, "completion_tokens": 46, "total_tokens": 1163},
    "service_tier": "default",
    "system_fingerprint": None,
}

AIMLAPI = {
    "id": "chatcmpl-c4c1e8a9-1d2b-9a63-b2a1-5f0e6c1d2e3f",
    "object": "chat.completion",
    "created": 1752652800,
    "model": "qwen-max",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "negative"},
            "finish_reason": "length",
            "logprobs": None,
        }
    ],
    "usage": {
        "prompt_tokens": 57,
        "completion_tokens": 1,
        "total_tokens": 58,
        "prompt_tokens_details": {"cached_tokens": 0},
    },
    "system_fingerprint": None,
}

SIRAY = {
    "id": "chatcmpl-0194f1c2a7b84d2c9e0f",
    "object": "chat.completion",
    "created": 1761955200,
    "model": "alibaba/qwen3-max-256k",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Positive.",
                "reasoning_content": "The reviewer is happy with the product.",
            },
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 2048,
        "completion_tokens": 120,
        "total_tokens": 2168,
        "prompt_tokens_details": {
            "cached_tokens": 1536,
            "text_tokens": 2048,
            "audio_tokens": 0,
            "image_tokens": 0,
        },
        "completion_tokens_details": {"reasoning_tokens": 96, "text_tokens": 24, "audio_tokens": 0},
        "prompt_cache_hit_tokens": 1536,
        "prompt_cache_miss_tokens": 512,
    },
}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            MAXTOKEN,
            {
                "completion": "The review is positive: the customer praises the battery life.",
                "finish_reason": "stop",
                "model": "qwen3-max",
                "response_id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
                "reasoning": None,
                "usage": Usage(prompt_tokens=1117, completion_tokens=46, total_tokens=1163),
            },
        ),
        (
            AIMLAPI,
            {
                "completion": "negative",
                "finish_reason": "length",
                "model": "qwen-max",
                "response_id": "chatcmpl-c4c1e8a9-1d2b-9a63-b2a1-5f0e6c1d2e3f",
                "reasoning": None,
                "usage": Usage(prompt_tokens=57, completion_tokens=1, cached_tokens=0, total_tokens=58),
            },
        ),
        (
            SIRAY,
            {
                "completion": "Positive.",
                "finish_reason": "stop",
                "model": "alibaba/qwen3-max-256k",
                "response_id": "chatcmpl-0194f1c2a7b84d2c9e0f",
                "reasoning": "The reviewer is happy with the product.",
                "usage": Usage(
                    prompt_tokens=2048,
                    completion_tokens=120,
                    cached_tokens=1536,
                    reasoning_tokens=96,
                    total_tokens=2168,
                ),
            },
        ),
    ],
    ids=["maxtoken", "aimlapi", "siray"],
)
def test_seed_reply_maps_every_field(body: dict[str, Any], expected: dict[str, Any]) -> None:
    """A seed provider's whole reply maps to the text, finish reason, model, id, reasoning and usage."""
    reply = PROVIDER.parse(json.dumps(body).encode())
    got = {key: getattr(reply, key) for key in expected}
    assert got == expected
    assert reply.tool_calls is None
    assert reply.completions is None


def test_siray_cache_hits_are_billed_at_the_cached_price() -> None:
    """siray's cached tokens cost the cached-input price and the rest the input price (job-set prices)."""
    reply = PROVIDER.parse(json.dumps(SIRAY).encode())
    prices = PriceBook(input=1.2, output=6.0, cached_input=0.24)
    expected = (512 * 1.2 + 1536 * 0.24 + 120 * 6.0) / 1e6
    assert prices.cost("alibaba/qwen3-max-256k", reply.usage) == pytest.approx(expected)


def test_siray_cache_hit_count_alone_is_enough() -> None:
    """Without `prompt_tokens_details`, siray's `prompt_cache_hit_tokens` still gives the cached count."""
    body = json.loads(json.dumps(SIRAY))
    del body["usage"]["prompt_tokens_details"]
    assert PROVIDER.parse(json.dumps(body).encode()).usage.cached_tokens == 1536
