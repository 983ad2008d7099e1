"""The HTTP transport, built in one place, and one attempt of one request over it.

batchrun speaks httpx's API (`httpx.Request`, `httpx.Response`, `httpx.AsyncBaseTransport`), so tests swap
the network for `httpx.MockTransport`. Underneath, `Transport` sends the request a run sends most, a POST
whose reply is read whole, through `batchrun.net.http1`'s lean HTTP/1.1 pool (a third of aiohttp's CPU per
request, measured), and everything else (event streams; every request when a proxy is configured) through
aiohttp's connection pool: plain httpx's pool collapses at the hundreds of requests in flight this tool
exists for. Requests go straight to the transport rather than through `httpx.AsyncClient`, whose
per-request work (URL merging, cookies, redirects, auth flows) batchrun does not need and which cost half
the CPU of a request when measured.

`batchrun.net.aiohttp_transport` holds the aiohttp side.

Whatever the path, a body is decoded and capped by `batchrun.net.bodies`, and `Sender.attempt` turns
every failure into a classified `ProviderError` (see `batchrun.limits.retry` for what each class means),
with the run's secrets redacted from it and from the reply (see `batchrun.redact`).
"""

from __future__ import annotations

import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import anyio
import httpx
from httpx_sse import EventSource

from batchrun.errors import ErrorClass, ProviderError
from batchrun.limits.retry import bad_response, classify, cut_short
from batchrun.net import bodies, http1
from batchrun.net.aiohttp_transport import AiohttpTransport, Timeouts, proxy_configured
from batchrun.providers.base import Provider
from batchrun.providers.headers import RateInfo, parse_rate_info
from batchrun.records import Reply, Request
from batchrun.redact import excerpt, redact, redact_reply, safe_url

__all__ = ["Answer", "Sender", "Timeouts", "Transport", "make_transport"]

STREAM_DRAIN_S = 1.0  # how long to read on after a stream's end event


@dataclass(frozen=True, slots=True)
class Answer:
    """A successful attempt: the parsed reply, how long it took, and what the headers said of rate limits."""

    reply: Reply
    latency_s: float
    rate: RateInfo


def make_transport(max_connections: int) -> httpx.AsyncBaseTransport:
    """The network for a run with up to `max_connections` requests in flight."""
    return Transport(max_connections)


# TLS failures a retry cannot fix (an untrusted certificate, TLS spoken to a plain-HTTP port); the others
# (an EOF in the middle of the handshake) are a dropped connection.
_TRANSIENT_TLS = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


