"""A lean HTTP/1.1 client for the request batchrun sends most: a POST whose reply is read whole.

Why not aiohttp for this: measured on 2 cores, aiohttp's request path cost 0.20 ms of CPU per request at 64
connections and 0.34 ms at 1,024, which alone caps one process below the 5,120 requests a second that 1,024
requests in flight at 0.2 s latency ask for. This client does the least HTTP/1.1 a JSON API needs, for
about a third of that: keep-alive connections pooled per host, a request with a Content-Length body, a
reply framed by Content-Length, chunked encoding or the connection's close. llhttp (through httptools, the
parser uvicorn uses) parses; the standard library does TLS, with the same default context aiohttp uses.
Event streams and proxies still go through aiohttp (see `batchrun.net.transport`).

It runs on asyncio (anyio's default backend). Failures before a reply's head arrives are `TimeoutError`
and `OSError` subclasses (`ssl.SSLError` among them), which the caller classifies. Once the head has
arrived, a body broken off by the connection's close is a `truncated` `ProviderError`, and one the client
cannot use (past the size cap, or in a coding it cannot decode) a `bad_response`, both with the status.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

from batchrun.limits.retry import cut_short
from batchrun.net import bodies

KEEPALIVE_S = 4.0  # an idle connection older than this is not reused: uvicorn (vLLM) closes them at 5 s
DNS_TTL_S = 300.0  # how long a host's addresses are reused (aiohttp's default cache time, which we had)
MAX_HEAD_BYTES = 1 * bodies.MIB  # a reply's headers past this are not an API's
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Route:
    """Where requests go and the head every one of them shares, encoded once."""

    url: str
    headers: Mapping[str, str]
    key: tuple[str, str, int]  # scheme, host, port: the connections it may reuse
    head: bytes  # request line and headers, up to the Content-Length


def route(url: str, headers: Mapping[str, str]) -> Route:
    """The `Route` for POSTs to `url` with `headers` (Host and Content-Length are added here)."""
    parts = urlsplit(url)
    scheme, host = parts.scheme, parts.hostname
    if scheme not in _DEFAULT_PORTS or not host:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port or _DEFAULT_PORTS[scheme]
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = parts.netloc.rpartition("@")[2]
    lines = [f"POST {target} HTTP/1.1", f"Host: {host_header}"]
    skip = {"host", "content-length", "connection", "transfer-encoding"}
    for name, value in headers.items():
        if any(c in f"{name}{value}" for c in "\r\n\0"):
            raise ValueError(f"header {name!r} holds a line break or NUL, which would end the header early")
        if name.lower() not in skip:
            lines.append(f"{name}: {value}")
    head = ("\r\n".join(lines) + "\r\n").encode()  # UTF-8, as aiohttp sends a value past latin-1
    return Route(url, headers, (scheme, host, port), head)


class Pool:
    """Keep-alive connections shared by every request to any number of hosts.

    The pool does not bound how many requests are in flight (the runner's workers do); it opens a
    connection whenever no idle one is free, so it holds at most as many as were ever in flight at once.
    Host names are resolved once per `DNS_TTL_S` and shared: a thousand connections opened at the start
    of a run must not mean a thousand lookups.
    """

    def __init__(self, keepalive_s: float = KEEPALIVE_S) -> None:
        self.keepalive_s = keepalive_s
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._addresses: dict[tuple[str, int], tuple[float, asyncio.Future[list[Address]]]] = {}
        self._ssl: ssl.SSLContext | None = None

    async def post(
        self,
        route: Route,
        content: bytes,
        *,
        connect_s: float,
        total_s: float,
        max_body: int = bodies.DEFAULT_MAX_REPLY_BYTES,
    ) -> tuple[int, dict[str, str], bytes]:
        """POST `content`; return the reply's status, headers (names in lower case) and decoded body.

        Raises `TimeoutError` when the whole exchange (connecting included) takes over `total_s`, an
        `OSError` when the connection fails or the reply is not HTTP, and a `ProviderError` when the body
        breaks off or passes `max_body` bytes (raw or decoded).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + total_s
        connection = self._reusable(route.key, loop.time())
        if connection is None:
            connect_by = loop.time() + connect_s
            try:
                async with asyncio.timeout_at(min(deadline, connect_by)):
                    connection = await self._connect(route.key)
            except TimeoutError:
                if connect_by > deadline:
                    raise  # the whole exchange's time ran out
                # No connection at all: the caller tells this from a reply that is slow to come.
                raise ConnectionError(f"no connection within {connect_s:g} s") from None
        reply = connection.send(route.head, content, max_body)
        timer = loop.call_at(deadline, connection.expire)
        try:
            status, headers, body = await reply
        except BaseException:
            connection.close()  # cut short (timeout, cancellation): the rest of the reply is unwanted
            raise
        finally:
            timer.cancel()
        if connection.open:
            connection.idle_since = loop.time()
            self._idle.setdefault(route.key, []).append(connection)
        else:
            connection.close()
        return status, headers, bodies.decode(body, headers, max_body, status)

    def _reusable(self, key: tuple[str, str, int], now: float) -> _Connection | None:
        """The most recently used idle connection to `key` that is still open and fresh."""
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            if connection.open and now - connection.idle_since < self.keepalive_s:
                return connection
            connection.close()
        return None

    async def _connect(self, key: tuple[str, str, int]) -> _Connection:
        """A new connection to the first of the host's addresses that accepts one."""
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        tls = self._tls() if scheme == "https" else None
        error: OSError | None = None
        for family, address in await self._resolve(host, port):
            try:
                _, connection = await loop.create_connection(
                    _Connection, *address, family=family, ssl=tls, server_hostname=host if tls else None
                )
                return connection
            except OSError as exc:
                error = exc
        raise error or OSError(f"{host} has no address")

    async def _resolve(self, host: str, port: int) -> list[Address]:
        """The host's addresses, looked up once per `DNS_TTL_S` however many connections ask at once."""
        literal = _ip_literal(host, port)
        if literal is not None:
            # No lookup of ours (a thread's round trip, tens of ms while a thousand connections open at
            # once); the address goes to the loop as written, so an IPv6 scope id (`fe80::1%eth0`) is kept.
            return [literal]
        loop = asyncio.get_running_loop()
        cached = self._addresses.get((host, port))
        if cached is None or loop.time() - cached[0] > DNS_TTL_S or _failed(cached[1]):
            lookup = loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            cached = (loop.time(), asyncio.ensure_future(_addresses(lookup)))
            self._addresses[(host, port)] = cached
        return await asyncio.shield(cached[1])

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
            self._ssl.set_alpn_protocols(["http/1.1"])
        return self._ssl

    def close(self) -> None:
        """Close every idle connection (requests still in flight close theirs when they end)."""
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()


Address = tuple[int, tuple[str, int]]  # socket family, (ip, port)


async def _addresses(lookup: Any) -> list[Address]:
    """IPv4 first: a connection tries one address at a time, and broken IPv6 routes are the common kind."""
    found = [(family, (address[0], address[1])) for family, _, _, _, address in await lookup]
    return sorted(found, key=lambda item: item[0] != socket.AF_INET)


def _ip_literal(host: str, port: int) -> Address | None:
    """The address when `host` is an IP address as written, not a name."""
    if not (host[:1].isdigit() or ":" in host):
        return None  # a name (the usual case), told apart without an exception
    try:
        version = ipaddress.ip_address(host).version
    except ValueError:
        return None
    return (socket.AF_INET if version == 4 else socket.AF_INET6), (host, port)


def _failed(future: asyncio.Future[Any]) -> bool:
    return future.done() and (future.cancelled() or future.exception() is not None)


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one request at a time, its reply parsed as bytes arrive."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self.reusable = False  # open, and its last reply ended cleanly with keep-alive
        self._parser = httptools.HttpResponseParser(self)
        self._reply: asyncio.Future[tuple[int, dict[str, str], bytes]] | None = None
        self._status = 0
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._headers_done = False
        self._framed = False  # the reply says where it ends (Content-Length or chunked)
        self._max_body = bodies.DEFAULT_MAX_REPLY_BYTES
        self._size = 0  # bytes of the head, then of the body, so far

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport to write requests on."""
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self._loop = asyncio.get_running_loop()

    def send(
        self, head: bytes, content: bytes, max_body: int
    ) -> asyncio.Future[tuple[int, dict[str, str], bytes]]:
        """Write one request; the future resolves to its reply, whose body may hold up to `max_body` bytes."""
        if self.transport is None:  # closed by the server between connecting and this request
            raise ConnectionResetError("the connection closed before the request was sent")
        self.reusable = False
        self._max_body = max_body
        self._reply = self._loop.create_future()
        self.transport.write(b"%sContent-Length: %d\r\n\r\n%s" % (head, len(content), content))
        return self._reply

    @property
    def open(self) -> bool:
        """Whether a request may go out on this connection: its last reply ended with keep-alive, and
        the server has not begun to close it (a FIN already read, its `connection_lost` still queued)."""
        return self.reusable and self.transport is not None and not self.transport.is_closing()

    def data_received(self, data: bytes) -> None:
        """Feed the parser; a reply nobody asked for, or one that is not HTTP, ends the connection."""
        if self._reply is None:
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(ConnectionError(f"the server's reply is not valid HTTP/1.1: {exc}"))
            self.close()

    def eof_received(self) -> bool:
        """The server closed its side: no request goes out on this connection again."""
        self.reusable = False
        return False  # let the transport close; `connection_lost` settles a reply in progress

    def connection_lost(self, exc: Exception | None) -> None:
        """A reply that runs to the connection's close ends here; any other reply in progress failed."""
        self.reusable = False
        self.transport = None
        if self._reply is None or self._reply.done():
            return
        if exc is None and self._headers_done and not self._framed:
            self._finish()
        elif self._headers_done:
            message = f"the connection closed before the reply's body ended ({exc or 'EOF'})"
            self._fail(cut_short(message, self._status))
        else:
            self._fail(ConnectionResetError(f"the connection closed before the reply ended ({exc or 'EOF'})"))

    def expire(self) -> None:
        """The request's deadline passed."""
        self._fail(TimeoutError())

    def close(self) -> None:
        """Close the connection now."""
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()

    # httptools' callbacks

    def on_message_begin(self) -> None:
        """A reply begins; bytes nobody asked for (after the reply that was) make the connection unusable."""
        if self._reply is None:
            self.reusable = False

    def on_header(self, name: bytes, value: bytes) -> None:
        """Collect a header; a repeated one is joined with commas, as HTTP allows."""
        self._size += len(name) + len(value)
        if self._size > MAX_HEAD_BYTES:
            self._refuse(
                ConnectionError(f"the reply's headers pass {MAX_HEAD_BYTES:,} bytes: not HTTP we read")
            )
            return
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self._headers[key] = f"{self._headers[key]}, {text}" if key in self._headers else text

    def on_headers_complete(self) -> None:
        """Note the status and how the body is framed."""
        self._status = self._parser.get_status_code()
        self._headers_done = True
        self._framed = "content-length" in self._headers or "transfer-encoding" in self._headers
        self._size = 0
        length = self._headers.get("content-length", "")
        if length.isdigit() and int(length) > self._max_body:
            self._too_large()

    def on_body(self, chunk: bytes) -> None:
        """Collect a piece of the body (de-chunked by the parser), up to the cap."""
        if self._reply is None:
            return  # refused already: the rest of this read is dropped with the connection
        self._size += len(chunk)
        if self._size > self._max_body:
            self._too_large()
            return
        self._body.append(chunk)

    def on_message_complete(self) -> None:
        """A whole reply; an informational one (1xx, e.g. 103 Early Hints) is skipped."""
        if self._status < 200:
            self._reset()
            return
        self._finish(keep_alive=self._parser.should_keep_alive())

    def _finish(self, *, keep_alive: bool = False) -> None:
        reply = (self._status, self._headers, b"".join(self._body))
        self._reset()
        waiting, self._reply = self._reply, None
        # A reply nobody waits for (unasked for, or its request timed out) leaves the connection unusable.
        self.reusable = keep_alive and self.transport is not None and waiting is not None
        if waiting is not None and not waiting.done():
            waiting.set_result(reply)

    def _too_large(self) -> None:
        """A body past the cap: no JSON completion needs it, and reading on would only fill memory."""
        self._refuse(bodies.too_large(self._max_body, self._status))

    def _refuse(self, exc: BaseException) -> None:
        self._fail(exc)
        self.close()

    def _fail(self, exc: BaseException) -> None:
        self._reset()
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(exc)
        self._reply = None

    def _reset(self) -> None:
        self._status = self._size = 0
        self._headers = {}
        self._body = []
        self._headers_done = self._framed = False
