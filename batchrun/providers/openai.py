"""OpenAI chat completions (`POST {base_url}/chat/completions`), as OpenAI-compatible servers speak it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

from batchrun.errors import ProviderError
from batchrun.limits.retry import classify
from batchrun.providers.base import (
    Auth,
    StreamParser,
    auth_header,
    load_json,
    retryable_bad_reply,
    text_field,
    token_count,
)
from batchrun.providers.headers import wait_hint
from batchrun.records import Reply, Request, Usage
from batchrun.redact import excerpt


class OpenAIProvider:
    """The OpenAI chat-completions wire format: Bearer auth (or `x-api-key`), JSON or streamed replies."""

    kind: ClassVar[str] = "openai"
    emulator_path: ClassVar[str] = "/v1"

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        extra_headers: Mapping[str, str],
        auth: Auth | None = None,
    ) -> None:
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {"content-type": "application/json", "accept": "application/json", **extra_headers}
        if api_key:
            self._headers.update(auth_header(api_key, auth or "bearer"))

    @classmethod
    def normalize_params(cls, params: dict[str, Any], *, batch_lines: bool) -> dict[str, Any]:
        """`[params]` as given, completed for streaming (see `stream_fields`)."""
        return {**params, **stream_fields(params)}

    def url(self) -> str:
        """`{base_url}/chat/completions`."""
        return self._url

    def headers(self) -> dict[str, str]:
        """JSON content type, Bearer auth when a key is set, and the job's extra headers."""
        return self._headers

    def content(self, request: Request) -> bytes:
        """The body is already in OpenAI's shape: send the canonical bytes as they are.

        Only a batch line asking to stream without `stream_options` (which [params] cannot fill at load)
        is encoded again, with them.
        """
        extra = stream_fields(request.body)
        if not extra:
            return request.payload
        return json.dumps({**request.body, **extra}, ensure_ascii=False, separators=(",", ":")).encode()

    def streams(self, request: Request) -> bool:
        """`stream: true`, or DashScope thinking (`enable_thinking: true`) with no `stream` set."""
        body = request.body
        stream = body.get("stream")
        return stream is True or (stream is None and body.get("enable_thinking") is True)

    def stream_parser(self) -> StreamParser:
        """Chunks of `chat.completion.chunk`."""
        from batchrun.providers.streaming import OpenAIStream

        return OpenAIStream()

    def parse(self, body: bytes) -> Reply:
        """Read a `chat.completion` object."""
        data = load_json(body, "the reply")
        if not isinstance(data, dict):
            raise retryable_bad_reply("the reply is not a JSON object")
        if "error" in data and not data.get("choices"):
            # Some gateways answer 200 with an error object in the body.
            raise error_from_body(200, {}, data)
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices:
            raise retryable_bad_reply("the reply has no choices")
        choice = choices[0]
        completions = None
        if len(choices) > 1:  # n > 1: every choice's text, in index order
            ordered = sorted(choices, key=_choice_index)
            completions = tuple(_message_text(c) for c in ordered)
            choice = ordered[0]
        message = _message(choice)
        if message is None:
            raise retryable_bad_reply("the reply's first choice has no message object")
        tool_calls = message.get("tool_calls")
        return Reply(
            completion=_content(message.get("content")),
            finish_reason=text_field(choice.get("finish_reason")),
            usage=parse_usage(data.get("usage")),
            model=text_field(data.get("model")),
            response_id=text_field(data.get("id")),
            reasoning=text_field(message.get("reasoning_content") or message.get("reasoning")),
            tool_calls=json.dumps(tool_calls, ensure_ascii=False) if tool_calls else None,
            completions=completions,
        )

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        """Read `{"error": {message, type, code}}` (or DashScope's flat `{code, message}`) and classify it."""
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict):
            data = {"error": {"message": excerpt(body) or f"HTTP {status}"}}
        return error_from_body(status, headers, data)


def stream_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    """The fields a streaming body still lacks; empty for a body that does not stream or lacks nothing.

    `stream_options.include_usage`, else no usage arrives; and `stream: true` for DashScope thinking
    (`enable_thinking` works only when streaming) unless the body sets `stream` itself.
    """
    stream = body.get("stream")
    if stream is None and body.get("enable_thinking") is True:
        return {"stream": True, "stream_options": {"include_usage": True}}
    if stream is True and "stream_options" not in body:
        return {"stream_options": {"include_usage": True}}
    return {}


def _choice_index(choice: Any) -> int:
    index = choice.get("index") if isinstance(choice, dict) else None
    return index if isinstance(index, int) else 0


def _message(choice: Any) -> dict[str, Any] | None:
    """A choice's message; siray's OpenAPI schema puts it under `delta` even when nothing is streamed."""
    if not isinstance(choice, dict):
        return None
    message = choice.get("message")
    if message is None:
        message = choice.get("delta")
    return message if isinstance(message, dict) else None


def _message_text(choice: Any) -> str | None:
    message = _message(choice)
    if message is None:
        raise retryable_bad_reply("a choice of the reply has no message object")
    content = message.get("content")
    return content if isinstance(content, str) else None


def _content(content: Any) -> str | None:
    """A message's text: a string, null, or a list of text parts (joined); anything else is unreadable."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    raise retryable_bad_reply(f"the reply's message content is a {type(content).__name__}, not text")


def error_from_body(status: int, headers: Mapping[str, str], data: dict[str, Any]) -> ProviderError:
    """A classified error from an OpenAI-shaped body (or DashScope's flat or Anthropic's nested one)."""
    error = data.get("error")
    if not isinstance(error, dict):
        # DashScope's native shape is flat; Anthropic's nests under "error" too.
        error = data if "code" in data or "message" in data else {"message": str(error or data)}
    code = error.get("code") or error.get("type")
    code = excerpt(str(code), 80) if code is not None else None
    message = excerpt(str(error.get("message") or f"HTTP {status}"))
    error_class, error_type = classify(status if status != 200 else None, code, message)
    return ProviderError(
        message,
        error_type=error_type,
        error_class=error_class,
        status=status,
        code=code,
        retry_after_s=wait_hint(headers),
    )


def parse_usage(usage: Any) -> Usage:
    """OpenAI usage, including the variants resellers send (`input_tokens`, `prompt_cache_hit_tokens`)."""
    if not isinstance(usage, dict):
        return Usage()
    prompt = token_count(_first(usage.get("prompt_tokens"), usage.get("input_tokens")), "prompt_tokens")
    completion = token_count(
        _first(usage.get("completion_tokens"), usage.get("output_tokens")), "completion_tokens"
    )
    prompt_details = _object(usage.get("prompt_tokens_details"))
    completion_details = _object(usage.get("completion_tokens_details"))
    # A null counts as absent: AI/ML API's schema allows `cached_tokens: null` beside other fields.
    cached = token_count(
        _first(prompt_details.get("cached_tokens"), usage.get("prompt_cache_hit_tokens")), "cached_tokens"
    )
    total = token_count(usage.get("total_tokens"), "total_tokens")
    if total is None and prompt is not None and completion is not None:
        total = prompt + completion
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=cached,
        reasoning_tokens=token_count(completion_details.get("reasoning_tokens"), "reasoning_tokens"),
        total_tokens=total,
    )


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _first(value: Any, fallback: Any) -> Any:
    """`value` unless it is None, else `fallback` (a conditional: this runs three times per reply)."""
    return value if value is not None else fallback
