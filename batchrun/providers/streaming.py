"""Streamed replies (`stream: true`): server-sent events folded into one `Reply`, as they arrive.

The transport decodes the SSE framing with `httpx-sse` and feeds each event's name and data to a parser
here; the parser keeps only the pieces (text, reasoning, tool-call fragments, usage) and builds the
`Reply` when the stream has ended. A stream that stops before its end (`data: [DONE]` for OpenAI,
`message_stop` for Anthropic) and before the model said why it stopped (a `finish_reason`, a `stop_reason`)
was cut short: a retryable `truncated`, never a short answer saved as a whole one. One that stops after
saying why is whole: some OpenAI-compatible servers never send `[DONE]`. An error object inside the stream
(after HTTP 200) is classified like the same error in a reply's body. Servers' fields are checked for their
type before use: a number where text belongs is dropped, never a crash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from batchrun.limits.retry import cut_short
from batchrun.providers import anthropic, openai
from batchrun.providers.base import retryable_bad_reply, text_field
from batchrun.records import Reply
from batchrun.redact import excerpt


def _load(data: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        raise retryable_bad_reply(f"a stream event is not JSON: {excerpt(data)}") from None
    if not isinstance(value, dict):
        raise retryable_bad_reply(f"a stream event is not a JSON object: {excerpt(data)}")
    return value


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


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
        self._id = self._id or text_field(chunk.get("id"))
        self._model = text_field(chunk.get("model")) or self._model
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict):
                self._take(choice)
        return False

    def _take(self, choice: dict[str, Any]) -> None:
        index = choice.get("index")
        state = self._choices.setdefault(index if isinstance(index, int) else 0, _Choice())
        delta = _object(choice.get("delta"))
        if content := text_field(delta.get("content")):
            state.text.append(content)
        reasoning = text_field(delta.get("reasoning_content") or delta.get("reasoning"))
        if reasoning:
            state.reasoning.append(reasoning)
        fragments = delta.get("tool_calls")
        for fragment in fragments if isinstance(fragments, list) else ():
            if not isinstance(fragment, dict):
                continue
            position = fragment.get("index")
            call = state.calls.setdefault(
                position if isinstance(position, int) else len(state.calls),
                {"id": None, "type": "function", "name": None, "arguments": []},
            )
            call["id"] = text_field(fragment.get("id")) or call["id"]
            function = _object(fragment.get("function"))
            call["name"] = call["name"] or text_field(function.get("name"))
            if arguments := text_field(function.get("arguments")):
                call["arguments"].append(arguments)
        if finish_reason := text_field(choice.get("finish_reason")):
            state.finish_reason = finish_reason

    def reply(self) -> Reply:
        """The reply the chunks add up to."""
        finished = bool(self._choices) and all(c.finish_reason for c in self._choices.values())
        if not self._done and not finished:
            raise cut_short("the stream ended before data: [DONE] and before a finish_reason (cut short)")
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


def _index(payload: dict[str, Any], default: int) -> int:
    index = payload.get("index", default)
    return index if isinstance(index, int) else default


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
            message = _object(payload.get("message"))
            self._message = {"id": message.get("id"), "model": message.get("model")}
            self._usage.update(_object(message.get("usage")))
        elif kind == "content_block_start":
            index = _index(payload, len(self._blocks))
            self._blocks[index] = dict(_object(payload.get("content_block")))
            self._parts[index] = []
        elif kind == "content_block_delta":
            delta = _object(payload.get("delta"))
            piece = delta.get("text") or delta.get("thinking") or delta.get("partial_json")
            if isinstance(piece, str):
                self._parts.setdefault(_index(payload, 0), []).append(piece)
        elif kind == "message_delta":
            self._stop_reason = (
                text_field(_object(payload.get("delta")).get("stop_reason")) or self._stop_reason
            )
            # Usage here is cumulative: it replaces what message_start said, field by field.
            usage = _object(payload.get("usage"))
            self._usage.update({k: v for k, v in usage.items() if v is not None})
        elif kind == "message_stop":
            self._done = True
            return True
        elif kind == "error":
            raise anthropic.error_from_body(200, {}, payload)  # e.g. overloaded_error mid-stream: retried
        return False  # ping, content_block_stop and events added later change nothing

    def reply(self) -> Reply:
        """The reply the events add up to."""
        if not self._done and not self._stop_reason:
            raise cut_short("the stream ended before message_stop and before a stop_reason (cut short)")
        blocks = []
        for index in sorted(self._blocks):
            block = self._blocks[index]
            joined = "".join(self._parts.get(index, ()))
            kind = block.get("type")
            if kind == "text":
                block["text"] = str(block.get("text") or "") + joined
            elif kind == "thinking":
                block["thinking"] = str(block.get("thinking") or "") + joined
            elif kind == "tool_use" and joined:
                try:
                    block["input"] = json.loads(joined)
                except ValueError:
                    raise retryable_bad_reply(
                        f"a streamed tool input is not JSON: {excerpt(joined)}"
                    ) from None
            blocks.append(block)
        return anthropic.reply_from_blocks(blocks, self._stop_reason, self._usage, self._message)
