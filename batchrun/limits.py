"""Limit primitives: a token bucket for rates, and a budget for money.

Providers enforce their per-minute limits per second too (DashScope: RPM/60), so a bucket that starts with a
minute's worth bursts straight into 429s. `per_minute_bucket` therefore holds about one second's worth; over
any longer window the rate is exact. A request may take more tokens than the bucket holds: it waits until
the bucket is full, then leaves it in debt, which later requests pay off.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import anyio

from batchrun.records import Usage

if TYPE_CHECKING:
    from batchrun.pricing import PriceBook
    from batchrun.records import Request


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


def per_minute_bucket(per_minute: float) -> TokenBucket:
    """A bucket for a per-minute limit, holding one second's worth."""
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


def worst_case_usd(request: Request, prices: PriceBook) -> float:
    """The most `request` can cost: its prompt, and its output cap (twice the expected output without one)."""
    output = request.output_cap or 2 * request.est_output_tokens
    worst = Usage(prompt_tokens=request.est_prompt_tokens, completion_tokens=output)
    return prices.cost(request.body.get("model"), worst) or 0.0