class Transport(httpx.AsyncBaseTransport):
    """Replies read whole through the lean HTTP/1.1 pool; event streams through aiohttp.

    With a proxy configured (`HTTPS_PROXY` and friends), which the lean pool does not speak, every request
    goes through aiohttp.
    """

    def __init__(self, max_connections: int) -> None:
        self._aiohttp = AiohttpTransport(max_connections)
        self._pool = None if proxy_configured() else http1.Pool()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` through aiohttp (the event-stream path)."""
        return await self._aiohttp.handle_async_request(request)

    async def post(
        self, route: http1.Route, content: bytes, timeouts: Timeouts, max_body: int
    ) -> tuple[int, Mapping[str, str], bytes]:
        """POST `content` along `route` and read the reply whole (decoded, at most `max_body` bytes)."""
        if self._pool is None:
            return await self._aiohttp.post(route.url, route.headers, content, timeouts, max_body)
        return await self._pool.post(
            route, content, connect_s=timeouts.connect_s, total_s=timeouts.total_s, max_body=max_body
        )

    async def aclose(self) -> None:
        """Close both pools' connections."""
        if self._pool is not None:
            self._pool.close()
        await self._aiohttp.aclose()


class Sender:
    """Sends one attempt of a request to one provider endpoint; everything per-endpoint is built once."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        provider: Provider,
        timeouts: Timeouts,
        max_reply_bytes: int = bodies.DEFAULT_MAX_REPLY_BYTES,
    ) -> None:
        self.transport = transport
        self.provider = provider
        self.timeouts = timeouts
        self.max_reply_bytes = max_reply_bytes
        url, headers = provider.url(), provider.headers()
        self.shown_url = safe_url(url)  # the URL as messages name it: no credentials
        self._route = http1.route(url, headers) if isinstance(transport, Transport) else None
        self._url = httpx.URL(url)
        self._headers = httpx.Headers(headers)
        # Asking for an event stream is also what makes `AiohttpTransport` pass the body through unread.
        self._stream_headers = httpx.Headers({**headers, "accept": "text/event-stream"})
        total = timeouts.total_s
        self._extensions = {
            "timeout": {"connect": timeouts.connect_s, "read": total, "write": total, "pool": total}
        }

    async def attempt(self, request: Request) -> Answer:
        """Send once; return the answer, or raise a classified `ProviderError`.

        Every failure becomes a `ProviderError` (see `batchrun.limits.retry` for the classes), its message
        redacted of the run's secrets, as is every string of the answer.
        """
        content = self.provider.content(request)
        streaming = self.provider.streams(request)
        started = time.perf_counter()
        try:
            if streaming or self._route is None:
                status, headers, body, reply = await self._send_via_httpx(content, streaming)
            else:
                assert isinstance(self.transport, Transport)
                status, headers, body = await self.transport.post(
                    self._route, content, self.timeouts, self.max_reply_bytes
                )
                reply = None
            if reply is None:
                if not 200 <= status < 300:
                    raise self._error(status, headers, body)
                reply = self._parse(headers, body)
        except ProviderError as exc:
            exc.message = redact(exc.message)
            exc.args = (exc.message,)
            raise
        except (TimeoutError, httpx.TimeoutException):
            raise _transient("timeout", f"no complete reply within {self.timeouts.total_s:g} s") from None
        except (httpx.TransportError, OSError) as exc:
            raise self._no_reply(exc) from None
        latency = time.perf_counter() - started
        return Answer(redact_reply(reply), latency, parse_rate_info(headers))

    def _parse(self, headers: Mapping[str, str], body: bytes) -> Reply:
        """A 2xx reply; an HTML page is told apart (see `batchrun.net.endpoint.Contact`)."""
        try:
            return self.provider.parse(body)
        except ProviderError as exc:
            if exc.error_type != "bad_response" or not _is_html(headers, body):
                raise
            html = bad_response(f"the reply is an HTML page, not JSON: {excerpt(body)}", exc.status)
            html.code = "html"
            raise html from None

    def _error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        """A reply that is not 2xx, classified; a redirect or a 404 on the path is the endpoint's fault."""
        if 300 <= status < 400:
            target = excerpt(safe_url(headers.get("location", "")), 120) or "no Location"
            message = f"{self.shown_url} answers HTTP {status}, a redirect to {target}"
            return ProviderError(message, error_type="redirect", error_class=ErrorClass.FATAL, status=status)
        exc = self.provider.error(status, headers, body)
        if status == 404 and exc.code is None:
            # No provider code: nothing answers at this path (an unknown model comes with a code).
            message = f"nothing answers at {self.shown_url} (HTTP 404: {exc.message})"
            return ProviderError(message, error_type="not_found", error_class=ErrorClass.FATAL, status=404)
        return exc

    def _no_reply(self, exc: BaseException) -> ProviderError:
        """A failure below HTTP: a TLS one no retry can fix stops the run; any other is retried."""
        tls = _tls_failure(exc)
        if tls is not None:
            reason = excerpt(getattr(tls, "verify_message", None) or getattr(tls, "reason", None) or str(tls))
            message = f"TLS with {self.shown_url} failed: {reason}"
            return ProviderError(message, error_type="tls", error_class=ErrorClass.FATAL, code="tls")
        return _transient("connection", f"{type(exc).__name__}: {excerpt(str(exc))}")

    async def _send_via_httpx(
        self, content: bytes, streaming: bool
    ) -> tuple[int, Mapping[str, str], bytes, Reply | None]:
        """The exchange through httpx's interface: event streams, and any other transport (tests' mocks).

        Returns the status, headers and body, and the reply when it came as an event stream (the body is
        then empty).
        """
        headers = self._stream_headers if streaming else self._headers
        http_request = httpx.Request(
            "POST", self._url, headers=headers, content=content, extensions=self._extensions
        )
        body = b""
        reply: Reply | None = None
        with anyio.fail_after(self.timeouts.total_s):
            response = await self.transport.handle_async_request(http_request)
            status = response.status_code
            try:
                chunks = self._decoded(response)
                if streaming and status == 200 and _is_event_stream(response):
                    reply = await self._read_stream(chunks)
                else:
                    # An error, a reply read whole, or a server that answered a stream request with JSON.
                    body = b"".join([chunk async for chunk in chunks])
                    if streaming and status == 200 and _looks_like_events(body):
                        # Some servers send an event stream as `application/json`.
                        reply = await self._read_stream(_once(body))
            except httpx.TimeoutException:
                raise
            except (httpx.TransportError, OSError) as exc:
                raise cut_short(f"the reply's body broke off: {excerpt(str(exc))}", status) from None
            finally:
                await response.aclose()
        return status, response.headers, body, reply

    def _decoded(self, response: httpx.Response) -> AsyncIterator[bytes]:
        """The body's decoded pieces as they arrive, up to the cap."""
        cap, status = self.max_reply_bytes, response.status_code
        if response.is_stream_consumed:  # built from bytes (a test's mock): httpx has decoded it
            return bodies.decoded(_once(response.content), {}, cap, status)
        return bodies.decoded(response.aiter_raw(), response.headers, cap, status)

    async def _read_stream(self, chunks: AsyncIterator[bytes]) -> Reply:
        """Fold the server-sent events into a reply as they arrive; stop at the stream's end event."""
        parser = self.provider.stream_parser()
        view = httpx.Response(200, headers={"content-type": EVENT_STREAM}, stream=_Chunks(chunks))
        events = EventSource(view).aiter_sse()
        try:
            async for event in events:
                if parser.feed(event.event, event.data):
                    break
            # Read on to the body's end (normally at once) so the connection goes back to the pool; a
            # server that keeps talking after the end event gets a second, then the connection closes.
            # The answer is complete and paid for: a connection dropped now must not cost a retry.
            with (
                anyio.move_on_after(STREAM_DRAIN_S),
                contextlib.suppress(httpx.TransportError, OSError, ProviderError),
            ):
                async for _ in events:
                    pass
        finally:
            await events.aclose()
        return parser.reply()  # raises a retryable error when the stream broke before its end


EVENT_STREAM = "text/event-stream; charset=utf-8"


class _Chunks(httpx.AsyncByteStream):
    """Decoded pieces of a body, as httpx's stream (an event stream's parser reads them as text lines)."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """The pieces."""
        async for chunk in self._chunks:
            yield chunk


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


def _is_html(headers: Mapping[str, str], body: bytes) -> bool:
    content_type = headers.get("content-type", "").lower()
    return "html" in content_type or body[:64].lstrip()[:1] == b"<"


def _looks_like_events(body: bytes) -> bool:
    return body[:256].lstrip().startswith((b"data:", b"event:"))


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS failure behind `exc` (through httpx's and aiohttp's wrappers), unless it is a dropped link."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        # aiohttp's wrappers (themselves SSLError subclasses) hold the error from the ssl module.
        nested = getattr(current, "certificate_error", None) or getattr(current, "os_error", None)
        if isinstance(nested, BaseException):
            current = nested
        elif isinstance(current, ssl.SSLError):
            return None if isinstance(current, _TRANSIENT_TLS) else current
        else:
            current = current.__cause__ or current.__context__
    return None


def _is_event_stream(response: httpx.Response) -> bool:
    return "text/event-stream" in response.headers.get("content-type", "")


def _transient(code: str, message: str) -> ProviderError:
    error_class, error_type = classify(None, code)
    return ProviderError(redact(message), error_type=error_type, error_class=error_class, code=code)
