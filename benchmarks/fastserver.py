"""A lean OpenAI-compatible server for benchmarks: answers fast enough that the client is what gets measured.

The emulator (`batchrun emulate`) is built for fidelity (faults, limits, deterministic replies) on aiohttp's
web framework; on two cores that framework's per-request cost would be most of what a benchmark measured.
This server is a bare asyncio protocol: it reads HTTP/1.1 requests on keep-alive connections, and answers
each POST with a small chat completion whose usage is derived from the body's length, after `--latency`
seconds (a timer, not a sleeping task, so 1,000 requests waiting cost nothing).

`--completion-bytes N` makes the replies realistic in size for memory benchmarks: N bytes of completion
text (a different slice of prose each time), the full usage object with `prompt_tokens_details` and
`completion_tokens_details`, and `--reasoning-every K`: every Kth reply also carries N/2 bytes of reasoning.

    python benchmarks/fastserver.py --port 0 --latency 0.2    # prints "listening on http://127.0.0.1:PORT/v1"
    python benchmarks/fastserver.py --port 0 --completion-bytes 2048 --reasoning-every 10
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
_LONG_REPLY = (
    '{{"id":"chatcmpl-{n:012d}","object":"chat.completion","created":1700000000,"model":"qwen3-max",'
    '"choices":[{{"index":0,"message":{{"role":"assistant","content":"{text}"{reasoning}}},'
    '"finish_reason":"stop"}}],"usage":{{"prompt_tokens":{prompt},"completion_tokens":{completion},'
    '"total_tokens":{total},"prompt_tokens_details":{{"cached_tokens":0,"audio_tokens":0}},'
    '"completion_tokens_details":{{"reasoning_tokens":{thought},"audio_tokens":0,'
    '"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}},"system_fingerprint":"fp_bench"}}'
)
_PROSE = (
    "the review says battery life is shorter than advertised but the build quality is solid and the "
    "zippers run smoothly; delivery was quick, customer service answered within a day, and overall the "
    "reviewer would buy it again although the manual is useless and the color is darker than the photos"
)


def prose(length: int) -> str:
    """About `length` characters of word salad without quotes or backslashes (safe inside a JSON string)."""
    vocabulary = _PROSE.split()
    words, size, i = [], 0, 0
    while size < length:
        word = vocabulary[(i * 7 + i // len(vocabulary)) % len(vocabulary)]
        words.append(word)
        size += len(word) + 1
        i += 1
    return " ".join(words)[:length]


class Replies:
    """The replies to send: the short classic one, or long ones (`completion_bytes` > 0)."""

    def __init__(self, completion_bytes: int = 0, reasoning_every: int = 0) -> None:
        self.completion_bytes = completion_bytes
        self.reasoning_every = reasoning_every
        self.text = prose(completion_bytes + 4096)
        self.count = 0

    def reply(self, body_length: int) -> bytes:
        """The whole HTTP response to a request whose body has `body_length` bytes."""
        prompt = max(1, body_length // 4)
        if not self.completion_bytes:
            body = _REPLY.format(prompt=prompt, total=prompt + 2).encode()
            return _HEAD % len(body) + body
        self.count += 1
        n, size = self.count, self.completion_bytes
        start = (n * 131) % 4096
        reasoning, thought = "", 0
        if self.reasoning_every and n % self.reasoning_every == 0:
            reasoning = ',"reasoning_content":"' + self.text[start // 2 : start // 2 + size // 2] + '"'
            thought = size // 8
        completion = size // 4 + thought
        body = _LONG_REPLY.format(
            n=n,
            text=self.text[start : start + size],
            reasoning=reasoning,
            prompt=prompt,
            completion=completion,
            total=prompt + completion,
            thought=thought,
        ).encode()
        return _HEAD % len(body) + body


def reply(body_length: int) -> bytes:
    """The short reply to a request whose body has `body_length` bytes."""
    return _SHORT.reply(body_length)


_SHORT = Replies()


class BenchProtocol(asyncio.Protocol):
    """One keep-alive connection: parse requests off the buffer, answer each after the latency."""

    def __init__(self, latency_s: float, replies: Replies = _SHORT) -> None:
        self.latency_s = latency_s
        self.replies = replies
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
            response = self.replies.reply(length)
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


async def serve(port: int, latency_s: float, replies: Replies = _SHORT) -> None:
    """Listen on 127.0.0.1:`port` (0: a free one), print the base URL, serve until killed."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: BenchProtocol(latency_s, replies), "127.0.0.1", port, backlog=4096
    )
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
    parser.add_argument("--completion-bytes", type=int, default=0, help="long replies of this many bytes")
    parser.add_argument("--reasoning-every", type=int, default=0, help="every Kth long reply has reasoning")
    args = parser.parse_args()
    replies = Replies(args.completion_bytes, args.reasoning_every) if args.completion_bytes else _SHORT
    try:
        # uvloop when installed (batchrun's own dependency on Linux and macOS): the server's CPU per request
        # is what it takes from the client on a 2-core machine.
        run = asyncio.run
        if importlib.util.find_spec("uvloop") is not None:
            import uvloop

            run = uvloop.run
        run(serve(args.port, args.latency, replies))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
