"""Secrets out of everything batchrun writes or prints, and untrusted text cut to a readable excerpt.

A server may echo the request back: its `Authorization` header in an error body, or in the completion
itself. The run's secrets are the API key as sent, the credentials of a `base_url`
(`https://user:PASSWORD@host/v1?key=VALUE`) and the values of auth headers in `[provider.headers]`. Every
string that comes from a reply passes through `redact` before it reaches the journal, the output, the cache,
the summary, the log or the screen; each secret is replaced with `***`.

The secrets of the run in progress live in a context variable (`hiding`), so the code that reads replies,
down to the providers' parsers, redacts without a secret handed through every call; anyio's tasks and worker
threads inherit it.

Redaction comes before truncation (`excerpt`): cutting first could leave the first half of a key in the text.
Strings shorter than `MIN_SECRET` are not secrets: no real API key is that short, and replacing them would
garble completions (a key `abc` would blank every `abc`).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from batchrun.records import Reply

MASK = "***"
MIN_SECRET = 8
EXCERPT_CHARS = 200  # how much of a body an error message quotes
SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key", "cookie"}
)

_SECRETS: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("batchrun_secrets", default=())

T = TypeVar("T")


def secrets_of(
    api_key: str | None, base_url: str | None = None, headers: Mapping[str, str] | None = None
) -> tuple[str, ...]:
    """The strings to hide for one endpoint: the key, the URL's credentials, auth headers' values."""
    found: list[str] = [api_key] if api_key else []
    if base_url:
        parts = urlsplit(base_url)
        if parts.password:
            found += [parts.password, unquote(parts.password)]
        if "@" in parts.netloc:
            found.append(parts.netloc.rpartition("@")[0])  # user:password as written
        found += [value for _, value in parse_qsl(parts.query)]
    for name, value in (headers or {}).items():
        if name.lower() in SECRET_HEADERS:
            found.append(value)
            scheme, _, token = value.partition(" ")
            if token and scheme.lower() in ("bearer", "basic", "token"):
                found.append(token)
    # Longest first: a secret that contains another is replaced whole.
    return tuple(sorted({s.strip() for s in found if len(s.strip()) >= MIN_SECRET}, key=len, reverse=True))


@contextlib.contextmanager
def hiding(secrets: Iterable[str]) -> Iterator[None]:
    """Redact `secrets` (besides those already hidden) from every string passed to `redact` meanwhile."""
    token = _SECRETS.set(tuple(dict.fromkeys((*_SECRETS.get(), *secrets))))
    try:
        yield
    finally:
        _SECRETS.reset(token)


def current() -> tuple[str, ...]:
    """The secrets hidden now."""
    return _SECRETS.get()


def redact(text: str, secrets: Iterable[str] | None = None) -> str:
    """`text` with every secret (the current ones, unless given) replaced by `***`."""
    for secret in current() if secrets is None else secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def excerpt(text: str | bytes, limit: int = EXCERPT_CHARS) -> str:
    """Untrusted text as a message may quote it: redacted first, then one line of `limit` characters."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    # The whole text is redacted before any of it is cut (it is bounded by the reply's size cap).
    return _cut(" ".join(redact(text)[: limit * 4].split()), limit)


def first_line(exc: BaseException, limit: int = EXCERPT_CHARS) -> str:
    """An exception's message as a message may quote it: redacted whole, then its first line, at most
    `limit` characters (a parser's, a filesystem's or Ray's message may quote a whole row or reply); the
    exception's type when it says nothing."""
    text = redact(str(exc)).strip()
    if not text:
        return type(exc).__name__
    return _cut(text.splitlines()[0], limit)


def _cut(text: str, limit: int) -> str:
    """`text` in at most `limit` characters, "…" marking a cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def redact_reply(reply: Reply) -> Reply:
    """A reply with the secrets gone from every string the server sent (the same object if none was)."""
    secrets = current()
    if not secrets:
        return reply
    changed: dict[str, Any] = {}
    for name in ("completion", "finish_reason", "model", "response_id", "reasoning", "tool_calls"):
        value = getattr(reply, name)
        if value is not None and any(secret in value for secret in secrets):
            changed[name] = redact(value, secrets)
    if reply.completions is not None and any(
        text is not None and secret in text for text in reply.completions for secret in secrets
    ):
        changed["completions"] = tuple(None if t is None else redact(t, secrets) for t in reply.completions)
    return replace(reply, **changed) if changed else reply


def redact_data(value: T) -> T:
    """Any JSON-like value (dicts, lists, strings) with the secrets gone from every string in it."""
    if not current():
        return value
    return _walk(value)  # type: ignore[no-any-return]


def _walk(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {_walk(k): _walk(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_walk(v) for v in value)
    return value


def safe_url(url: str) -> str:
    """`url` as it may be shown: user info and query values replaced by `***`."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    query = "&".join(f"{name}={MASK}" for name, _ in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
