"""Streamed replies (`stream: true`): server-sent events folded into one `Reply`, as they arrive.

The transport decodes the SSE framing with `httpx-sse` and feeds each event's name and data to a parser
here; the parser keeps only the pieces (text, reasoning, tool-call fragments, usage) and builds the
`Reply` when the stream has ended. A stream that stops before its end (`data: [DONE]` for OpenAI,
`message_stop` for Anthropic) is a retryable `bad_response`: a short answer is never saved as a whole one.
An error object inside the stream (after HTTP 200) is classified like the same error in a reply's body.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from batchrun.providers import anthropic, openai
from batchrun.providers.base import retryable_bad_reply
from batchrun.records import Reply


def _load(data: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        raise retryable_bad_reply(f"a stream event is not valid JSON: {data[:120]!r}") from None
    if not isinstance(value, dict):
        raise retryable_bad_reply(f"a stream event is not a JSON object: {data[:120]!r}")
    return value


@dataclass(slots=True)
class _Choice:
    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)  # by the fragment's index
    finish_reason: str | None = None


class OpenAIStream:
    """`chat.completion.chunk` events: deltas of content, reasoning and tool calls, then usage, `[DONE]`."""

    def __init__(self) -> None:
        self._choices: dict[int, _Choice] = {}
        self._usage: Any = None
        self._id: str | None = None
        self._model: str | None = None
        self._done = False

    def feed(self, event: str, data: str) -> bool:
        """Take one `data:` payload."""
        if data == "[DONE]":
            self._done = True
            return True
        chunk = _load(data)
        if chunk.get("error") or ("code" in chunk and "choices" not in chunk):
            raise openai.error_from_body(200, {}, chunk)  # e.g. DashScope's DataInspectionFailed mid-stream
        self._id = self._id or chunk.get("id")
        self._model = chunk.get("model") or self._model
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict):
                self._take(choice)
        return False

    def _take(self, choice: dict[str, Any]) -> None:
        index = choice.get("index")
        state = self._choices.setdefault(index if isinstance(index, int) else 0, _Choice())
        delta = choice.get("delta") or {}
        if delta.get("content"):
            state.text.append(delta["content"])
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str):
            state.reasoning.append(reasoning)
        for fragment in delta.get("tool_calls") or ():
            position = fragment.get("index")
            call = state.calls.setdefault(
                position if isinstance(position, int) else len(state.calls),
                {"id": None, "type": "function", "name": None, "arguments": []},
            )
            call["id"] = fragment.get("id") or call["id"]
            function = fragment.get("function") or {}
            call["name"] = call["name"] or function.get("name")
            if function.get("arguments"):
                call["arguments"].append(function["arguments"])
        if choice.get("finish_reason"):
            state.finish_reason = choice["finish_reason"]

    def reply(self) -> Reply:
        """The reply the chunks add up to."""
        if not self._done:
            raise retryable_bad_reply("the stream ended before data: [DONE] (cut short?)")
        if not self._choices:
            raise retryable_bad_reply("the stream carried no choices")
        ordered = [self._choices[i] for i in sorted(self._choices)]
        texts = tuple(_text(choice) for choice in ordered)
        first = ordered[0]
        calls = [
            {
                "id": c["id"],
                "type": "function",
                "function": {"name": c["name"], "arguments": "".join(c["arguments"])},
            }
            for _, c in sorted(first.calls.items())
        ]
        return Reply(
            completion=texts[0],
            finish_reason=first.finish_reason,
            usage=openai.parse_usage(self._usage),
            model=self._model,
            response_id=self._id,
            reasoning="".join(first.reasoning) if first.reasoning else None,
            tool_calls=json.dumps(calls, ensure_ascii=False) if calls else None,
            completions=texts if len(texts) > 1 else None,
        )


def _text(choice: _Choice) -> str | None:
    if choice.text:
        return "".join(choice.text)
    return None if choice.calls else ""  # a tool call's content is null, as in a whole reply


class AnthropicStream:
    """Messages events: message_start, content blocks and their deltas, message_delta, message_stop."""

    def __init__(self) -> None:
        self._message: dict[str, Any] = {}
        self._usage: dict[str, Any] = {}
        self._blocks: dict[int, dict[str, Any]] = {}
        self._parts: dict[int, list[str]] = {}  # text, thinking or partial JSON by block index
        self._stop_reason: str | None = None
        self._done = False

    def feed(self, event: str, data: str) -> bool:
        """Take one event (its JSON `type` names it, as the `event:` line does)."""
        payload = _load(data)
        kind = payload.get("type") or event
        if kind == "message_start":
            message = payload.get("message") or {}
            self._message = {"id": message.get("id"), "model": message.get("model")}
            self._usage.update(message.get("usage") or {})
        elif kind == "content_block_start":
            index = payload.get("index", len(self._blocks))
            self._blocks[index] = dict(payload.get("content_block") or {})
            self._parts[index] = []
        elif kind == "content_block_delta":
            delta = payload.get("delta") or {}
            piece = delta.get("text") or delta.get("thinking") or delta.get("partial_json")
            if isinstance(piece, str):
                self._parts.setdefault(payload.get("index", 0), []).append(piece)
        elif kind == "message_delta":
            self._stop_reason = (payload.get("delta") or {}).get("stop_reason") or self._stop_reason
            # Usage here is cumulative: it replaces what message_start said, field by field.
            self._usage.update({k: v for k, v in (payload.get("usage") or {}).items() if v is not None})
        elif kind == "message_stop":
            self._done = True
            return True
        elif kind == "error":
            raise anthropic.error_from_body(200, {}, payload)  # e.g. overloaded_error mid-stream: retried
        return False  # ping, content_block_stop and events added later change nothing

    def reply(self) -> Reply:
        """The reply the events add up to."""
        if not self._done:
            raise retryable_bad_reply("the stream ended before message_stop (cut short?)")
        blocks = []
        for index in sorted(self._blocks):
            block = self._blocks[index]
            joined = "".join(self._parts.get(index, ()))
            kind = block.get("type")
            if kind == "text":
                block["text"] = block.get("text", "") + joined
            elif kind == "thinking":
                block["thinking"] = block.get("thinking", "") + joined
            elif kind == "tool_use" and joined:
                try:
                    block["input"] = json.loads(joined)
                except ValueError:
                    raise retryable_bad_reply(
                        f"a streamed tool input is not valid JSON: {joined[:120]!r}"
                    ) from None
            blocks.append(block)
        return anthropic.reply_from_blocks(blocks, self._stop_reason, self._usage, self._message)
