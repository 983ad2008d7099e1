"""What the emulator answers: chat request parsing, the deterministic reply text, token counts, errors."""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = [
    "DIRECTIVE_400",
    "ERROR_401",
    "ERROR_DIRECTIVE",
    "MODELS",
    "BadRequest",
    "completion",
    "content_text",
    "count_tokens",
    "cut",
    "error_body",
    "parse",
    "prompt_tokens",
    "reply_text",
    "wants_400",
]

MODELS = ("qwen3-8b", "qwen3-32b", "qwen3-235b-a22b", "qwen2.5-7b-instruct")
"""The model ids `GET /v1/models` lists; chat completions accept any model name."""

DIRECTIVE_400 = "[[emulator:400]]"
"""Put this in the last user message to get a 400 back: how tests exercise a row that fails for good."""

# The reply vocabulary by part of speech: cycling through `_GRAMMAR` makes word salad read like a sentence
# ("The quiet river keeps our letter while every early team finds the plan."). No "a": it cannot precede a
# vowel.
# fmt: off
_DETERMINERS = ("the", "this", "our", "every", "each", "that", "one")
_ADJECTIVES = ("small", "large", "quiet", "bright", "early", "late", "simple", "careful", "useful", "clear")
_NOUNS = (
    "team", "city", "river", "garden", "window", "letter", "market", "morning", "question", "answer",
    "plan", "report", "system", "road", "house", "friend", "teacher", "book", "idea", "result",
)
_VERBS = ("reads", "builds", "finds", "keeps", "shows", "brings", "takes", "makes", "opens", "follows")
_LINKS = ("and", "but", "while", "because", "so", "until", "after", "before", "when", "although")
# fmt: on
_GRAMMAR = (_DETERMINERS, _ADJECTIVES, _NOUNS, _VERBS, _DETERMINERS, _NOUNS, _LINKS)
_ENDINGS = frozenset(_NOUNS + _VERBS)  # a sentence cut short still ends on one of these
_SLOTS = tuple(_GRAMMAR[i % len(_GRAMMAR)] for i in range(40))  # the word list for each position


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> bytes:
    """The JSON body OpenAI sends with every non-200 answer."""
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()


ERROR_401 = error_body("Incorrect API key provided.", "invalid_request_error", code="invalid_api_key")
"""The body of a 401: a missing or wrong bearer token."""

ERROR_DIRECTIVE = error_body(
    f"The request was rejected by the emulator: {DIRECTIVE_400} in the prompt.",
    "invalid_request_error",
    param="messages",
    code="invalid_request",
)
"""The body of the 400 that `DIRECTIVE_400` asks for."""


def count_tokens(text: str) -> int:
    """A cheap deterministic token estimate (about four characters a token), never below 1."""
    return max(1, round(len(text) / 4))


def content_text(content: object) -> str:
    """The text of a message's `content`: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    return ""


def reply_text(model: str, messages: list[Any]) -> str:
    """The answer to a conversation: a sentence of 3 to 40 words, fixed by a hash of model and messages."""
    # Canonical JSON so key order and whitespace in the request do not change the answer; sampling
    # parameters (temperature, max_tokens, ...) are left out on purpose.
    canonical = json.dumps({"model": model, "messages": messages}, sort_keys=True, separators=(",", ":"))
    # One byte of hash per choice (the length, then each word), 64 bytes from two chained sha256: a seeded
    # `random.Random` costs several times more, and the slight modulo bias does not matter here.
    digest = hashlib.sha256(canonical.encode()).digest()
    digest += hashlib.sha256(digest).digest()
    length = 3 + digest[0] % 38
    words = [slot[byte % len(slot)] for slot, byte in zip(_SLOTS[:length], digest[1:], strict=False)]
    while words[-1] not in _ENDINGS:  # stops by the third word at the latest, a noun
        words.pop()
    return " ".join(words).capitalize() + "."


def completion(model: str, messages: list[Any], limit: int | None) -> tuple[str, str]:
    """The reply text cut to `limit` completion tokens, and its finish_reason ("stop" or "length")."""
    return cut(reply_text(model, messages), limit)


def cut(text: str, limit: int | None) -> tuple[str, str]:
    """`text` cut to `limit` completion tokens, and its finish_reason ("stop" or "length")."""
    if limit is not None and count_tokens(text) > limit:
        # Four characters a token, so this cut keeps the estimate at or below the limit.
        return text[: limit * 4].rstrip(), "length"
    return text, "stop"


def prompt_tokens(messages: list[Any]) -> int:
    """The prompt's token count as OpenAI's chat format adds it up: 4 per message and 3 per request."""
    return sum(count_tokens(content_text(m.get("content"))) + 4 for m in messages) + 3


def wants_400(messages: list[Any]) -> bool:
    """True when the last user message carries `DIRECTIVE_400`."""
    last_user = next((m for m in reversed(messages) if m["role"] == "user"), None)
    return last_user is not None and DIRECTIVE_400 in content_text(last_user.get("content"))


class BadRequest(Exception):
    """A request body that cannot be answered; becomes a 400 naming the offending parameter."""

    def __init__(self, message: str, param: str | None = None) -> None:
        """Keep the message and the parameter (`param` in OpenAI's error body) it is about."""
        super().__init__(message)
        self.param = param


def parse(raw: bytes) -> tuple[dict[str, Any], int | None]:
    """Parse and check a chat-completions body; return it and its completion-token limit, if any."""
    try:
        body = json.loads(raw)
    except ValueError:  # also bad UTF-8
        raise BadRequest("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise BadRequest("'model' is required and must be a non-empty string.", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' is required and must be a non-empty list.", "messages")
    for i, message in enumerate(messages):
        # Checked here so that the answering code can index messages without guarding every step.
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"'messages[{i}]' must be an object with a string 'role'.", f"messages[{i}]")
        if not isinstance(message.get("content"), str | list | None):
            raise BadRequest(
                f"'messages[{i}].content' must be a string or a list of parts.", f"messages[{i}]"
            )
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise BadRequest(f"'{name}' must be an integer >= 1, got {value!r}.", name)
    # The newer name wins when both are sent; valid limits are >= 1, so `or` only skips absent ones.
    return body, body.get("max_completion_tokens") or body.get("max_tokens")
