"""What a request body must be for a provider to take it, checked before anything is sent.

A body goes out as JSON, so every value in it must be one JSON can carry (no NaN or infinity, no date, no
key that is not text) and nest no deeper than any real request does; the parameters the chat wire formats
define must have the types those formats require (`max_tokens` a whole number, `stream` true or false,
...); and every message must be an object with a `role`. The same rules check `[params]` when a job file is
loaded (naming the key) and each rendered row before a run sends anything (naming the row). The rules of
one wire format alone (Anthropic's required `max_tokens`, OpenAI-only keys) are its `normalize_params`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import orjson

MAX_DEPTH = 254
"""Most objects and lists nested in one another in a request body: orjson's limit, far past the dozen
levels a tool's schema needs; 100,000 is refused rather than crashing a recursive encoder."""

_INT_RANGE = (-(2**63), 2**64)  # what orjson (and most JSON readers) take: 64-bit, signed or not


def json_problem(value: Any, where: str = "value", *, parsed: bool = False) -> str | None:
    """Why `value` cannot go into a JSON request body (naming the path to the bad part), or None.

    Walked without recursion, so a value nested 100,000 deep is refused rather than crashing the walk; the
    path to each part is kept as a link to its parent's and spelled out only for the message.

    `parsed`: the value came from `orjson.loads`, so its types are JSON's and its numbers finite; then
    `orjson.dumps` (in C, with the same depth and integer limits) decides, and the walk only words a no.
    """
    if parsed:
        try:
            orjson.dumps(value)
            return None
        except orjson.JSONEncodeError:
            pass
    stack: list[tuple[Any, int, Any]] = [(value, 0, None)]
    while stack:
        item, depth, trail = stack.pop()
        if isinstance(item, str | bool) or item is None:
            continue
        problem = None
        if isinstance(item, int):
            if not _INT_RANGE[0] <= item < _INT_RANGE[1]:
                problem = f"is a number too large for JSON readers ({str(item)[:20]}...)"
        elif isinstance(item, float):
            if not math.isfinite(item):
                problem = f"is {item}, which JSON cannot carry"
        elif isinstance(item, dict):
            if depth >= MAX_DEPTH:
                problem = f"nests deeper than {MAX_DEPTH} levels"
            elif not all(isinstance(key, str) for key in item):
                problem = f"has a key that is not text ({next(k for k in item if not isinstance(k, str))!r})"
            else:
                stack.extend((child, depth + 1, (trail, "." + key)) for key, child in item.items())
        elif isinstance(item, list):
            if depth >= MAX_DEPTH:
                problem = f"nests deeper than {MAX_DEPTH} levels"
            else:
                stack.extend((child, depth + 1, (trail, f"[{i}]")) for i, child in enumerate(item))
        else:
            problem = f"is a {type(item).__name__} ({_short(item)}), which JSON cannot carry"
        if problem is not None:
            return f"{_path(where, trail)} {problem}"
    return None


def _path(where: str, trail: Any) -> str:
    """`where.a[1]` from a chain of (parent, step) links, cut short past 80 characters."""
    steps: list[str] = []
    while trail is not None:
        trail, step = trail
        steps.append(step)
    path = where + "".join(reversed(steps))
    return path if len(path) <= 80 else path[:60] + "..." + path[-17:]


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_text_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _is_tools(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(tool, dict) and isinstance(tool.get("function", {}), dict) for tool in value
    )


_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "count": (_is_count, "a whole number of 1 or more"),
    "int": (_is_int, "a whole number"),
    "number": (_is_number, "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "text": (lambda v: isinstance(v, str), "text"),
    "object": (lambda v: isinstance(v, dict), "a table (an object)"),
    "stop": (lambda v: isinstance(v, str) or _is_text_list(v), "text or a list of text"),
    "text_list": (_is_text_list, "a list of text"),
    "tools": (_is_tools, "a list of tool tables, each `function` a table"),
    "tool_choice": (lambda v: isinstance(v, str | dict), "text or a table"),
}

