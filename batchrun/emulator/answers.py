"""What the emulator answers beyond plain text, in wire-neutral form: thinking, a tool call, JSON, n choices.

A request asks for each by the usual means of its API:

- thinking: `enable_thinking: true` (DashScope, OpenAI kind) or `thinking: {type: enabled}` (Anthropic);
- a tool call: a non-empty `tools` list, unless `tool_choice` is `none`; the tool named by `tool_choice`,
  else the first, is called with arguments built from its JSON schema (so they validate against it);
- JSON: `response_format` `json_object` (an object of the shape the prompt shows, else `{"answer": text}`)
  or `json_schema` (an object of the schema);
- several choices: `n` (OpenAI kind).

A prompt that offers words or a scale to answer with gets one of them (`batchrun.emulator.choices`). Every
part is a function of the model, the messages and those options, like the plain reply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from batchrun.emulator import choices
from batchrun.emulator.replies import completion, count_tokens, cut, prompt_tokens, reply_text

__all__ = ["Answer", "Options", "ToolCall", "answer"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call of a tool the request offered."""

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Options:
    """What a request asks for beyond text, already read from its own API's fields."""

    thinking: bool = False
    tools: tuple[tuple[str, dict[str, Any]], ...] = ()  # (name, JSON schema of its input)
    tool_name: str | None = None  # the tool tool_choice names
    tools_off: bool = False  # tool_choice none
    json_schema: dict[str, Any] | None = None  # response_format json_schema
    json_object: bool = False  # response_format json_object
    n: int = 1


@dataclass(frozen=True, slots=True)
class Answer:
    """A reply, wire-neutral: a text per choice (None for a tool call), reasoning, a tool call, usage."""

    texts: tuple[str | None, ...]
    finish_reason: str  # stop | length | tool_calls
    reasoning: str | None
    tool_call: ToolCall | None
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int


def answer(key: str, model: str, messages: list[Any], limit: int | None, options: Options) -> Answer:
    """The reply to a parsed request whose request key is `key`."""
    instructions, reading = choices.read(messages)
    offered = choices.offered(instructions)

    def text_of(name: str) -> tuple[str, str]:
        if offered is not None:
            return cut(choices.pick(offered, reading, name), limit)
        return completion(name, messages, limit)

    text, finish_reason = text_of(model)
    reasoning = reply_text(model + "/thinking", messages) if options.thinking else None
    reasoning_tokens = count_tokens(reasoning) if reasoning else 0
    call = _tool_call(key, text, options, reading, model)
    texts: tuple[str | None, ...]
    if call is not None:
        texts, finish_reason = (None,), "tool_calls"
        spent = count_tokens(json.dumps(call.arguments))
    else:
        if options.json_schema is not None:
            text = json.dumps(_value(options.json_schema, text, reading, model))
        elif options.json_object:
            shaped = choices.shaped(instructions, reading, model)
            text = json.dumps(shaped if shaped is not None else {"answer": text})
        others = [text_of(f"{model}#{i}")[0] for i in range(1, options.n)]
        texts = (text, *others)
        spent = sum(count_tokens(t) for t in (text, *others))
    return Answer(
        texts=texts,
        finish_reason=finish_reason,
        reasoning=reasoning,
        tool_call=call,
        prompt_tokens=prompt_tokens(messages),
        completion_tokens=spent + reasoning_tokens,
        reasoning_tokens=reasoning_tokens,
    )


def _tool_call(
    key: str, text: str, options: Options, reading: choices.Reading, model: str
) -> ToolCall | None:
    if not options.tools or options.tools_off:
        return None
    tools = dict(options.tools)
    name = options.tool_name if options.tool_name in tools else options.tools[0][0]
    arguments = _value(tools[name], text, reading, model)
    if not isinstance(arguments, dict):
        arguments = {"input": arguments}
    return ToolCall(f"call_emu_{key[:20]}", name, arguments)


def _value(schema: Any, text: str, reading: choices.Reading, model: str) -> Any:
    """A value that validates against a (simple) JSON schema, made from the reply text; an enum's value is
    picked as a prompt's offered words are."""
    if not isinstance(schema, dict):
        return text
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        names = [str(value) for value in schema["enum"]]
        return schema["enum"][names.index(choices.pick(names, reading, model))]
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties") or {}
        if not properties:
            return {"input": text}
        return {name: _value(sub, text, reading, f"{model}/{name}") for name, sub in properties.items()}
    if kind == "array":
        return [_value(schema.get("items"), text, reading, model)]
    if kind == "integer":
        return len(text.split())
    if kind == "number":
        return len(text.split()) / 2
    if kind == "boolean":
        return len(text) % 2 == 0
    if kind == "null":
        return None
    return text
