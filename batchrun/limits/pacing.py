"""The run's one limiter: everything a request waits for before it may be sent, and what its reply teaches.

Before sending: the outage breaker, a concurrency slot (adaptive when no rate is configured), then the
request pace and the token pace. Both paces are `Pacer`s (even spacing on a virtual schedule, no burst);
a cooldown after a 429 moves their schedules later and banks nothing. The request pace is the lowest of
what applies: the configured `requests_per_minute` (or the limit a provider's headers announce) times the
trim that 429s cut (`RateTrim`), the pace discovered from 429s when no rate is known (`AdaptiveLimit`), and
a pace the headers ask for when little of a long window is left. After a reply: the tokens reserved are
corrected with the real usage, and 429s, headers and server failures adjust the pace for every worker at
once (never per worker, so the real rate cannot grow with the worker count).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from batchrun.errors import ProviderError
from batchrun.limits.adaptive import AdaptiveLimit, RateTrim
from batchrun.limits.breaker import Breaker
from batchrun.limits.pacer import Pacer
from batchrun.limits.retry import RETRY_AFTER_CAP_S
from batchrun.providers.headers import RateInfo
from batchrun.records import Request, Usage

# The failures that feed the outage breaker (see batchrun.limits.retry for what each means).
SERVER_SIDE = {"server_error", "overloaded", "timeout", "connection", "truncated"}
EMA_WEIGHT = 0.05  # how fast the running average of completion tokens follows new replies
LOW_WATER = 0.1  # slow down when a header says less than this share of a limit is left
LONG_WINDOW_S = 1.0  # a reset further off than this is a long window: its headers are worth heeding
BARE_COOLDOWN_MAX_S = 5.0  # the longest pause a run of 429s without a retry-after grows to


@dataclass(frozen=True, slots=True)
class Ticket:
    """What one attempt took from the limiter, to give back or correct when it ends."""

    tokens: int
    sent_at: float
    slot: bool  # holds an adaptive concurrency slot
    est_prompt_tokens: int  # the request's own estimate, to learn how far off such estimates run


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
        configured = requests_per_minute is not None or tokens_per_minute is not None
        self._learns = adaptive and not configured  # rates announced by headers are adopted too
        self.adaptive = AdaptiveLimit(concurrency) if self._learns else None
        self.breaker = breaker or Breaker()
        self.trim = RateTrim()
        self._rpm_per_s = requests_per_minute / 60 if requests_per_minute else None
        self._tpm_per_s = tokens_per_minute / 60 if tokens_per_minute else None
        self.requests = Pacer()
        self.tokens = Pacer(self._tpm_per_s) if self._tpm_per_s else None
        self._cool_until = 0.0
        self._cool_started = -math.inf
        self._bare_cooldown_s: float | None = None  # the last pause a 429 without retry-after got
        self._header_pace: float | None = None
        self._header_pace_until = 0.0
        self._avg_completion: float | None = None
        self._avg_total = 1.0
        self._prompt_ratio = 1.0  # real prompt tokens per estimated one, as replies report them
        self.waiting = 0  # requests inside `acquire`: queued for a slot, a pace or a cooldown
        self._requests_bound = "rpm"  # what sets the request pace now (see `_retune`)
        self._retune()

    def reserve_for(self, request: Request) -> int:
        """Tokens to reserve: the prompt estimate, corrected as replies come, plus the average completion.

        A reservation close to the real count keeps the token pace even: one that is 15% high spaces
        requests unevenly until each reply corrects it, and a sliding window refuses the bunched ones.
        """
        output = self._avg_completion if self._avg_completion is not None else request.est_output_tokens
        return round(request.est_prompt_tokens * self._prompt_ratio + output)

    async def acquire(self, request: Request) -> Ticket:
        """Wait until `request` may be sent; the ticket goes back through `on_success` or `on_failure`."""
        self.waiting += 1
        try:
            await self.breaker.admit()
            if self.adaptive is not None:
                await self.adaptive.acquire()
            try:
                await self.requests.take(1)
                tokens = self.reserve_for(request)
                if self.tokens is not None:
                    await self.tokens.take(tokens)
            except BaseException:
                if self.adaptive is not None:
                    self.adaptive.release()
                raise
        finally:
            self.waiting -= 1
        return Ticket(tokens, time.monotonic(), self.adaptive is not None, request.est_prompt_tokens)

    def on_success(self, ticket: Ticket, usage: Usage, rate: RateInfo) -> None:
        """A reply arrived: correct the token reservation, learn from it, heed its rate-limit headers."""
        self._release(ticket)
        if self.tokens is not None:
            self.tokens.give_back(ticket.tokens - (usage.total_tokens or ticket.tokens))
        if usage.completion_tokens is not None:
            self._avg_completion = _ema(self._avg_completion, usage.completion_tokens)
        if usage.total_tokens is not None:
            self._avg_total = _ema(self._avg_total, usage.total_tokens)
        if usage.prompt_tokens and ticket.est_prompt_tokens > 0:
            self._prompt_ratio = _ema(self._prompt_ratio, usage.prompt_tokens / ticket.est_prompt_tokens)
        self.breaker.success()
        self._bare_cooldown_s = None
        now = time.monotonic()
        changed = self.trim.on_success(ticket.sent_at)
        if self.adaptive is not None:
            changed |= self.adaptive.on_success(now, now - ticket.sent_at)
        changed |= self._heed(rate, now)
        if changed:
            self._retune()

    def on_failure(self, ticket: Ticket, exc: ProviderError, backoff_s: float) -> None:
        """An attempt failed: give the tokens back; a 429 cools the whole run down; 5xx feed the breaker.

        `backoff_s` is the first pause after a 429 without a retry-after while no pace is known.
        """
        self._release(ticket)
        if self.tokens is not None:
            self.tokens.give_back(ticket.tokens)
        if exc.error_type == "rate_limited":
            self._on_rate_limited(ticket, exc, backoff_s)
        elif exc.error_type in SERVER_SIDE:
            self.breaker.failure()

    def _on_rate_limited(self, ticket: Ticket, exc: ProviderError, backoff_s: float) -> None:
        now = time.monotonic()
        if ticket.sent_at < self._cool_started:
            return  # sent before the last cooldown began: it tells nothing that cooldown did not answer
        changed = self.trim.on_rate_limited(ticket.sent_at, now)
        if self.adaptive is not None:
            changed |= self.adaptive.on_rate_limited(ticket.sent_at, now)
        if changed:
            self._retune()  # first: a bare 429's pause is one interval of the new pace
        if exc.retry_after_s is not None:
            # The same cap as a row's own retry wait: an hour-long retry-after must not look like a hang.
            self.cool_down(min(exc.retry_after_s, RETRY_AFTER_CAP_S))
        else:
            # No word from the provider on how long: a pace's interval (a window a hair too full frees
            # within one), doubling while 429s keep coming (a window that is spent, e.g. a minute's).
            wait = self._interval_s() or backoff_s
            if self._bare_cooldown_s is not None:
                wait = self._bare_cooldown_s * 2
            self._bare_cooldown_s = min(wait, BARE_COOLDOWN_MAX_S)
            self.cool_down(self._bare_cooldown_s)

    def abandon(self, ticket: Ticket) -> None:
        """An attempt was cancelled (the run is stopping): give back what it took."""
        self._release(ticket)
        if self.tokens is not None:
            self.tokens.give_back(ticket.tokens)

    def cool_down(self, seconds: float) -> None:
        """Send nothing for `seconds` from now (a 429 slows the whole run, not one request)."""
        now = time.monotonic()
        until = now + seconds
        if until > self._cool_until:
            if self._cool_until <= now:
                self._cool_started = now
            self._cool_until = until
            self.requests.hold_until(until)
            if self.tokens is not None:
                self.tokens.hold_until(until)

    @property
    def cooldown_left_s(self) -> float:
        """Seconds left of the current cooldown (0 when none), for progress displays."""
        return max(0.0, self._cool_until - time.monotonic())

    @property
    def cooling_down(self) -> bool:
        """True while the run is paused after a rate limit."""
        return self._cool_until > time.monotonic()

    @property
    def header_pace_per_s(self) -> float | None:
        """The pace a provider's rate-limit headers set, while it holds; None otherwise."""
        if self._header_pace is None or time.monotonic() >= self._header_pace_until:
            return None
        return self._header_pace

    @property
    def pace_per_s(self) -> float | None:
        """Requests a second the run is paced at now; None when no pace applies."""
        rate = self.requests.rate_per_s
        return rate if math.isfinite(rate) else None

    @property
    def binding(self) -> str | None:
        """What holds requests back now, for the progress display; None when nothing in the limiter does.

        One of `outage` (the breaker's probes), `cooldown` (after a 429), `tpm` and `rpm` (the configured or
        announced paces), `headers` (a pace a spent window's headers set), `discovered pace` (learned from
        429s), `concurrency` (the adaptive window is full).
        """
        if self.breaker.is_open:
            return "outage"
        if self.cooling_down:
            return "cooldown"
        if self.tokens is not None and self.tokens.waiting:
            return "tpm"
        if self.requests.waiting:
            return self._requests_bound
        if self.adaptive is not None and self.adaptive.full:
            return "concurrency"
        return None

    def _interval_s(self) -> float | None:
        """The time between two requests of average size at the binding pace; None when nothing paces."""
        intervals = [1 / self.requests.rate_per_s]
        if self.tokens is not None:
            intervals.append(self._avg_total / self.tokens.rate_per_s)
        longest = max(intervals)
        return longest if longest > 0 else None

    def _release(self, ticket: Ticket) -> None:
        if ticket.slot and self.adaptive is not None:
            self.adaptive.release()

    def _retune(self) -> None:
        """Set both pacers' rates from what applies now (see the module docstring)."""
        factor = self.trim.factor
        paces = [(math.inf, "rpm")]
        if self._rpm_per_s is not None:
            paces.append((self._rpm_per_s * factor, "rpm"))
        if self.adaptive is not None and self.adaptive.rate_per_s is not None:
            paces.append((self.adaptive.rate_per_s, "discovered pace"))
        if self.header_pace_per_s is not None:
            paces.append((self.header_pace_per_s, "headers"))
        self.requests.rate_per_s, self._requests_bound = min(paces, key=lambda pace: pace[0])
        if self.tokens is not None and self._tpm_per_s is not None:
            self.tokens.rate_per_s = self._tpm_per_s * factor

    def _heed(self, rate: RateInfo, now: float) -> bool:
        """Learn announced limits; slow down before a long window runs out. True when a pace changed."""
        changed = False
        if self._learns:
            changed = self._adopt(rate)
        for limit in (rate.requests, rate.tokens):
            reset = limit.reset_s
            # A window of a second or less (a provider's per-second enforcement) reports "nothing left"
            # on most replies of a run at its limit, and refills within a pace interval or two: only the
            # pace and 429s speak for it. A long window that is spent or nearly spent is heeded.
            if reset is None or reset <= LONG_WINDOW_S:
                continue
            if limit.exhausted:
                self.cool_down(reset)  # no request can succeed before the reset
                continue
            left = limit.fraction_left
            if left is not None and left < LOW_WATER and limit.remaining:
                # Spread what is left over the time to the reset; for tokens, as requests of average size.
                per_request = 1.0 if limit is rate.requests else max(1.0, self._avg_total)
                self._header_pace = max(limit.remaining / per_request / reset, 0.1)
                self._header_pace_until = now + reset
                changed = True
        if self._header_pace is not None and now >= self._header_pace_until:
            self._header_pace = None
            changed = True
        return changed

    def _adopt(self, rate: RateInfo) -> bool:
        """Take the per-minute limits a provider announces as if the job had configured them."""
        changed = False
        if rate.requests.limit:
            per_s = rate.requests.limit / 60
            changed |= per_s != self._rpm_per_s
            self._rpm_per_s = per_s
        if rate.tokens.limit:
            per_s = rate.tokens.limit / 60
            if self.tokens is None:
                self.tokens = Pacer(per_s)
            changed |= per_s != self._tpm_per_s
            self._tpm_per_s = per_s
        return changed


def _ema(average: float | None, value: float) -> float:
    return value if average is None else average + EMA_WEIGHT * (value - average)