PARAMS: dict[str, str] = {
    "max_tokens": "count",
    "max_completion_tokens": "count",
    "n": "count",
    "thinking_budget": "count",
    "top_k": "int",
    "seed": "int",
    "top_logprobs": "int",
    "temperature": "number",
    "top_p": "number",
    "frequency_penalty": "number",
    "presence_penalty": "number",
    "stream": "bool",
    "logprobs": "bool",
    "enable_thinking": "bool",
    "parallel_tool_calls": "bool",
    "stop": "stop",
    "stop_sequences": "text_list",
    "response_format": "object",
    "stream_options": "object",
    "thinking": "object",
    "metadata": "object",
    "logit_bias": "object",
    "tools": "tools",
    "tool_choice": "tool_choice",
    "user": "text",
    "reasoning_effort": "text",
    "service_tier": "text",
}
"""Parameters of the chat wire formats whose type a provider enforces: name -> rule in `_RULES`.

Others pass as any JSON value: servers add their own, and a table here must not refuse them.
"""


def takes_text(param: str) -> bool:
    """True when the parameter's value is text (so `--set params.NAME=word` may leave the quotes out)."""
    return PARAMS.get(param) == "text"


def expected(param: str) -> str | None:
    """What a known parameter takes, in words ("a number"); None for a parameter with no rule."""
    rule = PARAMS.get(param)
    return _RULES[rule][1] if rule else None


def param_problem(name: str, value: Any) -> str | None:
    """Why `value` cannot be the request parameter `name` (its type, or JSON), or None."""
    return _rule_problem(name, value) or json_problem(value, name)


def _rule_problem(name: str, value: Any) -> str | None:
    """Why `value` has not the type the parameter `name` takes (none for a parameter with no rule)."""
    rule = PARAMS.get(name)
    if rule is not None:
        check, wanted = _RULES[rule]
        if not check(value):
            return f"{name} must be {wanted}, not {_short(value)}"
    return None


def params_problem(params: Mapping[str, Any]) -> str | None:
    """The first parameter that cannot be sent, as `param_problem` words it, or None."""
    for name, value in params.items():
        problem = param_problem(name, value)
        if problem is not None:
            return problem
    return None


def messages_problem(messages: Any, where: str = "messages", *, parsed: bool = False) -> str | None:
    """Why `messages` is not a list of chat messages a provider takes, or None.

    Each message is an object with a text `role`; its `content` is text, a list of part objects, or null
    (an assistant turn of tool calls); `tool_calls` a list of objects whose `function` is an object.
    `parsed`: the messages came from `orjson.loads` (see `json_problem`).
    """
    return _shape_problem(messages, where) or json_problem(messages, where, parsed=parsed)


def _shape_problem(messages: Any, where: str) -> str | None:
    if not isinstance(messages, list) or not messages:
        return f"{where} must be a non-empty list of messages ({{role, content}})"
    for i, message in enumerate(messages):
        at = f"{where}[{i}]"
        if not isinstance(message, dict):
            return f"{at} is {_short(message)}: a message is an object with a role and a content"
        if not isinstance(message.get("role"), str):
            return f'{at} has no role (text such as "user")'
        content = message.get("content")
        if not (content is None or isinstance(content, str) or _is_parts(content)):
            return f"{at}.content must be text or a list of part objects, not {_short(content)}"
        calls = message.get("tool_calls")
        if calls is not None and not _is_tools(calls):
            return f"{at}.tool_calls must be a list of objects, each `function` an object"
    return None


def body_problem(body: Mapping[str, Any], *, parsed: bool = False) -> str | None:
    """Why a whole chat request body cannot be sent (messages, parameters, JSON), or None.

    `parsed`: the body came from `orjson.loads`, merged perhaps with `[params]` already checked at load.
    """
    problem = _shape_problem(body.get("messages"), "body.messages")
    for name, value in body.items():
        if problem is None and name != "messages":
            problem = _rule_problem(name, value)
    return problem or json_problem(body, "body", parsed=parsed)


def is_utf8(text: str) -> bool:
    """False for a str holding lone surrogates (bytes that were not UTF-8, kept by surrogateescape)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _is_parts(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(part, dict) for part in value)


def _short(value: Any) -> str:
    """A value for a message: its repr, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
