"""The lean HTTP/1.1 client (batchrun/http1.py) against a scripted server on 127.0.0.1.

Each test's server answers every request with the next raw reply of a script, so the framing, keep-alive and
failure cases are exactly the bytes a real server could send.
"""

from __future__ import annotations

import asyncio
import gzip
import inspect
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from batchrun.errors import ProviderError
from batchrun.net import http1
from batchrun.net.transport import Timeouts, Transport

# Raw bytes to answer with, or an action on the connection (which the server closes after it).
Reply = bytes | Callable[[asyncio.StreamWriter], Awaitable[None] | None]


def reply(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    """A reply framed by Content-Length."""
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@dataclass
class Server:
    """What the scripted server saw."""

    url: str
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0


@asynccontextmanager
async def scripted(*script: Reply) -> AsyncIterator[Server]:
    """A server on 127.0.0.1 that answers the n-th request it reads with script[n]."""
    replies = iter(script)
    server = Server(url="")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections += 1
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                lines = head.lower().split(b"\r\n")
                length = next(int(line[15:]) for line in lines if line.startswith(b"content-length:"))
                server.requests.append(head + await reader.readexactly(length))
                action = next(replies)
                if callable(action):
                    done = action(writer)
                    if inspect.isawaitable(done):
                        await done
                    return
                writer.write(action)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    server.url = f"http://127.0.0.1:{port}/v1/chat/completions?x=1"
    async with listener:
        yield server


def post(
    pool: http1.Pool, url: str, body: bytes = b'{"a":1}', total_s: float = 5.0
) -> Coroutine[None, None, tuple[int, dict[str, str], bytes]]:
    """POST `body` to `url` through `pool`."""
    route = http1.route(url, {"content-type": "application/json", "Authorization": "Bearer k"})
    return pool.post(route, body, connect_s=2.0, total_s=total_s)


def run(coroutine: Coroutine[None, None, None]) -> None:
    """Run a test's body, bounded in time."""
    asyncio.run(asyncio.wait_for(coroutine, 20))


def test_route_encodes_the_request_head_once() -> None:
    """Request line with path and query, Host with the port, the given headers; framing headers are ours."""
    route = http1.route("https://api.example.com/v1/chat?beta=1", {"X-A": "b", "Content-Length": "9"})
    assert route.key == ("https", "api.example.com", 443)
    assert route.head == b"POST /v1/chat?beta=1 HTTP/1.1\r\nHost: api.example.com\r\nX-A: b\r\n"
    assert http1.route("http://127.0.0.1:8000/v1", {}).key == ("http", "127.0.0.1", 8000)
    with pytest.raises(ValueError, match="not an http"):
        http1.route("ftp://example.com/x", {})


def test_replies_come_back_whole_over_one_kept_alive_connection() -> None:
    """Three requests in turn use one connection; status, lower-case headers and body come back."""

    async def main() -> None:
        script = [reply(b'{"n":%d}' % i, "X-RateLimit-Remaining-Requests: 9") for i in range(3)]
        async with scripted(*script) as server:
            pool = http1.Pool()
            answers = [await post(pool, server.url) for _ in range(3)]
            pool.close()
        assert [a[2] for a in answers] == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
        assert answers[0][0] == 200
        assert answers[0][1]["x-ratelimit-remaining-requests"] == "9"
        assert server.connections == 1
        first = server.requests[0]
        assert first.startswith(b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: 127.0.0.1:")
        assert b"Content-Length: 7\r\n\r\n" in first
        assert first.endswith(b'{"a":1}')

    run(main())


def test_chunked_gzip_early_hints_and_close_delimited_replies_are_read() -> None:
    """Every way a reply may be framed or coded reads as the same body."""
    body = b'{"ok":true}'
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"4\r\n" + body[:4] + b"\r\n" + b"%x\r\n" % len(body[4:]) + body[4:] + b"\r\n0\r\n\r\n"
    )  # fmt: skip
    early_hints = b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + reply(body)
    gzipped = reply(gzip.compress(body), "Content-Encoding: gzip")

    def close_delimited(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body)

    async def main() -> None:
        async with scripted(chunked, early_hints, gzipped, close_delimited) as server:
            pool = http1.Pool()
            bodies = [(await post(pool, server.url))[2] for _ in range(4)]
            pool.close()
        assert bodies == [body] * 4

    run(main())


def test_connection_close_is_honoured_and_the_next_request_opens_a_new_one() -> None:
    async def main() -> None:
        async with scripted(reply(b"1", "Connection: close"), reply(b"2")) as server:
            pool = http1.Pool()
            assert (await post(pool, server.url))[2] == b"1"
            assert (await post(pool, server.url))[2] == b"2"
            pool.close()
        assert server.connections == 2

    run(main())


def test_an_idle_connection_past_keepalive_is_not_reused() -> None:
    async def main() -> None:
        async with scripted(reply(b"1"), reply(b"2")) as server:
            pool = http1.Pool(keepalive_s=0.0)
            await post(pool, server.url)
            await post(pool, server.url)
            pool.close()
        assert server.connections == 2

    run(main())


def test_failures_raise_oserror_or_timeouterror() -> None:
    """A dropped connection, a reply that is not HTTP, a refused port, a slow server: OSError or
    TimeoutError; a body cut short after its head: a retryable `truncated` with the status."""

    def drop(writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    def cut_short(writer: asyncio.StreamWriter) -> None:
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial"')

    async def main() -> None:
        async with scripted(drop, b"SSH-2.0-OpenSSH\r\n\r\n", cut_short) as server:
            pool = http1.Pool()
            with pytest.raises(ConnectionResetError):
                await post(pool, server.url)
            with pytest.raises(ConnectionError, match="not valid HTTP"):
                await post(pool, server.url)
            with pytest.raises(ProviderError, match="before the reply's body ended") as info:
                await post(pool, server.url)
            cut = info.value
            assert (cut.error_type, cut.status, cut.retryable) == ("truncated", 200, True)
            pool.close()
        with pytest.raises(ConnectionRefusedError):
            await post(http1.Pool(), server.url)  # the server is gone

        async def hang(writer: asyncio.StreamWriter) -> None:
            writer.write(b"HTTP/1.1 200 OK\r\n")  # the headers do not end in time
            await asyncio.sleep(1.0)

        async with scripted(hang) as server:
            with pytest.raises(TimeoutError):
                await post(http1.Pool(), server.url, total_s=0.2)

    run(main())


def test_a_cancelled_request_closes_its_connection() -> None:
    """A request cut short by its caller leaves no half-read connection in the pool."""

    async def late(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.5)
        writer.write(reply(b"late"))

    async def main() -> None:
        async with scripted(reply(b"first"), late, reply(b"third")) as server:
            pool = http1.Pool()
            assert (await post(pool, server.url))[2] == b"first"
            task = asyncio.ensure_future(post(pool, server.url))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert (await post(pool, server.url))[2] == b"third"
            pool.close()
        assert server.connections == 2

    run(main())


def test_many_connections_share_one_address_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fifty requests at once open fifty connections after one lookup of the host; an IP address, none."""
    lookups: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        real = loop.getaddrinfo

        async def counting(host: str, *args: Any, **kwargs: Any) -> Any:
            lookups.append(host)
            return await real(host, *args, **kwargs)

        monkeypatch.setattr(loop, "getaddrinfo", counting)
        async with scripted(*[reply(b"x")] * 50) as server:
            pool = http1.Pool()
            url = server.url.replace("127.0.0.1", "localhost")
            answers = await asyncio.gather(*(post(pool, url) for _ in range(50)))
            pool.close()
        assert [a[2] for a in answers] == [b"x"] * 50
        assert lookups == ["localhost"]
        async with scripted(reply(b"y"), reply(b"z")) as server:
            pool = http1.Pool()
            answers = await asyncio.gather(post(pool, server.url), post(pool, server.url))
            pool.close()
        assert sorted(a[2] for a in answers) == [b"y", b"z"]
        assert lookups == ["localhost"]

    run(main())


def test_an_ip_address_is_used_as_written() -> None:
    """IPv4, IPv6 and a scoped IPv6 address (its `%eth0` kept) need no lookup; a name does."""
    assert http1._ip_literal("10.0.0.7", 80) == (socket.AF_INET, ("10.0.0.7", 80))
    assert http1._ip_literal("::1", 8000) == (socket.AF_INET6, ("::1", 8000))
    assert http1._ip_literal("fe80::1%eth0", 443) == (socket.AF_INET6, ("fe80::1%eth0", 443))
    assert http1._ip_literal("localhost", 80) is None
    assert http1._ip_literal("api.example.com", 443) is None


def test_behind_a_proxy_requests_go_through_aiohttp_to_the_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lean client speaks no proxy protocol: with HTTP_PROXY set, aiohttp sends to the proxy."""

    async def main() -> None:
        async with scripted(reply(b'{"via":"proxy"}')) as proxy:
            monkeypatch.setenv("HTTP_PROXY", proxy.url.split("/v1")[0])
            transport = Transport(4)
            route = http1.route("http://api.example.invalid/v1/chat/completions", {"x-a": "b"})
            status, _, body = await transport.post(route, b"{}", Timeouts(connect_s=2, total_s=5), 2**20)
            await transport.aclose()
        assert (status, body) == (200, b'{"via":"proxy"}')
        assert proxy.requests[0].startswith(b"POST http://api.example.invalid/v1/chat/completions HTTP/1.1")

    run(main())


def test_a_connection_the_server_closed_after_its_reply_is_not_reused() -> None:
    """A keep-alive reply, then the server hangs up: the next request opens a new connection, not fails."""

    def reply_and_hang_up(writer: asyncio.StreamWriter) -> None:
        writer.write(reply(b"1"))

    async def main() -> None:
        async with scripted(reply_and_hang_up, reply(b"2")) as server:
            pool = http1.Pool()
            assert (await post(pool, server.url))[2] == b"1"
            await asyncio.sleep(0.05)  # the server's FIN arrives
            assert (await post(pool, server.url))[2] == b"2"
            pool.close()
        assert server.connections == 2

    run(main())


def test_an_error_reply_in_an_unknown_coding_keeps_its_status_and_an_upgrade_is_refused() -> None:
    upgrade = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    brotli = (b"\x8b\x00", "Content-Encoding: br")
    too_many = reply(*brotli, "Retry-After: 3", status="429 Too Many Requests")

    async def main() -> None:
        async with scripted(too_many, reply(*brotli), upgrade) as server:
            pool = http1.Pool()
            status, headers, body = await post(pool, server.url)
            assert (status, headers["retry-after"], body) == (429, "3", b"\x8b\x00")
            with pytest.raises(ProviderError, match="'br' coding") as info:
                await post(pool, server.url)  # a 200 must be read: an unreadable one is an error
            assert info.value.error_type == "bad_response"
            with pytest.raises(ConnectionError, match="not valid HTTP"):
                await post(pool, server.url)
            pool.close()

    run(main())


def test_a_header_cannot_smuggle_a_line_break() -> None:
    with pytest.raises(ValueError, match="line break"):
        http1.route("http://127.0.0.1:1/v1", {"X-Note": "a\r\nEvil: 1"})
