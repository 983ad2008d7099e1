"""The OpenAI chat-completions adapter: seed providers' replies, error bodies, retry-after, headers."""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any

import httpx
import pytest

from batchrun.errors import ErrorClass, ProviderError
from batchrun.providers import make_provider
from batchrun.providers.openai import OpenAIProvider, parse_usage
from batchrun.records import Request, Usage

PROVIDER = OpenAIProvider("https://api.maxtoken.io/v1/", "sk-test", {})


def reply(message: dict[str, Any], usage: dict[str, Any] | None, **extra: Any) -> bytes:
    """A `chat.completion` body with one choice."""
    body: dict[str, Any] = {
        "id": "chatcmpl-8f1c",
        "object": "chat.completion",
        "created": 1763798400,
        "model": "qwen3-max",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", **message},
                "finish_reason": extra.pop("finish", "stop"),
            }
        ],
        **extra,
    }
    if usage is not None:
        body["usage"] = usage
    return json.dumps(body).encode()


def retry_after(headers: dict[str, str]) -> float | None:
    """The `retry_after_s` of the error a 429 with these headers gives."""
    return PROVIDER.error(429, httpx.Headers(headers), b'{"error": {"message": "slow down"}}').retry_after_s


def provider_error(call: Any) -> ProviderError:
    """The ProviderError a call raises."""
    with pytest.raises(ProviderError) as info:
        call()
    return info.value


def test_parse_plain_usage_reply() -> None:
    """A maxtoken / AI/ML API style reply gives the text, finish reason, model, id and plain usage."""
    body = reply(
        {"content": "positive"},
        {"prompt_tokens": 31, "completion_tokens": 1, "total_tokens": 32},
    )
    parsed = PROVIDER.parse(body)
    assert parsed.completion == "positive"
    assert parsed.finish_reason == "stop"
    assert parsed.model == "qwen3-max"
    assert parsed.response_id == "chatcmpl-8f1c"
    assert parsed.usage == Usage(prompt_tokens=31, completion_tokens=1, total_tokens=32)
    assert parsed.reasoning is None
    assert parsed.tool_calls is None


def test_parse_siray_usage_with_details_and_cache_hits() -> None:
    """siray's usage gives cached tokens from prompt_tokens_details and reasoning from completion details."""
    usage = {
        "prompt_tokens": 1200,
        "completion_tokens": 310,
        "total_tokens": 1510,
        "prompt_tokens_details": {"cached_tokens": 1024},
        "completion_tokens_details": {"reasoning_tokens": 280},
        "prompt_cache_hit_tokens": 1024,
        "prompt_cache_miss_tokens": 176,
    }
    parsed = PROVIDER.parse(reply({"content": "mixed"}, usage, model="alibaba/qwen3-max-256k"))
    assert parsed.usage == Usage(
        prompt_tokens=1200, completion_tokens=310, cached_tokens=1024, reasoning_tokens=280, total_tokens=1510
    )
    assert parsed.model == "alibaba/qwen3-max-256k"


def test_parse_cache_hits_without_prompt_details() -> None:
    """`prompt_cache_hit_tokens` alone is read as the cached count; null details are tolerated."""
    usage = {
        "prompt_tokens": 50,
        "completion_tokens": 5,
        "prompt_cache_hit_tokens": 32,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }
    parsed = PROVIDER.parse(reply({"content": "x"}, usage))
    assert parsed.usage == Usage(prompt_tokens=50, completion_tokens=5, cached_tokens=32, total_tokens=55)


def test_parse_input_output_token_names() -> None:
    """Usage spelt `input_tokens`/`output_tokens` is read, and the total is their sum when not given."""
    parsed = PROVIDER.parse(reply({"content": "x"}, {"input_tokens": 12, "output_tokens": 3}))
    assert parsed.usage == Usage(prompt_tokens=12, completion_tokens=3, total_tokens=15)


@pytest.mark.parametrize(
    "usage",
    [None, "n/a", {"prompt_tokens": "12", "completion_tokens": True}, {"prompt_tokens": float("nan")}],
)
def test_parse_missing_or_odd_usage_gives_unknown_counts(usage: Any) -> None:
    """Missing usage, or counts that are not numbers, give None counts rather than made-up ones."""
    parsed = PROVIDER.parse(reply({"content": "x"}, usage))
    assert parsed.usage == Usage()
    assert parsed.completion == "x"


