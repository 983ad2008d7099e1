"""RPM and TPM limits enforced per second, the way DashScope and OpenAI enforce them, and their headers.

Each limit is a token bucket refilled continuously at limit/60 per second that holds one second's worth
(at least 1), starting full. A request needs one unit of the request bucket and its token cost from the
token bucket; a request costing more than the token bucket holds is admitted when the bucket is full and
leaves it in debt, as a real provider admits one big request rather than refusing it forever.

Headers (OpenAI's names): `x-ratelimit-limit-*` is the per-minute limit as configured, `-remaining-*` what
the bucket would admit right now (at most one second's worth: the limit is enforced per second), `-reset-*`
the time until the bucket is full again, as a Go-style duration (`1s`, `6m0s`, `20ms`, `1.5s`). A refused
request also gets `retry-after-ms`, the exact time until it would be admitted, and `retry-after`, the same
in whole seconds rounded up (at least 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from batchrun.emulator.replies import error_body

__all__ = ["LIMIT_BODIES", "RateLimiter", "TokenBucket", "Verdict", "format_duration"]

LIMIT_BODIES = {
    name: error_body(
        f"Rate limit reached for {name} (emulated {short} limit)", name, code="rate_limit_exceeded"
    )
    for name, short in (("requests", "RPM"), ("tokens", "TPM"))
}
"""The body of a limiter 429 by the limit that refused the request ("requests" or "tokens")."""

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


class TokenBucket:
    """A bucket refilled continuously at `rate` units a second up to `capacity`; it starts full.

    Times are passed in (monotonic seconds) rather than read, so the bucket is exact under test.
    """

    __slots__ = ("capacity", "level", "rate", "updated")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        """Start full at time `now`."""
        self.rate = rate
        self.capacity = capacity
        self.level = capacity
        self.updated = now

    def refill(self, now: float) -> None:
        """Add what flowed in since the last refill, up to the capacity."""
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def wait_s(self, cost: float) -> float:
        """Seconds until `cost` can be taken (0.0: now); a cost above the capacity waits for a full bucket."""
        needed = min(cost, self.capacity)
        if self.level >= needed - _EPSILON:
            return 0.0
        return (needed - self.level) / self.rate

    def take(self, cost: float) -> None:
        """Take `cost`; the level goes negative (debt) when a request bigger than the bucket was admitted."""
        self.level -= cost

    def until_full_s(self) -> float:
        """Seconds until the bucket is full again."""
        return max(0.0, (self.capacity - self.level) / self.rate)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The limiter's answer: admitted or refused (by which limit), and the headers for the reply."""

    refused: str | None  # None: admitted; else "requests" or "tokens", the limit that refused it
    headers: dict[str, str] | None  # None when the config asks for no rate-limit headers


class RateLimiter:
    """Optional requests-per-minute and tokens-per-minute limits, each a per-second `TokenBucket`."""

    def __init__(
        self, requests_per_minute: float | None, tokens_per_minute: float | None, headers: bool, now: float
    ) -> None:
        """Build the buckets (full at `now`); `headers` says whether verdicts carry rate-limit headers."""
        self._limits: list[tuple[str, float, TokenBucket]] = []  # (name, per-minute limit, bucket)
        for name, per_minute in (("requests", requests_per_minute), ("tokens", tokens_per_minute)):
            if per_minute is not None:
                per_second = per_minute / 60
                self._limits.append((name, per_minute, TokenBucket(per_second, max(1.0, per_second), now)))
        self._headers = headers

    @property
    def counts_tokens(self) -> bool:
        """True when a TPM limit is set, so callers need to work out a request's token cost."""
        return any(name == "tokens" for name, _, _ in self._limits)

    def admit(self, tokens: int, now: float) -> Verdict:
        """Admit one request costing `tokens` (ignored without a TPM limit) at time `now`, or refuse it.

        A refused request takes nothing from any bucket; an admitted one takes from every bucket.
        """
        refused: str | None = None
        wait = 0.0
        for name, _, bucket in self._limits:
            bucket.refill(now)
            needed = bucket.wait_s(1 if name == "requests" else tokens)
            if needed > 0:
                refused = refused or name  # name the request limit first, as OpenAI's message does
                wait = max(wait, needed)  # admitted only once every bucket has room
        if refused is None:
            for name, _, bucket in self._limits:
                bucket.take(1 if name == "requests" else tokens)
        if not self._headers:
            return Verdict(refused, None)
        headers: dict[str, str] = {}
        for name, per_minute, bucket in self._limits:
            headers[f"x-ratelimit-limit-{name}"] = _number(per_minute)
            headers[f"x-ratelimit-remaining-{name}"] = str(max(0, math.floor(bucket.level + _EPSILON)))
            headers[f"x-ratelimit-reset-{name}"] = format_duration(bucket.until_full_s())
        if refused is not None:
            # Whole microseconds rounded up: a client that waits exactly this long is admitted (rounding
            # down could leave it a hair short), and 0.07 s reads "70.0", not "70.00000000000001".
            ms = math.ceil(wait * 1_000_000 - _EPSILON) / 1000
            headers["retry-after-ms"] = repr(ms)
            headers["retry-after"] = str(max(1, math.ceil(ms / 1000)))
        return Verdict(refused, headers)
