"""Anthropic Messages (`POST {base_url}/v1/messages`), as Anthropic and Qwen Cloud's Anthropic mode speak it.

Requests are rendered in the OpenAI chat shape (the lingua franca of the inputs) and translated here:

- `system` / `developer` messages are lifted to the top-level `system`;
- content parts: `text` stays, `image_url` becomes an `image` block (a `data:` URL becomes a base64 source);
  parts already in Anthropic's shape pass through;
- assistant `tool_calls` become `tool_use` blocks and `tool` messages `tool_result` blocks;
- `max_completion_tokens` -> `max_tokens`, `stop` -> `stop_sequences`;
- `tools` in OpenAI's shape (`{type: function, function: {name, description, parameters}}`) become
  `{name, description, input_schema}`; tools already in Anthropic's shape pass through;
- `tool_choice`: `auto`, `none`, `required` (-> `any`), `{type: function, function: {name}}` (-> `tool`), or
  Anthropic's own `{type: auto|any|none|tool}` as given;
- everything else (`temperature`, `top_p`, `top_k`, `thinking`, `stop_sequences`, `metadata`, `stream`)
  as given.

Replies map back to the provider-neutral `Reply`: text blocks -> `completion`, thinking blocks ->
`reasoning`, tool_use blocks -> `tool_calls` as OpenAI-shaped JSON text (the same column for both kinds),
`stop_reason` -> `finish_reason`, and usage so that `prompt_tokens` counts every input token
(`input_tokens + cache_read_input_tokens + cache_creation_input_tokens`) as OpenAI's usage does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

from batchrun.errors import ErrorClass, ProviderError
from batchrun.limits.retry import FATAL_CODES, ROW_CODES, by_message, classify
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

API_VERSION = "2023-06-01"

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
"""Anthropic's `stop_reason` -> OpenAI's `finish_reason`; others (`pause_turn`) pass through as they are."""

ERROR_TYPES: dict[str, tuple[ErrorClass, str]] = {
    "invalid_request_error": (ErrorClass.ROW, "bad_request"),
    "request_too_large": (ErrorClass.ROW, "bad_request"),
    "authentication_error": (ErrorClass.FATAL, "auth"),
    "permission_error": (ErrorClass.FATAL, "auth"),
    "billing_error": (ErrorClass.FATAL, "billing"),
    "not_found_error": (ErrorClass.FATAL, "model_not_found"),
    "rate_limit_error": (ErrorClass.RETRY, "rate_limited"),
    "api_error": (ErrorClass.RETRY, "server_error"),
    "overloaded_error": (ErrorClass.RETRY, "overloaded"),
    "timeout_error": (ErrorClass.RETRY, "timeout"),
}
"""Anthropic's error `type` -> what it means for the run; a type tells even when the status does not
(an `error` event in a stream arrives after HTTP 200)."""

# OpenAI parameters the Messages API does not take: refused at load with what to do instead.
OPENAI_ONLY: dict[str, str] = {
    "n": "the Messages API returns one answer per request",
    "response_format": "ask for JSON in the prompt, or use a tool with an input_schema",
    "frequency_penalty": "the Messages API has no penalties",
    "presence_penalty": "the Messages API has no penalties",
    "logprobs": "the Messages API returns no log probabilities",
    "top_logprobs": "the Messages API returns no log probabilities",
    "logit_bias": "the Messages API has no logit bias",
    "seed": "the Messages API takes no seed",
    "stream_options": "Anthropic streams always report usage",
    "enable_thinking": 'use thinking = {type = "enabled", budget_tokens = 1024}',
    "thinking_budget": 'use thinking = {type = "enabled", budget_tokens = 1024}',
}


class AnthropicProvider:
    """The Anthropic Messages wire format: `x-api-key` auth (or Bearer) and `anthropic-version`."""

    kind: ClassVar[str] = "anthropic"
    emulator_path: ClassVar[str] = ""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        extra_headers: Mapping[str, str],
        auth: Auth | None = None,
    ) -> None:
        self._url = base_url.rstrip("/") + "/v1/messages"
        self._headers = {
            "content-type": "application/json",
            "accept": "application/json",
            "anthropic-version": API_VERSION,
            **extra_headers,
        }
        if api_key:
            self._headers.update(auth_header(api_key, auth or "x-api-key"))  # Qwen Cloud takes either

    @classmethod
    def normalize_params(cls, params: dict[str, Any], *, batch_lines: bool) -> dict[str, Any]:
        """Refuse OpenAI-only keys and a missing `max_tokens` (required by the Messages API)."""
        for key, instead in OPENAI_ONLY.items():
            if key in params and not (key == "n" and params[key] == 1):
                raise ValueError(
                    f'[params] {key} is not part of the Messages API (kind = "anthropic"): {instead}'
                )
        has_max = params.get("max_tokens") is not None or params.get("max_completion_tokens") is not None
        if not has_max and not batch_lines:
            raise ValueError(
                '[params] max_tokens is required for kind = "anthropic" (the Messages API has no default): '
                "add e.g. max_tokens = 1024 under [params]"
            )
        return params

    def url(self) -> str:
        """`{base_url}/v1/messages`."""
        return self._url

    def headers(self) -> dict[str, str]:
        """JSON content type, `anthropic-version`, the key (`x-api-key` or Bearer) and the job's extras."""
        return self._headers

    def content(self, request: Request) -> bytes:
        """The request translated into a Messages API body."""
        return json.dumps(to_messages_body(request.body), ensure_ascii=False, separators=(",", ":")).encode()

    def parse(self, body: bytes) -> Reply:
        """Read a `message` object."""
        data = load_json(body, "the reply")
        if not isinstance(data, dict):
            raise retryable_bad_reply("the reply is not a JSON object")
        if data.get("type") == "error" or ("error" in data and "content" not in data):
            raise error_from_body(200, {}, data)
        blocks = data.get("content")
        if not isinstance(blocks, list):
            raise retryable_bad_reply("the reply has no content list")
        return reply_from_blocks(blocks, data.get("stop_reason"), data.get("usage"), data)

    def streams(self, request: Request) -> bool:
        """`stream: true`."""
        return request.body.get("stream") is True

    def stream_parser(self) -> StreamParser:
        """Messages stream events."""
        from batchrun.providers.streaming import AnthropicStream

        return AnthropicStream()

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        """Read `{"type": "error", "error": {type, message}}` (or an OpenAI-shaped body) and classify it."""
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict):
            data = {"error": {"message": excerpt(body) or f"HTTP {status}"}}
        return error_from_body(status, headers, data)