def test_a_reply_with_nan_and_a_lone_surrogate_still_parses() -> None:
    """What orjson refuses but json reads (NaN in logprobs, a lone surrogate) is an answer."""
    body = reply({"content": "SURROGATE"}, {"prompt_tokens": 3, "completion_tokens": 1})
    body = body.replace(b"SURROGATE", b"x\\ud83d").replace(b'"choices"', b'"logprobs_mean": NaN, "choices"')
    parsed = PROVIDER.parse(body)
    assert parsed.completion == "x\ud83d"
    assert parsed.usage.prompt_tokens == 3


def test_parse_reasoning_content() -> None:
    """`reasoning_content` (DashScope thinking) or `reasoning` lands in `reasoning`, apart from the answer."""
    parsed = PROVIDER.parse(
        reply({"content": "negative", "reasoning_content": "The user says it broke."}, None)
    )
    assert parsed.reasoning == "The user says it broke."
    assert parsed.completion == "negative"
    assert PROVIDER.parse(reply({"content": "a", "reasoning": "r"}, None)).reasoning == "r"


def test_parse_tool_calls_as_json_text() -> None:
    """Tool calls come back as JSON text with a null completion and finish_reason tool_calls."""
    calls = [
        {
            "id": "call_0",
            "type": "function",
            "function": {"name": "set_label", "arguments": '{"label": "positivo ✓"}'},
        }
    ]
    parsed = PROVIDER.parse(reply({"content": None, "tool_calls": calls}, None, finish="tool_calls"))
    assert parsed.completion is None
    assert parsed.finish_reason == "tool_calls"
    assert parsed.tool_calls is not None
    assert json.loads(parsed.tool_calls) == calls
    assert "positivo ✓" in parsed.tool_calls


def test_parse_200_with_an_error_object() -> None:
    """A 200 whose body is an error object raises a ProviderError classified by its code."""
    body = json.dumps(
        {
            "error": {
                "code": "DataInspectionFailed",
                "message": "Input data may contain inappropriate content.",
            }
        }
    ).encode()
    exc = provider_error(lambda: PROVIDER.parse(body))
    assert exc.error_class is ErrorClass.ROW
    assert exc.error_type == "content_filter"
    assert exc.code == "DataInspectionFailed"
    assert exc.message == "Input data may contain inappropriate content."
    assert exc.status == 200


def test_parse_200_with_an_unknown_error_is_retried() -> None:
    """A 200 carrying an error with no known code is treated as a transient server error."""
    body = b'{"error": {"message": "upstream connect error"}, "choices": []}'
    exc = provider_error(lambda: PROVIDER.parse(body))
    assert exc.retryable
    assert exc.error_type == "server_error"


@pytest.mark.parametrize(
    "body",
    [
        b'{"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"index": 0, "message": {"ro',
        b"",
        b"data: {}\n\n",
        b'["not", "an", "object"]',
        b'{"id": "x", "choices": []}',
        b'{"id": "x"}',
    ],
)
def test_unusable_200_is_a_retryable_bad_response(body: bytes) -> None:
    """A body cut short, not JSON, not an object, or without choices is a retryable `bad_response`."""
    exc = provider_error(lambda: PROVIDER.parse(body))
    assert exc.error_class is ErrorClass.RETRY
    assert exc.error_type == "bad_response"
    assert exc.status == 200


@pytest.mark.parametrize("body", [b'{"choices": [null]}', b'{"choices": [{"message": "hello"}]}'])
def test_malformed_choice_is_a_retryable_bad_response(body: bytes) -> None:
    """A choice or message that is not a JSON object is a retryable `bad_response`, not a crash."""
    exc = provider_error(lambda: PROVIDER.parse(body))
    assert exc.error_type == "bad_response"


