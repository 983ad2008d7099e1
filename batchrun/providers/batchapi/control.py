"""The control calls of a Batch API (a few per batch): JSON requests and streamed downloads over httpx, with
bounded retries on 429, 5xx, timeouts and dropped connections.

Every failure becomes a classified `ProviderError` (by the provider's own `error` reader, so a 401 names the
key, an `insufficient_quota` stops the run), its message bounded and scrubbed of the API key. A 404 or 405
here means the server does not offer this Batch API (or has no such batch): that stops the run.
Ids a server hands back go into later URLs, so they are checked first (`checked_id`).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, stop_after_delay

from batchrun.errors import ErrorClass, ProviderError
from batchrun.limits.retry import BackoffWait, classify
from batchrun.providers.base import Provider
from batchrun.redact import MASK, redact

__all__ = [
    "DEFAULT_RETRY",
    "MESSAGE_CHARS",
    "Control",
    "Retry",
    "checked_id",
    "file_chunks",
    "scrub",
    "scrubbed",
]

MESSAGE_CHARS = 1000
"""The most of a server's message kept in an error (they land in the output's `error` column)."""

CHUNK = 1 << 20

REPLY_BYTES = 16 * 1024 * 1024
"""The most of a control reply read (a page of 100 batches is ~100 KB); a longer one is a bad reply."""

ERROR_BYTES = 64 * 1024
"""The most of an error reply read: enough for any error object."""

_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.:-]{0,199}$")


@dataclass(frozen=True, slots=True)
class Retry:
    """How control calls are retried: at most `attempts` tries within `total_s`, with full-jitter backoff
    from `base_s` up to `max_s` (a `retry-after` wins). Tests pass tiny waits."""

    attempts: int = 6
    total_s: float = 300.0
    base_s: float = 1.0
    max_s: float = 30.0

    def wait(self) -> BackoffWait:
        """The wait between tries."""
        return BackoffWait(self.base_s, self.max_s)


DEFAULT_RETRY = Retry()
"""Six tries within five minutes, waits from 1 s to 30 s."""


def scrub(text: str, secret: str | None) -> str:
    """`text` from a server, bounded, without the API key (`secret`) or any other secret the run hides
    (`batchrun.redact`: credentials in `base_url`, auth headers)."""
    if secret:
        text = text.replace(secret, MASK)
    return redact(text)[:MESSAGE_CHARS]  # redacted whole before it is cut: no half a secret left


def scrubbed(exc: ProviderError, secret: str | None) -> ProviderError:
    """`exc` with its message bounded and without the API key."""
    exc.message = scrub(exc.message, secret)
    exc.args = (exc.message,)
    return exc


def checked_id(value: Any, what: str) -> str:
    """An id from a server, safe to put into a URL path; a `bad_response` error (the run stops) when not."""
    if isinstance(value, str) and _ID.match(value) and ".." not in value:
        return value
    shown = repr(value)[:80]
    raise ProviderError(
        f"the server gave a {what} that batchrun will not use in a URL: {shown}",
        error_type="bad_response",
        error_class=ErrorClass.FATAL,
    )


def bad_reply(message: str) -> ProviderError:
    """A 2xx control reply batchrun cannot read: retried, then given up."""
    error_class, error_type = classify(None, "bad_response")
    return ProviderError(message, error_type=error_type, error_class=error_class, status=200)


class Control:
    """One endpoint's control calls, on the httpx client the engine built (one per run)."""

    def __init__(
        self, client: httpx.AsyncClient, provider: Provider, secret: str | None, retry: Retry
    ) -> None:
        """`secret` (the API key) is scrubbed from every message; `retry` bounds every call."""
        self.client = client
        self.provider = provider
        self.secret = secret
        self.retry = retry
        # The provider's headers carry the key and the API version; the content type is set per call.
        self.headers = httpx.Headers(provider.headers())
        self.headers.pop("content-type", None)

    def retrying(self) -> AsyncRetrying:
        """A fresh retry controller: retryable `ProviderError`s only, bounded by tries and time."""
        retry = self.retry
        return AsyncRetrying(
            retry=retry_if_exception(lambda exc: isinstance(exc, ProviderError) and exc.retryable),
            stop=stop_after_attempt(retry.attempts) | stop_after_delay(retry.total_s),
            wait=retry.wait(),
            sleep=anyio.sleep,
            reraise=True,
        )

    async def call(
        self,
        method: str,
        url: str,
        *,
        body: Any = None,
        params: Mapping[str, str | int] | None = None,
        upload: tuple[Path, Mapping[str, str]] | None = None,
        json_file: Path | None = None,
        retried: bool = True,
    ) -> dict[str, Any]:
        """Send one control request and return its JSON object; retried unless `retried` is False.

        The body is `body` as JSON, or `upload` (a file and form fields, multipart), or `json_file` (a JSON
        body sent from disk); files are read afresh on each try, never held in memory whole.
        """
        if not retried:
            return await self._once(method, url, body, params, upload, json_file)
        async for attempt in self.retrying():
            with attempt:
                return await self._once(method, url, body, params, upload, json_file)
        raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover

    async def _once(
        self,
        method: str,
        url: str,
        body: Any,
        params: Mapping[str, str | int] | None,
        upload: tuple[Path, Mapping[str, str]] | None,
        json_file: Path | None,
    ) -> dict[str, Any]:
        headers = self.headers.copy()
        kwargs: dict[str, Any] = {}
        if body is not None:
            kwargs["content"] = orjson.dumps(body)
            headers["content-type"] = "application/json"
        elif json_file is not None:
            kwargs["content"] = file_chunks(json_file)
            headers["content-type"] = "application/json"
            headers["content-length"] = str((await anyio.Path(json_file).stat()).st_size)
        try:
            with contextlib.ExitStack() as files:
                if upload is not None:
                    path, fields = upload
                    handle = files.enter_context(path.open("rb"))
                    kwargs["files"] = {"file": (path.name, handle, "application/jsonl")}
                    kwargs["data"] = dict(fields)
                request = self.client.build_request(method, url, params=params, headers=headers, **kwargs)
                response = await self.client.send(request, stream=True)
                try:
                    if response.status_code // 100 != 2:
                        head = await _read(response, ERROR_BYTES)
                        raise self.failure(method, url, response.status_code, response.headers, head)
                    content = await _read(response, REPLY_BYTES + 1)
                finally:
                    await response.aclose()
        except httpx.TimeoutException as exc:
            raise self._transport_error("timeout", url, exc) from None
        except httpx.TransportError as exc:
            raise self._transport_error("connection", url, exc) from None
        if len(content) > REPLY_BYTES:
            raise bad_reply(f"{method} {_path(url)}: the reply is over {REPLY_BYTES} bytes")
        try:
            data = orjson.loads(content)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            raise bad_reply(f"{method} {_path(url)}: the reply is not a JSON object")
        return data

    def failure(
        self, method: str, url: str, status: int, headers: Mapping[str, str], body: bytes
    ) -> ProviderError:
        """A non-2xx reply as a classified error, read by the provider's own error reader."""
        exc = self.provider.error(status, headers, body[:ERROR_BYTES])
        if status in (404, 405):
            # Not a model that is missing: the endpoint has no such resource, or no Batch API at all.
            exc.error_type, exc.error_class = "not_found", ErrorClass.FATAL
            exc.message = (
                f"{method} {_path(url)}: HTTP {status}: {exc.message} (does this server offer the Batch API?)"
            )
        return scrubbed(exc, self.secret)

    def _transport_error(self, code: str, url: str, exc: Exception) -> ProviderError:
        error_class, error_type = classify(None, code)
        message = scrub(f"{_path(url)}: {type(exc).__name__}: {exc}", self.secret)
        return ProviderError(message, error_type=error_type, error_class=error_class)

    async def download(self, url: str, dest: Path, max_bytes: int) -> Path:
        """Stream `url` into `dest` (written whole or not at all), retried like a call."""
        async for attempt in self.retrying():
            with attempt:
                return await self._download_once(url, dest, max_bytes)
        raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover

    async def _download_once(self, url: str, dest: Path, max_bytes: int) -> Path:
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        try:
            # What the official SDKs ask for a file's content; some servers refuse `application/json` here.
            headers = self.headers.copy()
            headers["accept"] = "application/binary"
            async with self.client.stream("GET", url, headers=headers) as response:
                if response.status_code // 100 != 2:
                    head = await _read(response, ERROR_BYTES)
                    raise self.failure("GET", url, response.status_code, response.headers, head)
                size = 0
                with tmp.open("wb") as out:
                    async for chunk in response.aiter_bytes(CHUNK):
                        size += len(chunk)
                        if size > max_bytes:
                            # Not retried: the same file would be as big again.
                            raise ProviderError(
                                f"GET {_path(url)}: the file is over {max_bytes} bytes",
                                error_type="bad_response",
                                error_class=ErrorClass.FATAL,
                            )
                        out.write(chunk)
            tmp.replace(dest)
        except httpx.TimeoutException as exc:
            raise self._transport_error("timeout", url, exc) from None
        except httpx.TransportError as exc:
            raise self._transport_error("connection", url, exc) from None
        finally:
            tmp.unlink(missing_ok=True)
        return dest


async def _read(response: httpx.Response, limit: int) -> bytes:
    """At most `limit` bytes of a streamed reply's body (decoded); the rest is never read."""
    data = bytearray()
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) >= limit:
            break
    return bytes(data[:limit])


def _path(url: str) -> str:
    """The URL's path, for messages (the host is the job's own; query strings never carry secrets here)."""
    return httpx.URL(url).path


async def file_chunks(path: Path) -> AsyncIterator[bytes]:
    """A file's bytes in chunks, for a request body sent straight from disk."""
    async with await anyio.open_file(path, "rb") as source:
        while chunk := await source.read(CHUNK):
            yield chunk
