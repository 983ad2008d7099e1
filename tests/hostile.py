"""Small purpose-built HTTP servers on 127.0.0.1 that behave as real servers do, or badly.

Not the emulator: each test scripts the raw bytes a server sends, so batchrun's parsers meet replies they
were not written beside. A server runs in a thread of its own (batchrun runs its own event loop in the
test's thread), answers at most `max_requests` requests (then closes every connection at once, so a
runaway retry loop ends), and stops when the test's `with` block ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

MAX_REQUESTS = 200  # no test needs more


@dataclass(frozen=True, slots=True)
class Seen:
    """One request as the server read it."""

    head: str  # request line and headers
    body: bytes

    def header(self, name: str) -> str:
        """A request header's value ('' when absent)."""
        for line in self.head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return ""

    @property
    def json(self) -> Any:
        """The request body as JSON."""
        return json.loads(self.body)


# What a handler returns: raw reply bytes, or a coroutine that writes whatever it likes (the connection is
# closed after it).
Action = bytes | Callable[[asyncio.StreamWriter], Awaitable[None]]
Handler = Callable[[Seen], Action]


@dataclass
class Server:
    """A running server: its base URL and what it saw."""

    base_url: str
    requests: list[Seen] = field(default_factory=list)
    connections: int = 0


def reply(
    body: bytes | str | dict[str, Any], *headers: str, status: str = "200 OK", content_type: str = ""
) -> bytes:
    """A reply framed by Content-Length; a dict is sent as JSON."""
    if isinstance(body, dict):
        body, content_type = json.dumps(body), content_type or "application/json"
    data = body.encode() if isinstance(body, str) else body
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(data)}", *headers]
    if content_type:
        head.append(f"Content-Type: {content_type}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


USAGE = {"prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 22}


def completion(content: str = "positive", *, usage: Any = USAGE, **choice: Any) -> dict[str, Any]:
    """A `chat.completion` object; `usage=None` leaves the usage out; `choice` replaces choice fields."""
    body: dict[str, Any] = {
        "id": "chatcmpl-h",
        "object": "chat.completion",
        "model": "qwen3-max",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            | choice
        ],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def gzipped(data: bytes, *headers: str) -> bytes:
    """A 200 whose body is `data` gzip-compressed."""
    return reply(gzip.compress(data, compresslevel=9), "Content-Encoding: gzip", *headers)


def events(*payloads: str, content_type: str = "text/event-stream") -> bytes:
    """A 200 carrying server-sent events (`data: ...` each), framed by Content-Length."""
    body = "".join(f"data: {p}\n\n" for p in payloads)
    return reply(body, content_type=content_type)


@contextlib.contextmanager
def serving(handler: Handler, *, tls: ssl.SSLContext | None = None) -> Iterator[Server]:
    """Serve `handler` on 127.0.0.1 (a free port) in a background thread while the block runs."""
    loop = asyncio.new_event_loop()
    server = Server(base_url="")
    ready = threading.Event()
    stop: asyncio.Future[None] | None = None

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections += 1
        try:
            while len(server.requests) < MAX_REQUESTS:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                seen = Seen(head, b"")
                length = int(seen.header("content-length") or 0)
                seen = Seen(head, await reader.readexactly(length))
                server.requests.append(seen)
                action = handler(seen)
                if callable(action):
                    await action(writer)
                    return
                writer.write(action)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        nonlocal stop
        stop = loop.create_future()
        listener = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
        scheme = "https" if tls else "http"
        server.base_url = f"{scheme}://127.0.0.1:{listener.sockets[0].getsockname()[1]}/v1"
        ready.set()
        async with listener:
            await stop

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("the test server did not start")
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(lambda: stop is not None and stop.set_result(None))
        thread.join(10)
        loop.close()


async def endless(writer: asyncio.StreamWriter, *, limit: int = 32 * 2**20) -> None:
    """A 200 whose chunked body never ends (the server gives up after `limit` bytes or a hang-up)."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    piece = b" " * 65536
    chunk = b"%x\r\n%s\r\n" % (len(piece), piece)
    sent = 0
    with contextlib.suppress(ConnectionError):
        while sent < limit and not writer.is_closing():
            writer.write(chunk)
            await writer.drain()
            sent += len(piece)
