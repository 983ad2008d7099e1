"""aiohttp under httpx's transport interface: event streams, and every request behind a proxy.

Ours rather than the `httpx-aiohttp` package's: that one streams every body through httpx's byte-stream
machinery, which cost a tenth of a row's CPU. Bodies are passed through raw, as they arrive (the reader
decodes and caps them: `batchrun.net.bodies`); `post` reads one whole, capped, for the proxy path. aiohttp's
failures leave it as httpx's, as the transport interface asks.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from batchrun.limits.retry import cut_short
from batchrun.net import bodies
from batchrun.redact import excerpt

if TYPE_CHECKING:
    import aiohttp


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds allowed to connect, and for a whole attempt (connect, send, wait, read)."""

    connect_s: float
    total_s: float


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport over one `aiohttp.ClientSession`, made lazily inside the running event loop."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[Timeouts, aiohttp.ClientTimeout] = {}

    def _open(self) -> aiohttp.ClientSession:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0, ttl_dns_cache=300)
        # trust_env costs a thread hop per request (it halved throughput when measured), so it is on only
        # when a proxy is configured.
        # No Accept-Encoding: aiohttp would ask for gzip on its own, and `post` hands the body over
        # undecoded (chat replies are small; compressing them saves nothing worth a decode per row).
        self._session = aiohttp.ClientSession(
            connector=connector,
            trust_env=proxy_configured(),
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding",),
        )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request`; return the reply with its body unread, raw (the reader decodes and caps it)."""
        import aiohttp

        session = self._session or self._open()
        timeout = request.extensions.get("timeout", {})
        with as_httpx_errors():
            response = await session.request(
                request.method,
                str(request.url),
                headers=request.headers,
                data=request.content or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    sock_connect=timeout.get("connect"), sock_read=timeout.get("read")
                ),
            )
        return httpx.Response(
            response.status, headers=response.raw_headers, stream=_AiohttpStream(response), request=request
        )

    async def post(
        self, url: str, headers: Mapping[str, str], content: bytes, timeouts: Timeouts, max_body: int
    ) -> tuple[int, Mapping[str, str], bytes]:
        """POST `content` and read the reply whole: status, headers, body (decoded, at most `max_body`).

        The path every non-streaming request takes. It skips building httpx's request and response
        objects (a tenth of a row's CPU when measured), and aiohttp's own total timeout replaces a cancel
        scope per request.
        """
        import aiohttp

        session = self._session or self._open()
        timeout = self._timeouts.get(timeouts)
        if timeout is None:
            timeout = self._timeouts[timeouts] = aiohttp.ClientTimeout(
                total=timeouts.total_s, sock_connect=timeouts.connect_s
            )
        with as_httpx_errors():
            async with session.post(url, data=content, headers=headers, timeout=timeout) as response:
                status = response.status
                raw: list[bytes] = []
                size = 0
                try:
                    async for chunk in response.content.iter_any():
                        size += len(chunk)
                        if size > max_body:
                            raise bodies.too_large(max_body, status)
                        raw.append(chunk)
                except aiohttp.ClientPayloadError as exc:
                    raise cut_short(f"the reply's body broke off: {excerpt(str(exc))}", status) from None
        return status, response.headers, bodies.decode(b"".join(raw), response.headers, max_body, status)

    async def aclose(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None


class _AiohttpStream(httpx.AsyncByteStream):
    """An aiohttp reply body as httpx's async byte stream, chunk by chunk as it arrives."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """The body's chunks."""
        with as_httpx_errors():
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        """Give the connection back (or drop it, if the body was not read to the end)."""
        self._response.release()


@contextlib.contextmanager
def as_httpx_errors() -> Iterator[None]:
    """aiohttp's failures below HTTP as httpx's `TransportError` (timeouts stay `TimeoutError`)."""
    import aiohttp

    try:
        yield
    except TimeoutError:
        raise
    except aiohttp.ClientError as exc:
        raise httpx.TransportError(f"{type(exc).__name__}: {exc}") from exc


def proxy_configured() -> bool:
    """True when an HTTP(S) proxy is set in the environment (the lean client speaks no proxy protocol)."""
    return any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"))
