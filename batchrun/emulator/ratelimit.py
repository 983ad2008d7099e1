"""RPM and TPM limits enforced the ways real providers enforce them, and the headers they send.

Four ways to enforce a per-minute limit, chosen by `EmulatorConfig.limit_window`:

- `bucket`: a token bucket refilled continuously at limit/60 per second that holds one second's worth (at
  least 1) and starts full. It admits a second's burst on top of the rate.
- `sliding`: a sliding one-second window holding at most limit/60: a request is refused when the admitted
  ones of the last 1.0 s plus it would pass that. The strictest reading of DashScope's rule (RPM is also
  enforced per second).
- `second`: a fixed window per clock second holding at most limit/60, emptied when the second turns.
- `minute`: a fixed window per clock minute holding the whole limit (OpenAI-style: a minute's worth at any
  pace, reset each minute).

A request needs one unit of the request limit and its token cost from the token limit. A request costing
more than a window holds is admitted when the window is empty (a bucket: full), as a real provider admits
one big request rather than refusing it forever.

Headers (OpenAI's names): `x-ratelimit-limit-*` is the per-minute limit as configured, `-remaining-*` what
the window would admit right now, `-reset-*` the time until it is wholly replenished, as a Go-style
duration (`1s`, `6m0s`, `20ms`, `1.5s`). A refused request also gets `retry-after-ms`, the exact time
until it would be admitted, and `retry-after`, the same in whole seconds rounded up (at least 1).
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from typing import Protocol

from batchrun.emulator.replies import error_body

__all__ = [
    "LIMIT_BODIES",
    "WINDOWS",
    "FixedWindow",
    "RateLimiter",
    "SlidingWindow",
    "TokenBucket",
    "Verdict",
    "format_duration",
]

LIMIT_BODIES = {
    name: error_body(
        f"Rate limit reached for {name} (emulated {short} limit)", name, code="rate_limit_exceeded"
    )
    for name, short in (("requests", "RPM"), ("tokens", "TPM"))
}
"""The body of a limiter 429 by the limit that refused the request ("requests" or "tokens")."""

WINDOWS = ("bucket", "sliding", "second", "minute")
"""The ways a limit can be enforced (see the module docstring)."""

# Refilling by elapsed time x rate leaves levels like 0.9999999999 where 1 was meant: allow for it.
_EPSILON = 1e-9


def format_duration(seconds: float) -> str:
    """A duration as OpenAI writes it (Go's format): `0s`, `20ms`, `1s`, `1.5s`, `6m0s`, `1h0m0s`.

    Rounded up to the millisecond, so a wait that is not over never reads as `0s`.
    """
    ms = math.ceil(seconds * 1000 - _EPSILON) if seconds > 0 else 0
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, fraction = divmod(rest, 1000)
    text = f"{whole}.{fraction:03d}".rstrip("0") if fraction else str(whole)
    if hours:
        return f"{hours}h{minutes}m{text}s"
    if minutes:
        return f"{minutes}m{text}s"
    return f"{text}s"


def _number(value: float) -> str:
    """A limit as a header value: `600`, not `600.0`."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Window(Protocol):
    """One limit's state. Times are passed in (monotonic seconds) rather than read, so tests are exact."""

    def wait_s(self, cost: float, now: float) -> float:
        """Seconds until `cost` would be admitted (0.0: now)."""
        ...

    def take(self, cost: float, now: float) -> None:
        """Count an admitted request of `cost`."""
        ...

    def remaining(self, now: float) -> float:
        """What would be admitted right now."""
        ...

    def reset_s(self, now: float) -> float:
        """Seconds until the limit is wholly replenished."""
        ...


class TokenBucket:
    """A bucket refilled continuously at `rate` units a second up to `capacity`; it starts full."""

    __slots__ = ("capacity", "level", "rate", "updated")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        """Start full at time `now`."""
        self.rate = rate
        self.capacity = capacity
        self.level = capacity
        self.updated = now

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def wait_s(self, cost: float, now: float) -> float:
        """Seconds until `cost` can be taken; a cost above the capacity waits for a full bucket."""
        self._refill(now)
        needed = min(cost, self.capacity)
        if self.level >= needed - _EPSILON:
            return 0.0
        return (needed - self.level) / self.rate

    def take(self, cost: float, now: float) -> None:
        """Take `cost`; the level goes negative (debt) when a request bigger than the bucket was admitted."""
        self._refill(now)
        self.level -= cost

    def remaining(self, now: float) -> float:
        """The level now (never below 0)."""
        self._refill(now)
        return max(0.0, self.level)

    def reset_s(self, now: float) -> float:
        """Seconds until the bucket is full again."""
        self._refill(now)
        return max(0.0, (self.capacity - self.level) / self.rate)


class SlidingWindow:
    """At most `capacity` admitted in any `length` seconds: each admission leaves `length` seconds later."""

    __slots__ = ("_admitted", "_used", "capacity", "length")

    def __init__(self, capacity: float, length: float = 1.0) -> None:
        """An empty window."""
        self.capacity = capacity
        self.length = length
        self._admitted: collections.deque[tuple[float, float]] = collections.deque()  # (time, cost)
        self._used = 0.0

    def _expire(self, now: float) -> None:
        admitted = self._admitted
        while admitted and admitted[0][0] <= now - self.length:
            self._used -= admitted.popleft()[1]
        if not admitted:
            self._used = 0.0  # no float residue once the window is empty

    def wait_s(self, cost: float, now: float) -> float:
        """Seconds until enough of the window has left for `cost` (an oversized cost: until it is empty)."""
        self._expire(now)
        if not self._admitted or self._used + cost <= self.capacity + _EPSILON:
            return 0.0
        used = self._used
        for stamp, taken in self._admitted:
            used -= taken
            if used <= _EPSILON or used + cost <= self.capacity + _EPSILON:
                return stamp + self.length - now
        raise AssertionError("unreachable: the window empties at the last admission")

    def take(self, cost: float, now: float) -> None:
        """Admit `cost` at `now`."""
        self._expire(now)
        self._admitted.append((now, cost))
        self._used += cost

    def remaining(self, now: float) -> float:
        """Room left in the window now."""
        self._expire(now)
        return max(0.0, self.capacity - self._used)

    def reset_s(self, now: float) -> float:
        """Seconds until the last admission leaves the window."""
        self._expire(now)
        return self._admitted[-1][0] + self.length - now if self._admitted else 0.0


class FixedWindow:
    """At most `capacity` admitted per window of `length` seconds, aligned on the clock, emptied as it turns.

    A cost above the capacity is admitted into an untouched window.
    """

    __slots__ = ("_index", "_used", "capacity", "length")

    def __init__(self, capacity: float, length: float) -> None:
        """An empty window."""
        self.capacity = capacity
        self.length = length
        self._index = -1
        self._used = 0.0

    def _turn(self, now: float) -> None:
        index = math.floor(now / self.length)
        if index != self._index:
            self._index = index
            self._used = 0.0

    def wait_s(self, cost: float, now: float) -> float:
        """0.0 when `cost` fits (or the window is untouched); else the time until the window turns."""
        self._turn(now)
        if self._used == 0 or self._used + cost <= self.capacity + _EPSILON:
            return 0.0
        return self.reset_s(now)

    def take(self, cost: float, now: float) -> None:
        """Admit `cost` at `now`."""
        self._turn(now)
        self._used += cost

    def remaining(self, now: float) -> float:
        """Room left in this window."""
        self._turn(now)
        return max(0.0, self.capacity - self._used)

    def reset_s(self, now: float) -> float:
        """Seconds until the window turns (0.0 when nothing is used in it)."""
        self._turn(now)
        return (self._index + 1) * self.length - now if self._used else 0.0


def make_window(kind: str, per_minute: float, now: float) -> Window:
    """The `kind` of window (one of `WINDOWS`) enforcing `per_minute`."""
    per_second = per_minute / 60
    if kind == "bucket":
        return TokenBucket(per_second, max(1.0, per_second), now)
    if kind == "sliding":
        return SlidingWindow(per_second)
    if kind == "second":
        return FixedWindow(per_second, 1.0)
    if kind == "minute":
        return FixedWindow(per_minute, 60.0)
    raise ValueError(f"unknown limit window {kind!r}; use one of {', '.join(WINDOWS)}")


@dataclass(frozen=True, slots=True)
class Verdict:
    """The limiter's answer: admitted or refused (by which limit), and the headers for the reply."""

    refused: str | None  # None: admitted; else "requests" or "tokens", the limit that refused it
    headers: dict[str, str] | None  # None when the config asks for no rate-limit headers


class RateLimiter:
    """Optional requests-per-minute and tokens-per-minute limits, each enforced by a `Window`."""

    def __init__(
        self,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        headers: bool,
        now: float,
        window: str = "bucket",
    ) -> None:
        """Build the limits (empty or full at `now`); `headers` says whether verdicts carry rate headers."""
        self._limits: list[tuple[str, float, Window]] = []  # (name, per-minute limit, window)
        for name, per_minute in (("requests", requests_per_minute), ("tokens", tokens_per_minute)):
            if per_minute is not None:
                self._limits.append((name, per_minute, make_window(window, per_minute, now)))
        self._headers = headers

    @property
    def counts_tokens(self) -> bool:
        """True when a TPM limit is set, so callers need to work out a request's token cost."""
        return any(name == "tokens" for name, _, _ in self._limits)

    def admit(self, tokens: int, now: float) -> Verdict:
        """Admit one request costing `tokens` (ignored without a TPM limit) at time `now`, or refuse it.

        A refused request takes nothing from any limit; an admitted one takes from every limit.
        """
        refused: str | None = None
        wait = 0.0
        for name, _, window in self._limits:
            needed = window.wait_s(1 if name == "requests" else tokens, now)
            if needed > 0:
                refused = refused or name  # name the request limit first, as OpenAI's message does
                wait = max(wait, needed)  # admitted only once every limit has room
        if refused is None:
            for name, _, window in self._limits:
                window.take(1 if name == "requests" else tokens, now)
        if not self._headers:
            return Verdict(refused, None)
        headers: dict[str, str] = {}
        for name, per_minute, window in self._limits:
            headers[f"x-ratelimit-limit-{name}"] = _number(per_minute)
            headers[f"x-ratelimit-remaining-{name}"] = str(math.floor(window.remaining(now) + _EPSILON))
            headers[f"x-ratelimit-reset-{name}"] = format_duration(window.reset_s(now))
        if refused is not None:
            # Whole microseconds rounded up: a client that waits exactly this long is admitted (rounding
            # down could leave it a hair short), and 0.07 s reads "70.0", not "70.00000000000001".
            ms = math.ceil(wait * 1_000_000 - _EPSILON) / 1000
            headers["retry-after-ms"] = repr(ms)
            headers["retry-after"] = str(max(1, math.ceil(ms / 1000)))
        return Verdict(refused, headers)
