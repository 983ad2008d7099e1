"""Leases: one rate limit shared by several processes (the Ray engine's workers), paced as evenly as one.

The run's schedule lives in one place, a `LeaseDesk` (in Ray, a named actor). It holds the run's one
`Limiter`, fed with what every worker's attempts taught (`Outcome`s: usage, rate-limit headers, 429s), so
configured and announced limits, trims after 429s, the pace learned when no limit is known and cooldowns
work there exactly as in a single process, for every worker at once.

A worker's `LeasedLimiter` (`batchrun.limits.leased`, the worker's side; here the desk and what travels
between them) is the same `Limiter` with its two `Pacer`s replaced by `LeasedPacer`s. Those have no schedule
of their own: they hold *spans* of the desk's, leased one at a time, and space their takes within a span at
the desk's rate, exactly as a `Pacer` does. The desk hands out consecutive stretches of its schedule
(`Pacer.lease`) and never the same stretch twice, so everything the workers send together follows the desk's
one schedule: as smooth as one process's, with no burst when a lease arrives (a span is a stretch of schedule
to fill at the rate, not a pile of tokens to spend).

A span is at most `LEASE_S` of schedule, sized to what the worker will send in it (the requests waiting on its
pacer, or its recent pace), so a worker that cannot fill its span does not waste the others' rate; it holds a
whole number of the worker's takes (a request; the tokens its latest request reserved), which fill it exactly.
A take of tokens that would end past its span by more than a little (`leased.OVERRUN`) would run into the
stretch leased next, to another worker (together they would burst): it waits for a span it fits in, which the
worker starts early by what was left of the first. What a take does run past a span's end (a little, or a take
larger than any span) moves the desk's schedule on. Tokens a reply did not use go back into the worker's span
at once, as on a `Pacer` (`LeasedPacer.give_back`); tokens it used beyond its reservation move the span's next
take on. A worker asks for its next span as it starts on its last one, so the next is there when this one
ends: one call per span, not per request. Its outcomes travel with that call (a 429 at once, not waiting for
the next span), and the answer carries the desk's cooldown, which holds the worker's pacers too.

With no pace at all (nothing configured, announced or learned yet), a span is `OPEN_S` of time in which
the worker sends as fast as its concurrency allows; its next call learns of any pace found meanwhile.

Times travel as wall-clock time (`Clock`): monotonic clocks do not agree across hosts.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import NamedTuple

from batchrun.errors import ErrorClass, ProviderError
from batchrun.limits.pacer import Pacer
from batchrun.limits.pacing import Limiter, Ticket
from batchrun.providers.headers import NO_RATE_INFO, RateInfo
from batchrun.records import Usage

LEASE_S = 0.1  # the longest span of the schedule one lease covers
OPEN_S = 0.5  # with no pace, the time one lease covers (a pace found meanwhile waits this long at most)
EPSILON = 1e-7  # seconds: a span's end reached by adding intervals up may fall short of it by rounding


class Clock:
    """This process's monotonic clock, and its translation to and from wall-clock time (the wire's)."""

    def now(self) -> float:
        """The monotonic time now."""
        return time.monotonic()

    def to_wall(self, moment: float) -> float:
        """A monotonic time as wall-clock time."""
        return moment + (time.time() - time.monotonic())

    def from_wall(self, moment: float) -> float:
        """A wall-clock time as a monotonic time."""
        return moment - (time.time() - time.monotonic())


CLOCK = Clock()


@dataclass(frozen=True, slots=True)
class Span:
    """A stretch [start, end) of the desk's schedule, taken at `rate_per_s` (math.inf: any number)."""

    start: float
    end: float
    rate_per_s: float


class Outcome(NamedTuple):
    """What one attempt taught, for the desk: a success (`usage`), a failure (`error_type`), or neither
    (abandoned: the run is stopping). Times are wall-clock.

    A named tuple, and its usage a plain tuple (`Usage`'s fields in order): every answer sends one to the
    desk, and tuples pickle in C where dataclasses pickle a field at a time (measured: most of a worker's
    cost of leasing).
    """

    sent_at: float
    tokens: int
    est_prompt_tokens: int
    usage: tuple[int | None, int | None, int | None, int | None, int | None] | None = None
    rate: RateInfo | None = None  # None: the reply announced nothing
    error_type: str | None = None
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class Ask:
    """A worker's call on the desk: the units it wants of each pace (0: none now), and its outcomes."""

    requests: float
    tokens: float
    outcomes: tuple[Outcome, ...] = ()
    overdrawn: tuple[float, float] = (0.0, 0.0)  # units of each pace taken past the ends of spans
    token_take: float = 0.0  # the worker's take of tokens now: its span holds a whole number of them