@pytest.mark.parametrize(
    ("status", "body", "code", "error_class", "error_type", "message"),
    [
        (
            401,
            {"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error",
                       "param": None, "code": "invalid_api_key"}},
            "invalid_api_key", ErrorClass.FATAL, "auth", "Incorrect API key provided.",
        ),
        (
            429,
            {"error": {"message": "You exceeded your current quota.", "type": "insufficient_quota",
                       "param": None, "code": "insufficient_quota"}},
            "insufficient_quota", ErrorClass.FATAL, "billing", "You exceeded your current quota.",
        ),
        (
            429,
            {"error": {"message": "Requests rate limit exceeded", "type": "Throttling.RateQuota",
                       "code": "Throttling.RateQuota"}, "request_id": "9a1"},
            "Throttling.RateQuota", ErrorClass.RETRY, "rate_limited", "Requests rate limit exceeded",
        ),
        (
            400,
            {"error": {"message": "This model's maximum context length is 8192 tokens.",
                       "type": "invalid_request_error", "code": "context_length_exceeded"}},
            "context_length_exceeded", ErrorClass.ROW, "context_length",
            "This model's maximum context length is 8192 tokens.",
        ),
        (
            400,
            {"error": {"message": "Invalid value for temperature", "type": "invalid_request_error",
                       "code": None}},
            "invalid_request_error", ErrorClass.ROW, "bad_request", "Invalid value for temperature",
        ),
        (
            529,
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            "overloaded_error", ErrorClass.RETRY, "overloaded", "Overloaded",
        ),
        (
            400,
            {"code": "Arrearage",
             "message": "Access denied, please make sure your account is in good standing.",
             "request_id": "b3f"},
            "Arrearage", ErrorClass.FATAL, "billing",
            "Access denied, please make sure your account is in good standing.",
        ),
        (
            400,
            {"code": "DataInspectionFailed", "message": "Output data may contain inappropriate content."},
            "DataInspectionFailed", ErrorClass.ROW, "content_filter",
            "Output data may contain inappropriate content.",
        ),
        (
            404,
            {"code": "ModelNotFound", "message": "Model not exist."},
            "ModelNotFound", ErrorClass.FATAL, "model_not_found", "Model not exist.",
        ),
        (
            503,
            {"error": "Service Unavailable"},
            None, ErrorClass.RETRY, "server_error", "Service Unavailable",
        ),
    ],
)  # fmt: skip
def test_error_bodies_are_read_and_classified(
    status: int,
    body: dict[str, Any],
    code: str | None,
    error_class: ErrorClass,
    error_type: str,
    message: str,
) -> None:
    """OpenAI-shaped, Anthropic-shaped and DashScope flat error bodies give the code, message and class."""
    exc = PROVIDER.error(status, httpx.Headers(), json.dumps(body).encode())
    assert exc.code == code
    assert exc.error_class is error_class
    assert exc.error_type == error_type
    assert exc.message == message
    assert exc.status == status
    assert exc.retry_after_s is None


@pytest.mark.parametrize(
    ("status", "body", "error_class", "error_type", "message"),
    [
        (502, b"<html><body><h1>502 Bad Gateway</h1></body></html>\n", ErrorClass.RETRY, "server_error",
         "<html><body><h1>502 Bad Gateway</h1></body></html>"),
        (401, b"Unauthorized", ErrorClass.FATAL, "auth", "Unauthorized"),
        (503, b"", ErrorClass.RETRY, "server_error", "HTTP 503"),
        (400, b"\xff\xfe\xfa", ErrorClass.ROW, "bad_request", "\ufffd\ufffd\ufffd"),
        (500, b"[1, 2]", ErrorClass.RETRY, "server_error", "[1, 2]"),
    ],
)  # fmt: skip
def test_non_json_error_bodies_are_classified_by_status(
    status: int, body: bytes, error_class: ErrorClass, error_type: str, message: str
) -> None:
    """An error body that is not a JSON object keeps its text as the message and is classed by status."""
    exc = PROVIDER.error(status, httpx.Headers(), body)
    assert exc.code is None
    assert exc.error_class is error_class
    assert exc.error_type == error_type
    assert exc.message == message


