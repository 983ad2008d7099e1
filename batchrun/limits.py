"""One limiter shared by the whole run: requests and tokens per minute, and a run-wide cooldown.

Providers enforce their per-minute limits per second too (DashScope: RPM/60), so a bucket that starts with a
minute's worth bursts straight into 429s. Each bucket therefore holds about one second's worth; over any
longer window the rate is exact. A request may take more tokens than the bucket holds: it waits until the
bucket is full, then leaves it in debt, which later requests pay off.
"""

from __future__ import annotations

import math
import time

import anyio

from batchrun.records import Request, Usage


class TokenBucket:
    """A token bucket refilled continuously at `rate_per_s`, holding at most `capacity`; FIFO waiters."""

    def __init__(self, rate_per_s: float, capacity: float) -> None:
        self.rate_per_s = rate_per_s
        self.capacity = max(capacity, 1.0)
        self._level = self.capacity
        self._stamp = time.monotonic()
        self._lock = anyio.Lock()  # anyio's Lock is fair: waiters are served in arrival order

    def _refill(self) -> None:
        now = time.monotonic()
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate_per_s)
        self._stamp = now

    async def take(self, amount: float) -> None:
        """Wait until `amount` can be taken (or the bucket is full, for an oversized amount), then take it."""
        need = min(amount, self.capacity)
        async with self._lock:
            self._refill()
            while self._level < need:
                await anyio.sleep((need - self._level) / self.rate_per_s)
                self._refill()
            self._level -= amount

    def give_back(self, amount: float) -> None:
        """Return tokens reserved but not used (or take more, with a negative amount)."""
        self._refill()
        self._level = min(self.capacity, self._level + amount)


class Limiter:
    """Requests-per-minute and tokens-per-minute buckets, and a cooldown that pauses every worker."""

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None) -> None:
        self.requests = _bucket(requests_per_minute)
        self.tokens = _bucket(tokens_per_minute)
        self._cool_until = 0.0

    @staticmethod
    def reserve_for(request: Request) -> int:
        """Tokens to reserve before sending: the prompt estimate plus the expected output."""
        return request.est_prompt_tokens + request.est_output_tokens

    async def acquire(self, request: Request) -> None:
        """Wait for the cooldown, a request slot and the request's estimated tokens."""
        # Not a polling loop: each sleep lasts exactly to the deadline, which a new 429 may have moved.
        while (wait := self._cool_until - time.monotonic()) > 0:  # noqa: ASYNC110
            await anyio.sleep(wait)
        if self.requests is not None:
            await self.requests.take(1)
        if self.tokens is not None:
            await self.tokens.take(self.reserve_for(request))

    def reconcile(self, request: Request, usage: Usage | None) -> None:
        """Correct the token bucket with what the request really used (nothing, if it failed)."""
        if self.tokens is None:
            return
        used = (usage.total_tokens or 0) if usage is not None else 0
        self.tokens.give_back(self.reserve_for(request) - used)

    def cool_down(self, seconds: float) -> None:
        """Pause every worker for `seconds` from now (a 429 slows the whole run, not one request)."""
        self._cool_until = max(self._cool_until, time.monotonic() + seconds)

    @property
    def cooling_down(self) -> bool:
        """True while the run is paused after a rate limit."""
        return self._cool_until > time.monotonic()


def _bucket(per_minute: float | None) -> TokenBucket | None:
    if per_minute is None:
        return None
    per_second = per_minute / 60
    return TokenBucket(per_second, math.ceil(per_second))


class Budget:
    """A spending cap: each request reserves its worst-case cost before it is sent, and settles after.

    A request is sent only if what is spent, plus what requests in flight have reserved, plus its own
    reservation stays within the cap, so the run can overshoot by no more than the requests in flight
    cost beyond their reservations.
    """

    def __init__(self, cap_usd: float, spent_usd: float = 0.0) -> None:
        self.cap_usd = cap_usd
        self.spent_usd = spent_usd
        self.reserved_usd = 0.0

    def try_reserve(self, amount_usd: float) -> bool:
        """Reserve `amount_usd` if it fits under the cap; False (and nothing reserved) if it does not."""
        if self.spent_usd + self.reserved_usd + amount_usd > self.cap_usd:
            return False
        self.reserved_usd += amount_usd
        return True

    def release(self, reserved_usd: float) -> None:
        """Release a reservation (the request is done, or was cancelled)."""
        self.reserved_usd = max(0.0, self.reserved_usd - reserved_usd)

    def spend(self, amount_usd: float | None) -> None:
        """Count what a finished request really cost."""
        self.spent_usd += amount_usd or 0.0