@dataclass(frozen=True, slots=True)
class Grant:
    """The desk's answer: a span of each pace asked for, its cooldown, its pace now.

    The spans' times and the cooldown are seconds from `at`, the wall-clock time the desk answered: as
    floats near 1.7e9, wall-clock times are good to a fraction of a microsecond, too coarse to say which
    of two takes ends a span; offsets keep a span's length exact.
    """

    at: float
    requests: Span | None
    tokens: Span | None
    hold_s: float
    pace_per_s: float | None


class LeaseDesk:
    """The run's one schedule, leased to its workers in spans (see the module docstring)."""

    def __init__(self, limiter: Limiter, backoff_s: float, clock: Clock = CLOCK) -> None:
        self.limiter = limiter
        self.backoff_s = backoff_s  # the first pause after a bare 429 while no pace is known
        self.clock = clock

    def lease(self, ask: Ask) -> Grant:
        """Learn from the outcomes, then grant the spans asked for."""
        for outcome in ask.outcomes:
            self._learn(outcome)
        limiter, clock = self.limiter, self.clock
        now = clock.now()
        over_requests, over_tokens = ask.overdrawn
        limiter.requests.give_back(-over_requests)  # what a worker took past its spans moves the schedule on
        if limiter.tokens is not None:
            limiter.tokens.give_back(-over_tokens)
        tokens = None
        if ask.tokens > 0:
            if limiter.tokens is None:  # no token limit: a stretch of time without one
                tokens = Span(0.0, OPEN_S, math.inf)
            else:
                tokens = self._grant(limiter.tokens, ask.tokens, now, ask.token_take)
        requests = None
        if ask.requests > 0:
            requests = self._grant(limiter.requests, ask.requests, now, 1.0)
        return Grant(clock.to_wall(now), requests, tokens, limiter.cooldown_left_s, limiter.pace_per_s)

    def _grant(self, pacer: Pacer, amount: float, now: float, take: float) -> Span:
        """A span of `pacer`'s schedule for `amount`, in seconds from `now`: at most `LEASE_S` of it, and a
        whole number of `take`s (at least one; 0: any amount), which takes of that size fill exactly; with
        no pace, `OPEN_S` of time."""
        rate = pacer.rate_per_s
        if math.isinf(rate):
            start = pacer.lease(0, now) - now  # after a cooldown's hold, if one is on
            return Span(start, start + OPEN_S, rate)
        amount = min(amount, rate * LEASE_S)
        if take > 0:
            amount = max(1.0, math.floor(amount / take + EPSILON)) * take
        start = pacer.lease(amount, now) - now
        return Span(start, start + amount / rate, rate)

    def _learn(self, outcome: Outcome) -> None:
        """Feed one outcome to the limiter, as the worker's own attempt would have in one process.

        Tokens reserved and not used (or used beyond the reservation) are not given back here: the worker
        did that in its own span at once (`LeasedPacer.give_back`).
        """
        limiter = self.limiter
        sent_at = self.clock.from_wall(outcome.sent_at)
        usage = outcome.usage
        # A ticket holding what was used, or nothing for a failure: the limiter then gives nothing back.
        held = 0 if usage is None else (outcome.tokens if usage[4] is None else usage[4])
        ticket = Ticket(held, sent_at, slot=False, est_prompt_tokens=outcome.est_prompt_tokens)
        if usage is not None:
            limiter.on_success(ticket, Usage(*usage), outcome.rate or NO_RATE_INFO)
        elif outcome.error_type is not None:
            exc = ProviderError(
                "reported by a worker",
                error_type=outcome.error_type,
                error_class=ErrorClass.RETRY,
                retry_after_s=outcome.retry_after_s,
            )
            limiter.on_failure(ticket, exc, self.backoff_s)
        else:
            limiter.abandon(ticket)
