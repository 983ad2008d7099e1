"""A lean OpenAI-compatible server for benchmarks: answers fast enough that the client is what gets measured.

The emulator (`batchrun emulate`) is built for fidelity (faults, limits, deterministic replies) on aiohttp's
web framework; on two cores that framework's per-request cost would be most of what a benchmark measured.
This server is a bare asyncio protocol: it reads HTTP/1.1 requests on keep-alive connections, and answers
each POST with a small chat completion whose usage is derived from the body's length, after `--latency`
seconds (a timer, not a sleeping task, so 1,000 requests waiting cost nothing).

    python benchmarks/fastserver.py --port 0 --latency 0.2    # prints "listening on http://127.0.0.1:PORT/v1"
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
from typing import cast

_REPLY = (
    '{{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"qwen3-max",'
    '"choices":[{{"index":0,"message":{{"role":"assistant","content":"positive"}},"finish_reason":"stop"}}],'
    '"usage":{{"prompt_tokens":{prompt},"completion_tokens":2,"total_tokens":{total}}}}}'
)
_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"


def reply(body_length: int) -> bytes:
    """The whole HTTP response to a request whose body has `body_length` bytes."""
    prompt = max(1, body_length // 4)
    body = _REPLY.format(prompt=prompt, total=prompt + 2).encode()
    return _HEAD % len(body) + body


class BenchProtocol(asyncio.Protocol):
    """One keep-alive connection: parse requests off the buffer, answer each after the latency."""

    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport to answer on."""
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        """Take every complete request off the buffer."""
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in bytes(self.buffer[:end]).lower().split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line[15:])
            if len(self.buffer) < end + 4 + length:
                return
            del self.buffer[: end + 4 + length]
            response = reply(length)
            if self.latency_s > 0:
                asyncio.get_running_loop().call_later(self.latency_s, self._send, response)
            else:
                self._send(response)

    def _send(self, response: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(response)

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the transport: timers still pending for it answer nobody."""
        self.transport = None


async def serve(port: int, latency_s: float) -> None:
    """Listen on 127.0.0.1:`port` (0: a free one), print the base URL, serve until killed."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: BenchProtocol(latency_s), "127.0.0.1", port, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    print(f"listening on http://127.0.0.1:{bound}/v1", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    """Parse the flags and serve."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    args = parser.parse_args()
    try:
        # uvloop when installed (batchrun's own dependency on Linux and macOS): the server's CPU per request
        # is what it takes from the client on a 2-core machine.
        run = asyncio.run
        if importlib.util.find_spec("uvloop") is not None:
            import uvloop

            run = uvloop.run
        run(serve(args.port, args.latency))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
