"""The HTTP transport, built in one place, and one attempt of one request over it.

batchrun speaks httpx's API (`httpx.Request`, `httpx.Response`, `httpx.AsyncBaseTransport`), so tests swap
the network for `httpx.MockTransport`. Underneath runs aiohttp's connection pool (`httpx-aiohttp`): plain
httpx's pool collapses at the hundreds of requests in flight this tool exists for. Requests go straight to
the transport rather than through `httpx.AsyncClient`, whose per-request work (URL merging, cookies,
redirects, auth flows) batchrun does not need and which cost half the CPU of a request when measured.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import anyio
import httpx
from httpx_sse import EventSource

from batchrun.errors import ProviderError
from batchrun.providers.base import Provider
from batchrun.providers.headers import RateInfo, parse_rate_info
from batchrun.records import Reply, Request
from batchrun.retry import classify

STREAM_DRAIN_S = 1.0  # how long to read on after a stream's end event


@dataclass(frozen=True, slots=True)
class Answer:
    """A successful attempt: the parsed reply, how long it took, and what the headers said of rate limits."""

    reply: Reply
    latency_s: float
    rate: RateInfo


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds allowed to connect, and for a whole attempt (connect, send, wait, read)."""

    connect_s: float
    total_s: float


def make_transport(max_connections: int) -> httpx.AsyncBaseTransport:
    """aiohttp's connection pool behind httpx's transport interface, sized for `max_connections`."""
    import aiohttp
    from httpx_aiohttp import AiohttpTransport

    def session() -> aiohttp.ClientSession:
        # Made lazily inside the running event loop, as aiohttp requires. trust_env costs a thread hop per
        # request (it halved throughput when measured), so it is on only when a proxy is configured.
        connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=0, ttl_dns_cache=300)
        return aiohttp.ClientSession(connector=connector, trust_env=_proxy_configured())

    return AiohttpTransport(client=session)


class Sender:
    """Sends one attempt of a request to one provider endpoint; everything per-endpoint is built once."""

    def __init__(self, transport: httpx.AsyncBaseTransport, provider: Provider, timeouts: Timeouts) -> None:
        self.transport = transport
        self.provider = provider
        self.timeouts = timeouts
        self._url = httpx.URL(provider.url())
        self._headers = httpx.Headers(provider.headers())
        total = timeouts.total_s
        self._extensions = {
            "timeout": {"connect": timeouts.connect_s, "read": total, "write": total, "pool": total}
        }

    async def attempt(self, request: Request) -> Answer:
        """Send once; return the answer, or raise a classified `ProviderError`.

        Every failure below HTTP (refused or dropped connection, timeout, a body cut short) becomes a
        retryable `ProviderError`, so the retry policy sees one type.
        """
        import aiohttp

        http_request = httpx.Request(
            "POST",
            self._url,
            headers=self._headers,
            content=self.provider.content(request),
            extensions=self._extensions,
        )
        streaming = self.provider.streams(request)
        reply: Reply | None = None
        started = time.perf_counter()
        try:
            with anyio.fail_after(self.timeouts.total_s):
                response = await self.transport.handle_async_request(http_request)
                try:
                    if streaming and response.status_code == 200 and _is_event_stream(response):
                        reply = await self._read_stream(response)
                    else:
                        # An error, or a server that answered a stream request with one JSON reply.
                        body = await response.aread()
                finally:
                    await response.aclose()
        except (TimeoutError, httpx.TimeoutException):
            raise _transient("timeout", f"no complete reply within {self.timeouts.total_s:g} s") from None
        except (httpx.TransportError, aiohttp.ClientError, OSError) as exc:
            raise _transient("connection", f"{type(exc).__name__}: {exc}") from None
        latency = time.perf_counter() - started
        if reply is None:
            if response.status_code != 200:
                raise self.provider.error(response.status_code, response.headers, body)
            reply = self.provider.parse(body)
        return Answer(reply, latency, parse_rate_info(response.headers))

    async def _read_stream(self, response: httpx.Response) -> Reply:
        """Fold the server-sent events into a reply as they arrive; stop at the stream's end event."""
        parser = self.provider.stream_parser()
        events = EventSource(response).aiter_sse()
        try:
            async for event in events:
                if parser.feed(event.event, event.data):
                    break
            # Read on to the body's end (normally at once) so the connection goes back to the pool; a
            # server that keeps talking after the end event gets a second, then the connection closes.
            with anyio.move_on_after(STREAM_DRAIN_S):
                async for _ in events:
                    pass
        finally:
            await events.aclose()
        return parser.reply()  # raises a retryable error when the stream broke before its end


def _is_event_stream(response: httpx.Response) -> bool:
    return "text/event-stream" in response.headers.get("content-type", "")


def _proxy_configured() -> bool:
    return any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"))


def _transient(code: str, message: str) -> ProviderError:
    error_class, error_type = classify(None, code)
    return ProviderError(message, error_type=error_type, error_class=error_class, code=code)
