"""Finding a provider's limit when nobody configured it: adaptive concurrency and rate discovery.

Concurrency follows AIMD with a slow start, as TCP does: it starts small, doubles each round trip while
requests succeed, then grows by one a round trip; a 429 cuts it by `CUT`. Cutting concurrency alone
makes the rate saw-tooth under a requests-per-minute limit, so the first 429 also switches on a pacing
bucket set just under the success rate just measured (what the provider actually admitted), which then
creeps up by `PROBE_GROWTH` a second until the next 429 pulls it back. Under a steady limit that holds the
run within a few percent of it with few 429s.

429s that come whatever the rate (an overloaded provider refusing a share of all requests) would ratchet
the pace down forever, each cut measuring a lower success rate than the last; the pace therefore never
drops below `FLOOR` of the best success rate seen.
"""

from __future__ import annotations

import collections
import math
import time

import anyio

from batchrun.limits import TokenBucket

INITIAL_CONCURRENCY = 4
CUT = 0.7  # concurrency kept after a 429
RATE_MARGIN = 0.95  # the pacing rate after a 429, as a share of the success rate measured
PROBE_GROWTH = 0.01  # how fast the pacing rate creeps back up, a share per second
WINDOW_S = 5.0  # the window the success rate is measured over
FLOOR = 0.5  # the pace never drops below this share of the best success rate measured
MIN_SPAN_S = 1.0  # the shortest stretch of answers a success rate is measured over
MIN_CUT_GAP_S = 0.2  # at most one cut of the window per this many seconds


class AdaptiveLimit:
    """A concurrency window and an optional pacing rate, both learned from 429s and successes."""

    def __init__(self, max_concurrency: int) -> None:
        self.max_concurrency = max_concurrency
        self.window = float(min(INITIAL_CONCURRENCY, max_concurrency))
        self._slow_start = True
        self._gate = anyio.CapacityLimiter(max(1, int(self.window)))
        self.pacer: TokenBucket | None = None  # None until the first 429: no rate is known yet
        self._successes: collections.deque[float] = collections.deque()
        self._last_cut = 0.0
        self._limited_since: float | None = None  # the first 429: successes before it include a burst
        self._best_rate = 0.0
        self._last_growth = time.monotonic()

    @property
    def concurrency(self) -> int:
        """Requests allowed in flight now."""
        return int(self._gate.total_tokens)

    @property
    def rate_per_s(self) -> float | None:
        """The pacing rate, once a 429 has shown there is a limit."""
        return self.pacer.rate_per_s if self.pacer is not None else None

    async def acquire(self) -> None:
        """Wait for a concurrency slot (then call `pace` before sending)."""
        await self._gate.acquire()

    async def pace(self) -> None:
        """Wait for the pacing bucket, once a 429 has set one."""
        if self.pacer is not None:
            self._grow_rate()
            await self.pacer.take(1)

    def release(self) -> None:
        """Give the concurrency slot back."""
        self._gate.release()

    def on_success(self) -> None:
        """A request was answered: widen the window (doubling per round trip in slow start)."""
        now = time.monotonic()
        self._successes.append(now)
        while self._successes and self._successes[0] < now - WINDOW_S:
            self._successes.popleft()
        self.window += 1.0 if self._slow_start else 1.0 / self.window
        self._apply_window()

    def on_rate_limited(self, sent_at: float) -> None:
        """A 429: cut the window once per round of requests, and pace just under the measured success rate.

        `sent_at` is when the refused request was sent: 429s for requests sent before the last cut say
        nothing new, so they do not cut again.
        """
        now = time.monotonic()
        # One cut per round: 429s come back at once, so without a minimum gap a single burst of refusals
        # would cut the window ten times over.
        if sent_at < self._last_cut or now - self._last_cut < MIN_CUT_GAP_S:
            return
        if self._limited_since is None:
            self._limited_since = now
        self._last_cut = now
        self._slow_start = False
        self.window = max(1.0, self.window * CUT)
        self._apply_window()
        measured = self._success_rate(now)
        if measured is None:
            return  # too few answers yet to know a rate: the window cut and the cooldown must do
        self._best_rate = max(self._best_rate, measured)
        rate = measured * RATE_MARGIN
        if self.pacer is not None:
            rate = min(rate, self.pacer.rate_per_s)
        rate = max(rate, FLOOR * self._best_rate, 0.1)
        self.pacer = TokenBucket(rate, math.ceil(max(rate, 1.0) / 4))
        self._last_growth = now

    def _success_rate(self, now: float) -> float | None:
        # Counted from the first 429 on: until then the provider was admitting its first second's burst,
        # which would read as a rate far above its limit. Under a second of answers says nothing yet.
        start = max(now - WINDOW_S, self._limited_since if self._limited_since is not None else now)
        span = now - start
        if span < MIN_SPAN_S:
            return None
        return sum(1 for t in self._successes if t >= start) / span

    def _grow_rate(self) -> None:
        assert self.pacer is not None
        now = time.monotonic()
        elapsed = now - self._last_growth
        if elapsed >= 1.0:
            self.pacer.rate_per_s *= (1 + PROBE_GROWTH) ** elapsed
            self._last_growth = now

    def _apply_window(self) -> None:
        self.window = min(self.window, float(self.max_concurrency))
        self._gate.total_tokens = max(1, int(self.window))
