"""The two APIs the emulator speaks: OpenAI chat completions and Anthropic messages, JSON and SSE.

A dialect parses and checks a request body, reads what it asks for (`Options`), and writes an `Answer` as
a whole JSON reply or as the server-sent events of a stream; it also writes the dialect's error bodies.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from batchrun.emulator.answers import Answer, Options
from batchrun.emulator.replies import BadRequest, error_body, parse

__all__ = ["ANTHROPIC", "OPENAI", "AnthropicDialect", "Dialect", "OpenAIDialect", "Parsed"]

_PIECES = 4  # a streamed text arrives in about this many deltas


@dataclass(frozen=True, slots=True)
class Parsed:
    """A checked request: its body, its messages in OpenAI's shape (system first), limit, stream, options."""

    body: dict[str, Any]
    model: str
    messages: list[Any]
    limit: int | None
    stream: bool
    options: Options


def _pieces(text: str) -> list[str]:
    """`text` cut into about `_PIECES` consecutive pieces (never empty ones)."""
    if not text:
        return []
    size = max(1, -(-len(text) // _PIECES))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _tools(raw: Any) -> tuple[tuple[str, dict[str, Any]], ...]:
    """(name, input schema) of each tool, in OpenAI's shape or Anthropic's."""
    tools: list[tuple[str, dict[str, Any]]] = []
    for tool in raw if isinstance(raw, list) else []:
        if not isinstance(tool, dict):
            continue
        function = tool.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            tools.append((function["name"], function.get("parameters") or {"type": "object"}))
        elif isinstance(tool.get("name"), str):
            tools.append((tool["name"], tool.get("input_schema") or {"type": "object"}))
    return tuple(tools)


class OpenAIDialect:
    """`POST /v1/chat/completions`."""

    name: ClassVar[str] = "openai"

    def parse(self, raw: bytes) -> Parsed:
        """Parse and check a chat-completions body (400 via BadRequest)."""
        body, limit = parse(raw)
        n = body.get("n", 1)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 10:
            raise BadRequest(f"'n' must be an integer from 1 to 10, got {n!r}.", "n")
        choice = body.get("tool_choice")
        name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
        fmt = body.get("response_format")
        fmt_type = fmt.get("type") if isinstance(fmt, dict) else None
        schema = None
        if fmt_type == "json_schema" and isinstance(fmt, dict):
            schema = (fmt.get("json_schema") or {}).get("schema") or {"type": "object"}
        options = Options(
            thinking=body.get("enable_thinking") is True,
            tools=_tools(body.get("tools")),
            tool_name=name,
            tools_off=choice == "none",
            json_schema=schema,
            json_object=fmt_type == "json_object",
            n=n,
        )
        return Parsed(body, body["model"], body["messages"], limit, body.get("stream") is True, options)

    def authorized(self, headers: Any, api_key: str) -> bool:
        """The key as a Bearer token."""
        return bool(headers.get("Authorization") == f"Bearer {api_key}")

    def error(self, status: int, message: str, type_: str, param: str | None = None) -> bytes:
        """OpenAI's error body."""
        return error_body(message, type_, param)

    def reply(self, key: str, parsed: Parsed, answer: Answer) -> bytes:
        """A `chat.completion`."""
        choices = []
        for index, text in enumerate(answer.texts):
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if index == 0 and answer.reasoning is not None:
                message["reasoning_content"] = answer.reasoning
            if index == 0 and answer.tool_call is not None:
                message["tool_calls"] = [self._call(answer)]
            choices.append(
                {"index": index, "message": message, "logprobs": None, "finish_reason": answer.finish_reason}
            )
        reply = {
            **self._head(key, parsed, "chat.completion"),
            "choices": choices,
            "usage": self._usage(answer),
        }
        return json.dumps(reply).encode()

    def events(self, key: str, parsed: Parsed, answer: Answer) -> list[bytes]:
        """`chat.completion.chunk` events, the usage chunk if asked for, then `[DONE]`."""
        head = self._head(key, parsed, "chat.completion.chunk")
        include_usage = (parsed.body.get("stream_options") or {}).get("include_usage") is True
        frames: list[bytes] = []

        def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> None:
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            data: dict[str, Any] = {**head, "choices": [choice]}
            if include_usage:
                data["usage"] = None
            frames.append(b"data: " + json.dumps(data).encode() + b"\n\n")

        for index, text in enumerate(answer.texts):
            chunk(index, {"role": "assistant", "content": ""})
            if index == 0 and answer.reasoning is not None:
                for piece in _pieces(answer.reasoning):
                    chunk(index, {"reasoning_content": piece})
            if index == 0 and answer.tool_call is not None:
                call = self._call(answer)
                first = {**call, "index": 0, "function": {"name": call["function"]["name"], "arguments": ""}}
                chunk(index, {"tool_calls": [first]})
                for piece in _pieces(call["function"]["arguments"]):
                    chunk(index, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            for piece in _pieces(text or ""):
                chunk(index, {"content": piece})
            chunk(index, {}, answer.finish_reason)
        if include_usage:
            data = {**head, "choices": [], "usage": self._usage(answer)}
            frames.append(b"data: " + json.dumps(data).encode() + b"\n\n")
        frames.append(b"data: [DONE]\n\n")
        return frames

    @staticmethod
    def _head(key: str, parsed: Parsed, obj: str) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-emu-{key[:24]}",
            "object": obj,
            "created": int(time.time()),
            "model": parsed.model,
            "system_fingerprint": "emulator",
        }

    @staticmethod
    def _call(answer: Answer) -> dict[str, Any]:
        call = answer.tool_call
        assert call is not None
        arguments = json.dumps(call.arguments)
        return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": arguments}}

    @staticmethod
    def _usage(answer: Answer) -> dict[str, Any]:
        return {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": answer.reasoning_tokens},
        }


_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


class AnthropicDialect:
    """`POST /v1/messages`."""

    name: ClassVar[str] = "anthropic"

    def parse(self, raw: bytes) -> Parsed:
        """Parse and check a Messages body (400 via BadRequest)."""
        try:
            body = json.loads(raw)
        except ValueError:
            raise BadRequest("The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise BadRequest("The request body must be a JSON object.")
        if not isinstance(body.get("model"), str) or not body["model"]:
            raise BadRequest("model: Field required")
        limit = body.get("max_tokens")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise BadRequest("max_tokens: Field required (an integer >= 1)")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages: Field required (a non-empty list)")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
                raise BadRequest(f"messages.{i}.role: Input should be 'user' or 'assistant'")
            if not isinstance(message.get("content"), str | list):
                raise BadRequest(f"messages.{i}.content: Input should be a string or a list of blocks")
        system = body.get("system")
        if system is not None and not isinstance(system, str | list):
            raise BadRequest("system: Input should be a string or a list of text blocks")
        # The OpenAI shape the reply text and token counts are computed from: system first.
        shaped = ([{"role": "system", "content": system}] if system else []) + messages
        thinking = body.get("thinking")
        choice = body.get("tool_choice")
        choice_type = choice.get("type") if isinstance(choice, dict) else None
        options = Options(
            thinking=isinstance(thinking, dict) and thinking.get("type") == "enabled",
            tools=_tools(body.get("tools")),
            tool_name=choice.get("name") if isinstance(choice, dict) and choice_type == "tool" else None,
            tools_off=choice_type == "none",
        )
        return Parsed(body, body["model"], shaped, limit, body.get("stream") is True, options)

    def authorized(self, headers: Any, api_key: str) -> bool:
        """The key in `x-api-key`, or as a Bearer token (Qwen Cloud takes both)."""
        return bool(
            headers.get("x-api-key") == api_key or headers.get("Authorization") == f"Bearer {api_key}"
        )

    def error(self, status: int, message: str, type_: str, param: str | None = None) -> bytes:
        """Anthropic's error body; the type follows the status, as Anthropic's does."""
        kind = {
            400: "invalid_request_error",
            401: "authentication_error",
            403: "permission_error",
            404: "not_found_error",
            429: "rate_limit_error",
            529: "overloaded_error",
        }.get(status, "api_error")
        return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()

    def reply(self, key: str, parsed: Parsed, answer: Answer) -> bytes:
        """A `message`."""
        reply = {
            **self._message(key, parsed, answer),
            "content": self._blocks(key, answer),
            "stop_reason": _STOP_REASONS[answer.finish_reason],
            "usage": self._usage(answer, answer.completion_tokens),
        }
        return json.dumps(reply).encode()

    def events(self, key: str, parsed: Parsed, answer: Answer) -> list[bytes]:
        """message_start, ping, each block's start/deltas/stop, message_delta (usage), message_stop."""
        frames: list[bytes] = []

        def event(name: str, data: dict[str, Any]) -> None:
            frames.append(
                f"event: {name}\ndata: ".encode() + json.dumps({"type": name, **data}).encode() + b"\n\n"
            )

        start = {**self._message(key, parsed, answer), "content": [], "stop_reason": None}
        event("message_start", {"message": {**start, "usage": self._usage(answer, 1)}})
        event("ping", {})
        for index, block in enumerate(self._blocks(key, answer)):
            kind = block["type"]
            if kind == "thinking":
                event(
                    "content_block_start",
                    {"index": index, "content_block": {**block, "thinking": "", "signature": ""}},
                )
                for piece in _pieces(block["thinking"]):
                    event(
                        "content_block_delta",
                        {"index": index, "delta": {"type": "thinking_delta", "thinking": piece}},
                    )
                signature = {"type": "signature_delta", "signature": block["signature"]}
                event("content_block_delta", {"index": index, "delta": signature})
            elif kind == "tool_use":
                event("content_block_start", {"index": index, "content_block": {**block, "input": {}}})
                for piece in _pieces(json.dumps(block["input"])):
                    partial = {"type": "input_json_delta", "partial_json": piece}
                    event("content_block_delta", {"index": index, "delta": partial})
            else:
                event("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
                for piece in _pieces(block["text"]):
                    event(
                        "content_block_delta",
                        {"index": index, "delta": {"type": "text_delta", "text": piece}},
                    )
            event("content_block_stop", {"index": index})
            if index == 0:
                event("ping", {})
        stop = {"stop_reason": _STOP_REASONS[answer.finish_reason], "stop_sequence": None}
        event("message_delta", {"delta": stop, "usage": {"output_tokens": answer.completion_tokens}})
        event("message_stop", {})
        return frames

    @staticmethod
    def _message(key: str, parsed: Parsed, answer: Answer) -> dict[str, Any]:
        return {
            "id": f"msg_emu_{key[:24]}",
            "type": "message",
            "role": "assistant",
            "model": parsed.model,
            "stop_sequence": None,
        }

    @staticmethod
    def _blocks(key: str, answer: Answer) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        if answer.reasoning is not None:
            blocks.append({"type": "thinking", "thinking": answer.reasoning, "signature": f"emu-{key[:16]}"})
        call = answer.tool_call
        if call is not None:
            blocks.append(
                {
                    "type": "tool_use",
                    "id": call.id.replace("call_", "toolu_"),
                    "name": call.name,
                    "input": call.arguments,
                }
            )
        else:
            blocks.append({"type": "text", "text": answer.texts[0] or ""})
        return blocks

    @staticmethod
    def _usage(answer: Answer, output_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": answer.prompt_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }


Dialect = OpenAIDialect | AnthropicDialect
OPENAI = OpenAIDialect()
ANTHROPIC = AnthropicDialect()