def reply_from_blocks(blocks: list[Any], stop_reason: Any, usage: Any, message: Mapping[str, Any]) -> Reply:
    """A `Reply` from a message's content blocks, stop reason, usage, id and model."""
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in blocks:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "thinking":
            thoughts.append(str(block.get("thinking") or ""))
        elif kind == "tool_use":
            arguments = json.dumps(block.get("input") or {}, ensure_ascii=False)
            call = {"name": block.get("name"), "arguments": arguments}
            calls.append({"id": block.get("id"), "type": "function", "function": call})
    reason = FINISH_REASONS.get(stop_reason, stop_reason) if isinstance(stop_reason, str) else None
    return Reply(
        completion="".join(texts) if texts else None,
        finish_reason=reason,
        usage=parse_usage(usage),
        model=text_field(message.get("model")),
        response_id=text_field(message.get("id")),
        reasoning="".join(thoughts) if thoughts else None,
        tool_calls=json.dumps(calls, ensure_ascii=False) if calls else None,
    )


def parse_usage(usage: Any) -> Usage:
    """Anthropic usage with `prompt_tokens` counting every input token, cached reads and writes included."""
    if not isinstance(usage, dict):
        return Usage()
    fresh = token_count(usage.get("input_tokens"), "input_tokens")
    read = token_count(usage.get("cache_read_input_tokens"), "cache_read_input_tokens")
    written = token_count(usage.get("cache_creation_input_tokens"), "cache_creation_input_tokens")
    output = token_count(usage.get("output_tokens"), "output_tokens")
    prompt = None if fresh is None else fresh + (read or 0) + (written or 0)
    total = prompt + output if prompt is not None and output is not None else None
    return Usage(prompt_tokens=prompt, completion_tokens=output, cached_tokens=read, total_tokens=total)


