"""The run's one limiter: everything a request waits for before it may be sent, and what its reply teaches.

Before sending: the outage breaker, a run-wide cooldown after a 429, a concurrency slot (adaptive when no
rate is configured), then the requests-per-minute and tokens-per-minute buckets. After: the tokens
reserved are corrected with the real usage, and 429s, rate-limit headers and server failures adjust the
pace for every worker at once (never per worker, so the real rate cannot grow with the worker count).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import anyio

from batchrun.adaptive import AdaptiveLimit
from batchrun.breaker import Breaker
from batchrun.errors import ProviderError
from batchrun.limits import TokenBucket, per_minute_bucket
from batchrun.providers.headers import RateInfo
from batchrun.records import Request, Usage
from batchrun.retry import RETRY_AFTER_CAP_S

SERVER_SIDE = {"server_error", "overloaded", "timeout", "connection", "truncated"}  # see batchrun.retry
EMA_WEIGHT = 0.05  # how fast the running average of completion tokens follows new replies
LOW_WATER = 0.1  # slow down when a header says less than this share of a limit is left


@dataclass(frozen=True, slots=True)
class Ticket:
    """What one attempt took from the limiter, to give back or correct when it ends."""

    tokens: int
    sent_at: float
    slot: bool  # holds an adaptive concurrency slot


class Limiter:
    """Shared by every worker of a run; see the module docstring for the order of the waits."""

    def __init__(
        self,
        *,
        concurrency: int,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        adaptive: bool = True,
        breaker: Breaker | None = None,
    ) -> None:
        self.requests = per_minute_bucket(requests_per_minute) if requests_per_minute else None
        self.tokens = per_minute_bucket(tokens_per_minute) if tokens_per_minute else None
        configured = requests_per_minute is not None or tokens_per_minute is not None
        self.adaptive = AdaptiveLimit(concurrency) if adaptive and not configured else None
        self.breaker = breaker or Breaker()
        self._cool_until = 0.0
        self._cool_spread = 0.0
        self._header_pace: TokenBucket | None = None
        self._header_pace_until = 0.0
        self._avg_completion: float | None = None
        self._avg_total = 1.0

    def reserve_for(self, request: Request) -> int:
        """Tokens to reserve: the prompt estimate plus the running average of real completions."""
        output = self._avg_completion if self._avg_completion is not None else request.est_output_tokens
        return request.est_prompt_tokens + round(output)

    async def acquire(self, request: Request) -> Ticket:
        """Wait until `request` may be sent; the ticket goes back through `on_success` or `on_failure`."""
        await self.breaker.admit()
        await self._wait_cooldown()
        if self.adaptive is not None:
            await self.adaptive.acquire()
        try:
            # A 429 may start a cooldown while this request waits for a slot or a bucket: waiting for the
            # cooldown only on the way in would let every request already queued through during it.
            while True:
                if self.adaptive is not None:
                    await self.adaptive.pace()
                if self._header_pace is not None and time.monotonic() < self._header_pace_until:
                    await self._header_pace.take(1)
                if self.requests is not None:
                    await self.requests.take(1)
                if not self.cooling_down:
                    break
                await self._wait_cooldown()  # what was taken stays taken: it only slows the run a little
            tokens = self.reserve_for(request)
            if self.tokens is not None:
                await self.tokens.take(tokens)
                await self._wait_cooldown()
        except BaseException:
            if self.adaptive is not None:
                self.adaptive.release()
            raise
        return Ticket(tokens, time.monotonic(), self.adaptive is not None)

    async def _wait_cooldown(self) -> None:
        # Not a polling loop: each sleep lasts exactly to the deadline, which a new 429 may have moved.
        waited = False
        while (wait := self._cool_until - time.monotonic()) > 0:
            await anyio.sleep(wait)
            waited = True
        if waited and self._cool_spread > 0:
            # Spread the wake-ups so the whole run does not hit the provider in the same millisecond.
            await anyio.sleep(random.random() * self._cool_spread)

    def on_success(self, ticket: Ticket, usage: Usage, rate: RateInfo) -> None:
        """A reply arrived: correct the token reservation, learn from it, heed its rate-limit headers."""
        self._release(ticket)
        if self.tokens is not None:
            self.tokens.give_back(ticket.tokens - (usage.total_tokens or ticket.tokens))
        if usage.completion_tokens is not None:
            self._avg_completion = _ema(self._avg_completion, usage.completion_tokens)
        if usage.total_tokens is not None:
            self._avg_total = _ema(self._avg_total, usage.total_tokens)
        self.breaker.success()
        if self.adaptive is not None:
            self.adaptive.on_success()
        self._heed(rate)

    def on_failure(self, ticket: Ticket, exc: ProviderError, backoff_s: float) -> None:
        """An attempt failed: give the tokens back; a 429 cools the whole run down; 5xx feed the breaker."""
        self._release(ticket)
        if self.tokens is not None:
            self.tokens.give_back(ticket.tokens)
        if exc.error_type == "rate_limited":
            wait = exc.retry_after_s if exc.retry_after_s is not None else backoff_s
            # The same cap as a row's own retry wait: an hour-long retry-after must not look like a hang.
            self.cool_down(min(wait, RETRY_AFTER_CAP_S))
            if self.adaptive is not None:
                self.adaptive.on_rate_limited(ticket.sent_at)
        elif exc.error_type in SERVER_SIDE:
            self.breaker.failure()

    def abandon(self, ticket: Ticket) -> None:
        """An attempt was cancelled (the run is stopping): give back what it took."""
        self._release(ticket)
        if self.tokens is not None:
            self.tokens.give_back(ticket.tokens)

    def cool_down(self, seconds: float) -> None:
        """Pause every worker for `seconds` from now (a 429 slows the whole run, not one request)."""
        until = time.monotonic() + seconds
        if until > self._cool_until:
            self._cool_until = until
            self._cool_spread = min(1.0, 0.1 * seconds)

    @property
    def cooldown_left_s(self) -> float:
        """Seconds left of the current cooldown (0 when none), for progress displays."""
        return max(0.0, self._cool_until - time.monotonic())

    @property
    def header_pace_per_s(self) -> float | None:
        """The pace a provider's rate-limit headers set, while it holds; None otherwise."""
        if self._header_pace is None or time.monotonic() >= self._header_pace_until:
            return None
        return self._header_pace.rate_per_s

    @property
    def cooling_down(self) -> bool:
        """True while the run is paused after a rate limit."""
        return self._cool_until > time.monotonic()

    def _release(self, ticket: Ticket) -> None:
        if ticket.slot and self.adaptive is not None:
            self.adaptive.release()

    def _heed(self, rate: RateInfo) -> None:
        """Slow down before a limit runs out, as the provider's headers report it."""
        wait = rate.wait_s()
        if wait is not None:
            self.cool_down(wait)  # nothing left: no request can succeed before the reset
            return
        for limit in (rate.requests, rate.tokens):
            left = limit.fraction_left
            if left is not None and left < LOW_WATER and limit.reset_s and limit.remaining:
                # Spread what is left over the time to the reset; for tokens, as requests of average size.
                per_request = 1.0 if limit is rate.requests else max(1.0, self._avg_total)
                rate_per_s = max(limit.remaining / per_request / limit.reset_s, 0.1)
                # Retune the one bucket rather than replace it: a new bucket starts full, and replacing
                # it on every reply would let a burst through each time.
                if self._header_pace is None:
                    self._header_pace = TokenBucket(rate_per_s, 1)
                else:
                    self._header_pace.rate_per_s = rate_per_s
                self._header_pace_until = time.monotonic() + limit.reset_s


def _ema(average: float | None, value: float) -> float:
    return value if average is None else average + EMA_WEIGHT * (value - average)
