"""Injected faults: which one a request gets (a seeded draw), their bodies, and broken connections.

The draw is a function of the seed, the request key and the attempt number only, so a retrying client sees
the same fault pattern on every run whatever the timing. One draw per request decides among every fault,
each rate being its share of all requests, in the order of `FAULT_RATES`.
"""

from __future__ import annotations

import contextlib
import enum
import json
import random

from aiohttp import web

from batchrun.emulator.config import FAULT_RATES, EmulatorConfig
from batchrun.emulator.replies import error_body

__all__ = [
    "ERROR_BODIES",
    "OUTAGE_BODY",
    "Fault",
    "FaultPicker",
    "drop_connection",
    "send_stream",
    "send_truncated",
]


class Fault(enum.Enum):
    """One kind of injected fault; the value is the name of its rate in `EmulatorConfig`."""

    E429 = "rate_429"
    E500 = "rate_500"
    E502 = "rate_502"
    E503 = "rate_503"
    E529 = "rate_529"
    DROP = "rate_drop"  # the connection is closed without a reply
    TRUNCATE = (
        "rate_truncate"  # 200 and its headers, half the body (or stream), then the connection is closed
    )
    SLOW = "rate_slow"  # a normal 200, `slow_s` late


# The draw order must be the config's: it is what keeps old seeded patterns (429s, then 500s) unchanged.
assert tuple(fault.value for fault in Fault) == FAULT_RATES

ERROR_BODIES: dict[Fault, tuple[int, bytes]] = {
    Fault.E429: (
        429,
        error_body("Rate limit reached for requests (emulated).", "requests", code="rate_limit_exceeded"),
    ),
    Fault.E500: (
        500,
        error_body("The server had an error while processing your request (emulated).", "server_error"),
    ),
    Fault.E502: (
        502,
        error_body("Bad gateway: the upstream server did not answer (emulated).", "server_error"),
    ),
    Fault.E503: (
        503,
        error_body("The engine is currently overloaded, please try again later (emulated).", "server_error"),
    ),
    # Anthropic's shape: what Qwen Cloud's Anthropic mode and Anthropic itself send when overloaded.
    Fault.E529: (
        529,
        json.dumps(
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        ).encode(),
    ),
}
"""The status and body of each fault that is an HTTP error reply."""

OUTAGE_BODY = error_body(
    "The service is temporarily unavailable (emulated outage).", "server_error", code="service_unavailable"
)
"""The body of the 503 every chat request gets during the outage window."""


class FaultPicker:
    """Picks a request's fault (or none) from the config's rates with one seeded draw."""

    __slots__ = ("_bounds", "_seed")

    def __init__(self, config: EmulatorConfig) -> None:
        """Precompute the cumulative rates, so a pick is one draw and a few comparisons."""
        self._seed = config.seed
        bounds: list[tuple[float, Fault]] = []
        total = 0.0
        for fault in Fault:
            rate: float = getattr(config, fault.value)
            if rate:
                total += rate
                bounds.append((total, fault))
        self._bounds = tuple(bounds)

    @property
    def active(self) -> bool:
        """True when any fault rate is above 0 (else `pick` need not be called)."""
        return bool(self._bounds)

    def pick(self, key: str, attempt: int) -> Fault | None:
        """The fault for the `attempt`-th admitted attempt of the request with this key; None: answer it."""
        # A seeded Random rather than a hash so that patterns from before this module existed replay.
        draw = random.Random(f"{self._seed}:{key}:{attempt}").random()
        for bound, fault in self._bounds:
            if draw < bound:
                return fault
        return None


def drop_connection(request: web.Request) -> web.Response:
    """Close the connection without a reply; the client sees the server disconnect.

    The returned response is never sent (aiohttp finds the transport closing and gives up quietly); it only
    satisfies the handler's return type.
    """
    transport = request.transport
    if transport is not None:  # None: the client has gone already
        transport.close()
    return web.Response(status=200)


async def send_truncated(
    request: web.Request, body: bytes, headers: dict[str, str] | None
) -> web.StreamResponse:
    """Send a 200 announcing the whole body's length, write only its first half, then close the connection."""
    response = web.StreamResponse(status=200, headers=headers)
    response.content_type = "application/json"
    response.content_length = len(body)
    # A client that hung up meanwhile must not turn the fault into a server error and a logged traceback.
    with contextlib.suppress(ConnectionResetError):
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
    transport = request.transport
    if transport is not None:
        transport.close()  # close(), not abort(): what was written is flushed first
    return response


async def send_stream(
    request: web.Request, frames: list[bytes], headers: dict[str, str] | None, *, cut: bool = False
) -> web.StreamResponse:
    """Send server-sent events one frame at a time; `cut`: only the first half, then close the connection.

    A cut stream is the streaming form of a truncated body: the client has a 200 and some of the answer,
    but never the stream's end (`[DONE]`, `message_stop`).
    """
    response = web.StreamResponse(status=200, headers=headers)
    response.content_type = "text/event-stream"
    response.headers["Cache-Control"] = "no-cache"
    sent = frames[: len(frames) // 2] if cut else frames
    with contextlib.suppress(ConnectionResetError):
        await response.prepare(request)
        for frame in sent:
            await response.write(frame)
        if not cut:
            await response.write_eof()
    if cut and request.transport is not None:
        request.transport.close()
    return response