def error_from_body(status: int, headers: Mapping[str, str], data: Mapping[str, Any]) -> ProviderError:
    """A classified error from Anthropic's error shape, OpenAI's, or DashScope's flat one."""
    error = data.get("error")
    if not isinstance(error, dict):
        error = data if "code" in data or "message" in data else {"message": str(error or data)}
    code = error.get("code")
    code = excerpt(str(code), 80) if code is not None else None
    kind = error.get("type")
    kind = excerpt(str(kind), 80) if kind is not None else None
    message = excerpt(str(error.get("message") or f"HTTP {status}"))
    # A provider code (DashScope's Arrearage, DataInspectionFailed), or a phrase a provider documents,
    # says more than Anthropic's type does.
    if code in FATAL_CODES or code in ROW_CODES or by_message(status, message) is not None:
        error_class, error_type = classify(status, code, message)
    elif kind in ERROR_TYPES:
        error_class, error_type = ERROR_TYPES[kind]
    else:
        error_class, error_type = classify(status if status != 200 else None, code or kind, message)
    return ProviderError(
        message,
        error_type=error_type,
        error_class=error_class,
        status=status,
        code=code or kind,
        retry_after_s=wait_hint(headers),
    )


def to_messages_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI chat-completions body translated into a Messages API body (see the module docstring)."""
    out: dict[str, Any] = {}
    system: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    for key, value in body.items():
        if key == "messages":
            system, messages = _messages(value)
        elif key == "max_completion_tokens":
            out.setdefault("max_tokens", value)
        elif key == "stop":
            out["stop_sequences"] = [value] if isinstance(value, str) else value
        elif key == "tools":
            out["tools"] = [_tool(tool) for tool in value]
        elif key == "tool_choice":
            out["tool_choice"] = _tool_choice(value)
        elif key == "system":
            system = [*_text_blocks(value), *system]
        else:
            out[key] = value
    if "max_tokens" not in out:
        raise ProviderError(
            "the Messages API requires max_tokens: set [params] max_tokens (or max_tokens in each line)",
            error_type="bad_request",
            error_class=ErrorClass.ROW,
        )
    if system:
        plain = all(set(block) == {"type", "text"} for block in system)
        out["system"] = "\n\n".join(block["text"] for block in system) if plain else system
    out["messages"] = messages
    return out


def _messages(items: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    for message in items:
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.extend(_text_blocks(content))
            continue
        if role == "tool":
            role = "user"
            result = {"type": "tool_result", "tool_use_id": message.get("tool_call_id"), "content": content}
            blocks: Any = [result]
        elif role == "assistant" and message.get("tool_calls"):
            blocks = _blocks(content) if content else []
            blocks += [_tool_use(call) for call in message["tool_calls"]]
        else:
            blocks = content if isinstance(content, str) else _blocks(content)
        # Anthropic wants user and assistant turns to alternate: tool results following one another
        # (one per call of a parallel tool use) go into one user turn.
        last = messages[-1] if messages else None
        if last is not None and last["role"] == role == "user" and isinstance(blocks, list):
            if isinstance(last["content"], str):
                last["content"] = [{"type": "text", "text": last["content"]}]
            last["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})
    return system, messages


def _text_blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [_part(part) for part in content if isinstance(part, dict)]
    return []


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [_part(part) for part in content or [] if isinstance(part, dict)]


def _part(part: dict[str, Any]) -> dict[str, Any]:
    if part.get("type") != "image_url":
        return part  # text parts share their shape; other types are taken to be Anthropic's already
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if isinstance(url, str) and url.startswith("data:") and ";base64," in url:
        media_type, _, data = url[len("data:") :].partition(";base64,")
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    arguments = function.get("arguments")
    try:
        value = json.loads(arguments) if isinstance(arguments, str) else arguments or {}
    except ValueError:
        value = {}
    return {"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": value}


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") != "function" or "function" not in tool:
        return tool  # Anthropic's own shape (or a server tool): as given
    function = tool["function"]
    out = {"name": function.get("name"), "input_schema": function.get("parameters") or {"type": "object"}}
    if function.get("description"):
        out["description"] = function["description"]
    return out


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, str):
        return {"type": {"required": "any"}.get(choice, choice)}
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "tool", "name": (choice.get("function") or {}).get("name")}
    return choice
