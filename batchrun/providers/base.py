"""The small protocol every wire format implements, and helpers they share."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Protocol

import orjson

from batchrun.errors import ProviderError
from batchrun.limits.retry import bad_response
from batchrun.records import Reply, Request
from batchrun.redact import excerpt

MAX_TOKENS = 100_000_000
"""More tokens than any reply can hold (the largest contexts are ~10M): a count past it is not believed."""


class StreamParser(Protocol):
    """Folds one streamed reply's server-sent events into a `Reply` (see `batchrun.providers.streaming`)."""

    def feed(self, event: str, data: str) -> bool:
        """Take one event; True when it was the stream's last. Raises `ProviderError` on an error event."""
        ...

    def reply(self) -> Reply:
        """The whole reply; a retryable `ProviderError` if the stream did not reach its end."""
        ...


class Provider(Protocol):
    """A wire format: how to build a request, read a reply and read an error.

    Adapters hold no connection and do no I/O; `batchrun.net.transport` sends what they build.
    """

    kind: ClassVar[str]

    def url(self) -> str:
        """The endpoint every request of this run goes to."""
        ...

    def headers(self) -> dict[str, str]:
        """Headers sent with every request (auth included)."""
        ...

    def content(self, request: Request) -> bytes:
        """The request body on the wire."""
        ...

    def parse(self, body: bytes) -> Reply:
        """Read a 200 reply; raise `ProviderError` when it is not a usable answer."""
        ...

    def streams(self, request: Request) -> bool:
        """True when the request is sent with `stream: true` (its reply is read as server-sent events)."""
        ...

    def stream_parser(self) -> StreamParser:
        """A fresh parser for one streamed reply."""
        ...

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        """Turn a non-200 reply into a classified `ProviderError`."""
        ...


Auth = Literal["bearer", "x-api-key"]


def auth_header(api_key: str, auth: Auth) -> dict[str, str]:
    """The header that carries the key: `authorization: Bearer KEY`, or `x-api-key: KEY`."""
    return {"x-api-key": api_key} if auth == "x-api-key" else {"authorization": f"Bearer {api_key}"}


"""How the API key is sent: `Authorization: Bearer KEY` or `x-api-key: KEY`; None: the kind's default."""


class ProviderType(Protocol):
    """A wire format's class: what the registry holds, checks a job's params at load, builds adapters."""

    kind: str
    emulator_path: str  # where the built-in emulator serves this kind, relative to its root URL

    def __call__(
        self, base_url: str, api_key: str | None, extra_headers: Mapping[str, str], auth: Auth | None = None
    ) -> Provider:
        """An adapter for one endpoint."""
        ...

    def normalize_params(self, params: dict[str, Any], *, batch_lines: bool) -> dict[str, Any]:
        """The job's `[params]` as this kind sends them; ValueError (naming the key) when they cannot work."""
        ...


def load_json(body: bytes, what: str) -> Any:
    """Decode a JSON reply; one that is not JSON is a `bad_response` quoting its start."""
    try:
        return orjson.loads(body)  # a reply is parsed per row: orjson takes a third of json's CPU
    except ValueError:
        pass
    try:
        # What orjson refuses and json reads: NaN and Infinity (some servers' logprobs), lone surrogates.
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise retryable_bad_reply(f"{what} is not JSON: {excerpt(body)}") from None


def token_count(value: Any, name: str = "a token count") -> int | None:
    """A usage field as a count; None when absent or not a number.

    A negative count, or one past `MAX_TOKENS`, is a `bad_response`: believing it would make the cost
    negative (a budget that never fills) or absurd.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if math.isnan(value):
        return None
    if not 0 <= value <= MAX_TOKENS:
        raise retryable_bad_reply(f"the reply's usage says {name} = {excerpt(str(value), 40)}: not believed")
    return int(value)


def text_field(value: Any) -> str | None:
    """A reply's field the output holds as text; a number or an object there is dropped, not trusted."""
    return value if isinstance(value, str) else None


def retryable_bad_reply(message: str) -> ProviderError:
    """A complete 200 that cannot be used (not JSON, missing fields): asked once more, then its row fails."""
    return bad_response(message)
