"""Send to and receive from anyio's memory object streams, through the event loop only to wait.

anyio's own `send` and `receive` yield to the loop on every item, even when they need not wait.
"""

from __future__ import annotations

from typing import TypeVar

import anyio
from anyio.lowlevel import checkpoint_if_cancelled
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

T = TypeVar("T")


async def send(stream: MemoryObjectSendStream[T], item: T) -> None:
    """Send `item`, through the event loop only when the buffer is full.

    anyio's `send` yields to the loop on every item: the producer then started one request per loop turn,
    and 1,024 requests took 0.2 s to get going instead of 0.01 s (measured).
    """
    try:
        stream.send_nowait(item)
    except anyio.WouldBlock:
        await stream.send(item)


async def receive(stream: MemoryObjectReceiveStream[T]) -> T | None:
    """The next item (through the event loop only when none is waiting), or None once the stream ends.

    A cancelled task gets its cancellation here, not after it has sent one more request.
    """
    await checkpoint_if_cancelled()
    try:
        return stream.receive_nowait()
    except anyio.WouldBlock:
        try:
            return await stream.receive()
        except anyio.EndOfStream:
            return None
    except anyio.EndOfStream:
        return None


async def receive_batch(stream: MemoryObjectReceiveStream[T], most: int) -> list[T]:
    """The next item (waiting for it) and up to `most - 1` more already waiting behind it; [] once the
    stream ends. One message for all that is ready: a block of requests, a shipment of results."""
    first = await receive(stream)
    if first is None:
        return []
    return [first, *receive_ready(stream, most - 1)]


def receive_ready(stream: MemoryObjectReceiveStream[T], most: int) -> list[T]:
    """Up to `most` items already waiting in `stream`, without waiting for any."""
    batch: list[T] = []
    while len(batch) < most:
        try:
            batch.append(stream.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream):
            break
    return batch