def test_long_non_json_error_body_is_cut() -> None:
    """A huge error page, or a huge JSON error message, is cut to its first 200 characters."""
    exc = PROVIDER.error(502, httpx.Headers(), b"x" * 10_000)
    assert exc.message == "x" * 199 + "…"
    long_message = json.dumps({"error": {"message": "y" * 10_000}}).encode()
    assert len(PROVIDER.error(400, httpx.Headers(), long_message).message) == 200


def test_error_carries_retry_after_from_headers() -> None:
    """A 429's `Retry-After` header (any case) becomes the error's `retry_after_s`."""
    exc = PROVIDER.error(429, httpx.Headers({"Retry-After": "3"}), b'{"error": {"message": "slow down"}}')
    assert exc.retry_after_s == 3.0
    assert exc.retryable


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "20.5"}, 0.0205),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after": "-3"}, 0.0),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),
        ({"retry-after": "later"}, None),
        ({"retry-after": ""}, None),
        ({}, None),
    ],
)
def test_retry_after_seconds_ms_and_dates(headers: dict[str, str], expected: float | None) -> None:
    """`retry-after-ms` wins over `retry-after`; seconds, past dates and junk are read sensibly."""
    assert retry_after(headers) == expected


def test_retry_after_http_date_in_the_future() -> None:
    """An HTTP-date `retry-after` gives the seconds from now until that time."""
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    wait = retry_after({"Retry-After": when})
    assert wait is not None
    assert 28.0 <= wait <= 31.0


def test_headers_have_bearer_auth_only_with_a_key() -> None:
    """The Authorization header is `Bearer KEY` when a key is given and absent otherwise; extras are kept."""
    with_key = OpenAIProvider("http://127.0.0.1:8000/v1", "sk-abc", {"x-team": "labels"}).headers()
    assert with_key["authorization"] == "Bearer sk-abc"
    assert with_key["x-team"] == "labels"
    assert with_key["content-type"] == "application/json"
    for key in (None, ""):
        headers = OpenAIProvider("http://127.0.0.1:8000/v1", key, {"x-team": "labels"}).headers()
        assert "authorization" not in {k.lower() for k in headers}
        assert headers["x-team"] == "labels"


def test_url_and_content() -> None:
    """The URL is `{base_url}/chat/completions` (one slash) and the body is the request's canonical bytes."""
    provider = make_provider("openai", "https://dashscope-intl.aliyuncs.com/compatible-mode/v1/", None, {})
    assert provider.url() == "https://dashscope-intl.aliyuncs.com/compatible-mode/v1/chat/completions"
    request = Request("c", {"model": "m", "messages": []}, b'{"model":"m","messages":[]}', 3, 256)
    assert provider.content(request) == b'{"model":"m","messages":[]}'


def test_a_null_cached_tokens_falls_back_to_prompt_cache_hit_tokens() -> None:
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": 2,
        "prompt_tokens_details": {"cached_tokens": None},
        "prompt_cache_hit_tokens": 4,
    }
    assert parse_usage(usage).cached_tokens == 4


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -2e14, "completion_tokens": 1},
        {"prompt_tokens": 12, "completion_tokens": 10**12},
        {"prompt_tokens": 12, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": -1}},
        {"prompt_tokens": float("inf"), "completion_tokens": 1},
    ],
)
def test_negative_or_absurd_token_counts_are_a_bad_response(usage: dict[str, Any]) -> None:
    """A count below 0 or past any context is not believed: the reply is a `bad_response`."""
    with pytest.raises(ProviderError, match="not believed") as info:
        PROVIDER.parse(reply({"content": "x"}, usage))
    assert info.value.error_type == "bad_response"


def test_odd_field_types_are_dropped_not_trusted() -> None:
    """Text parts are joined; a number where text belongs is dropped; details that are not objects ignored."""
    body = json.loads(
        reply({"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}, None)
    )
    body["model"], body["id"] = 7, ["x"]
    body["usage"] = {"prompt_tokens": 3, "completion_tokens": 1, "prompt_tokens_details": ["odd"]}
    parsed = PROVIDER.parse(json.dumps(body).encode())
    assert (parsed.completion, parsed.model, parsed.response_id) == ("ab", None, None)
    assert parsed.usage.prompt_tokens == 3
    with pytest.raises(ProviderError, match="not text"):
        PROVIDER.parse(reply({"content": 42}, None))
