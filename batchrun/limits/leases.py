"""Leases: one rate limit shared by several processes (the Ray engine's workers), paced as evenly as one.

The run's schedule lives in one place, a `LeaseDesk` (in Ray, a named actor). It holds the run's one
`Limiter`, fed with what every worker's attempts taught (`Outcome`s: usage, rate-limit headers, 429s), so
configured and announced limits, trims after 429s, the pace learned when no limit is known and cooldowns
work there exactly as in a single process, for every worker at once.

A worker's `LeasedLimiter` is the same `Limiter` with its two `Pacer`s replaced by `LeasedPacer`s. Those have
no schedule of their own: they hold *spans* of the desk's, leased one at a time, and space their takes
within a span at the desk's rate, exactly as a `Pacer` does. The desk hands out consecutive stretches of
its schedule (`Pacer.lease`) and never the same stretch twice, so everything the workers send together
follows the desk's one schedule: as smooth as one process's, with no burst when a lease arrives (a span is
a stretch of schedule to fill at the rate, not a pile of tokens to spend).

A span is at most `LEASE_S` of schedule, sized to what the worker will send in it (the requests waiting on
its pacer, or its recent pace), so a worker that cannot fill its span does not waste the others' rate; it
holds a whole number of the worker's takes (a request; the tokens its latest request reserved), which fill
it exactly. A take of tokens that would end past its span by more than a little (`OVERRUN`) would run into
the stretch leased next, to another worker (together they would burst): it waits for a span it fits in,
which the worker starts early by what was left of the first. What a take does run past a span's end (a
little, or a take larger than any span) moves the desk's schedule on. Tokens a reply did not use go back
into the worker's span at once, as on a `Pacer` (`LeasedPacer.give_back`); tokens it used beyond its
reservation move the span's next take on. A worker asks for its next span as it starts on its last one, so
the next is there when this one ends: one call per span, not per request. Its outcomes travel with that
call (a 429 at once, not waiting for the next span), and the answer carries the desk's cooldown, which
holds the worker's pacers too.

With no pace at all (nothing configured, announced or learned yet), a span is `OPEN_S` of time in which
the worker sends as fast as its concurrency allows; its next call learns of any pace found meanwhile.

Times travel as wall-clock time (`Clock`): monotonic clocks do not agree across hosts.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple

import anyio

from batchrun.errors import ErrorClass, ProviderError
from batchrun.limits.pacer import Pacer
from batchrun.limits.pacing import Limiter, Ticket
from batchrun.providers.headers import NO_RATE_INFO, RateInfo
from batchrun.records import Usage

LEASE_S = 0.1  # the longest span of the schedule one lease covers
OPEN_S = 0.5  # with no pace, the time one lease covers (a pace found meanwhile waits this long at most)
REPORT_BATCH = 1_000  # outcomes held before they are sent without waiting for the next lease
EPSILON = 1e-7  # seconds: a span's end reached by adding intervals up may fall short of it by rounding
CLOCK_SLACK = 1e-3  # seconds: how far two leases' times may disagree from their translation alone
SPEED_WEIGHT = 0.3  # how fast a worker's measured pace follows new leases
OVERRUN = 0.05  # the share of a take that may run past its span's end (its reservation grew since)


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


class LeasedPacer(Pacer):
    """A `Pacer` over spans of the desk's schedule instead of a schedule of its own.

    Within a span it spaces takes at the span's rate as a `Pacer` does (a late waiter caught up by one
    interval, idle time never banked); a span used up or past is dropped for the next. With none left, a take
    waits for the next lease. `want` is called whenever it starts on the last span it holds, or holds none.
    Its rate is the span's: the worker's own `Limiter` setting it is ignored. What the worker's `Limiter`
    gives back goes into the span in use (`give_back`).
    """

    def __init__(self, want: Callable[[], None]) -> None:
        self._want = want
        self._span: Span | None = None
        self._spans: collections.deque[Span] = collections.deque()
        self._arrived: anyio.Event | None = None
        self.taken = 0.0  # units taken so far ...
        self.takes = 0  # ... in this many takes
        self.speed = 0.0  # units a second lately (`measure`)
        self.overdrawn = 0.0  # units taken past the ends of spans (less those left), not told the desk yet
        self.least = 0.0  # the next span must hold this much: a take that did not fit in the last one
        self.carried = 0.0  # units left in the last span that no take fitted: the next one begins early
        self.last_take = 0.0  # the size of the latest take: spans are leased in whole takes of it
        self._measured = 0.0  # units taken at the last measure
        super().__init__()

    @property
    def rate_per_s(self) -> float:
        """The rate of the span in use (math.inf when none)."""
        return self._span.rate_per_s if self._span is not None else math.inf

    @rate_per_s.setter
    def rate_per_s(self, _: float) -> None:
        """Ignored: the rate is the desk's."""

    @property
    def held(self) -> int:
        """Spans held after the one in use."""
        return len(self._spans)

    @property
    def last_end(self) -> float:
        """The end of the last span held (-math.inf: none)."""
        last = self._spans[-1] if self._spans else self._span
        return last.end if last is not None else -math.inf

    def measure(self, elapsed_s: float) -> None:
        """Follow the pace of takes over the last `elapsed_s` seconds (`speed`)."""
        if elapsed_s > 0:
            speed = (self.taken - self._measured) / elapsed_s
            self.speed += SPEED_WEIGHT * (speed - self.speed)
            self._measured = self.taken

    def add(self, span: Span) -> None:
        """Hold a span leased from the desk (local times), after those held already."""
        self._spans.append(span)
        if self._arrived is not None:
            self._arrived.set()

    def reserve(self, amount: float, now: float) -> float:
        """Take `amount` within a span if its turn has come: 0.0; else the seconds to its turn, or math.inf
        when no span is held (a lease is asked for)."""
        while True:
            span = self._span
            if span is None:
                if not self._spans:
                    self._want()
                    return math.inf
                span = self._span = self._spans.popleft()
                # Spans back to back in the desk's schedule may reach here overlapping by microseconds: each
                # lease's times are translated from wall-clock time on their own. Carried over, that overlap
                # pushed the span's last take past its end, and the unit was lost (5% of a 2-worker limit).
                if self._next <= span.start + CLOCK_SLACK:
                    self._next = max(span.start - self.carried / span.rate_per_s, self._held_until)
                self.carried = 0.0
                if not self._spans:
                    self._want()  # starting on the last span held: the next is asked for now
            self.last_take = amount
            interval = amount / span.rate_per_s
            start = max(self._next, now - interval)
            if start >= span.end - EPSILON:  # adding intervals up leaves 0.9999999 where 1 was meant
                self._span = None  # used up, or past
                continue
            if start + interval > span.end + max(EPSILON, OVERRUN * interval) and interval <= LEASE_S:
                # It would run into the next stretch of the desk's schedule, leased to another worker by
                # now: together they would send more than the rate in that moment (a strict window's 429).
                # It waits for a span it fits in (asked that large), and the rest of this one is carried
                # into that span (given back to the desk, it came back overlapping the stretch leased
                # last: lost, when that was this worker's too).
                self.carried = (span.end - start) * span.rate_per_s
                self.least = max(self.least, amount)
                self._span = None
                continue
            self.least = 0.0
            if start > now:
                return start - now
            self._next = start + interval
            if self._next > span.end + EPSILON:  # a take started in the span may end past it: told the desk
                self.overdrawn += (self._next - span.end) * span.rate_per_s
            self.taken += amount
            self.takes += 1
            return 0.0

    async def take(self, amount: float = 1.0) -> None:
        """Wait for this take's turn within a leased span (for a lease, when none is held)."""
        if not self._lock.locked() and self.reserve(amount, time.monotonic()) == 0.0:
            return
        async with self._lock:
            # Not a polling loop: each wait lasts to the turn, or to the next lease.
            while (wait := self.reserve(amount, time.monotonic())) > 0:
                if math.isinf(wait):
                    arrived = self._arrived = anyio.Event()
                    await arrived.wait()
                else:
                    await anyio.sleep(wait)

    def give_back(self, amount: float) -> None:
        """Return units taken but not used (or take more, with a negative amount) in the span in use, as a
        `Pacer` does on its schedule: at once, where the worker's next takes see it.

        The schedule moves back to one take before the span's start at most (before it, the stretch is
        another worker's: as a `Pacer` catches a late take up by one interval, each worker's make-up
        bunches one take at most, so the run's up to one a worker), and never before a hold's end; the
        rest is dropped, as a `Pacer` drops what it cannot catch up on. Given to the desk,
        whose schedule is leased a few spans ahead, it came back that much later, where it bunched with
        what was sent on time (a sliding window's 429s, and trims that cost more than it gave back). What
        is taken past the span's end goes to the desk (`overdrawn`), which moves its schedule on.
        """
        span = self._span
        if span is None or math.isinf(span.rate_per_s) or self._next > span.end:  # none, or held past it
            self.overdrawn -= min(amount, 0.0)  # units given back are dropped; units used beyond, told
            return
        moved = self._next - amount / span.rate_per_s
        # No later than it is, either: a carry may have moved it further back than one take.
        lowest = max(min(self._next, span.start - self.last_take / span.rate_per_s), self._held_until)
        self._next = min(max(moved, lowest), span.end)
        self.overdrawn += max(moved - self._next, 0.0) * span.rate_per_s


class LeaseClient:
    """A worker's side of the leases: asks the desk for spans as its pacers need them, and reports outcomes.

    `serve` runs for the worker's life; `ask` is the call on the desk (a Ray actor method, or in tests the
    desk itself).
    """

    def __init__(self, ask: Callable[[Ask], Awaitable[Grant]], clock: Clock = CLOCK) -> None:
        self._ask = ask
        self.clock = clock
        self.requests = LeasedPacer(self._need)
        self.tokens = LeasedPacer(self._need)
        self.waiting: Callable[[], int] = lambda: 0  # requests waiting on the limiter (its `waiting`)
        self.pace_per_s: float | None = None  # the desk's request pace at the last lease
        self._outcomes: list[Outcome] = []
        self._asked = False
        self._wake: anyio.Event | None = None
        self._measured_at = clock.now()

    def report(self, outcome: Outcome, *, urgent: bool = False) -> None:
        """Keep an outcome for the next call; `urgent` (a 429) or many kept: call now."""
        self._outcomes.append(outcome)
        if urgent or len(self._outcomes) >= REPORT_BATCH:
            self._need()

    def _need(self) -> None:
        self._asked = True
        if self._wake is not None:
            self._wake.set()

    async def serve(self) -> None:
        """Call the desk whenever a pacer needs a span or outcomes must go; until cancelled."""
        while True:
            if not self._asked:
                wake = self._wake = anyio.Event()
                await wake.wait()
            await self.exchange()

    @property
    def wanted(self) -> bool:
        """True when a call on the desk is due (a pacer needs a span, or outcomes must go)."""
        return self._asked

    async def exchange(self) -> None:
        """One call on the desk: the outcomes kept, a span for each pacer that holds none ahead."""
        grant = await self._ask(self.next_ask())
        self.adopt(grant)

    def next_ask(self) -> Ask:
        """The next call's content; the outcomes in it are no longer kept here."""
        self._asked = False
        requests, tokens = self._wants()
        outcomes, self._outcomes = tuple(self._outcomes), []
        overdrawn = (self.requests.overdrawn, self.tokens.overdrawn)
        self.requests.overdrawn = self.tokens.overdrawn = 0.0
        return Ask(requests, tokens, outcomes, overdrawn, self.tokens.least or self.tokens.last_take)

    def _wants(self) -> tuple[float, float]:
        """Units of each pace to ask for: none while a span waits its turn; else what the worker will send
        in one: the requests waiting now, or its recent pace, whichever is more."""
        now = self.clock.now()
        for pacer in (self.requests, self.tokens):
            pacer.measure(now - self._measured_at)
        self._measured_at = now
        waiting = max(1, self.waiting())
        wants = []
        for pacer in (self.requests, self.tokens):
            if pacer.held:
                wants.append(0.0)
                continue
            per_take = pacer.taken / pacer.takes if pacer.takes else 1.0
            wants.append(max(waiting * per_take, pacer.speed * LEASE_S, per_take, pacer.least))
        return wants[0], wants[1]

    def adopt(self, grant: Grant) -> None:
        """Hold the spans the desk granted (in local time) and its cooldown."""
        at = self.clock.from_wall(grant.at)
        for pacer, span in ((self.requests, grant.requests), (self.tokens, grant.tokens)):
            if span is None:
                continue
            start, end = at + span.start, at + span.end
            if math.isinf(span.rate_per_s):
                # No pace: a stretch of time no other worker is denied, so it may follow the last one held
                # (one asked for while the last began would end with it) and outlast a slow answer.
                start = max(start, pacer.last_end)
                end = max(end, start + OPEN_S, self.clock.now() + OPEN_S)
            pacer.add(Span(start, end, span.rate_per_s))
        if grant.hold_s > 0:
            self.requests.hold_until(at + grant.hold_s)
            self.tokens.hold_until(at + grant.hold_s)
        self.pace_per_s = grant.pace_per_s


class LeasedLimiter(Limiter):
    """A worker's `Limiter`: its pacers are leased from the desk, and what its attempts teach goes there too.

    Everything else is the local limiter's: its outage breaker and (with no limit known) its concurrency
    window are the worker's own, and its cooldowns hold its own pacers at once, before the desk's answer
    holds every worker's.
    """

    def __init__(
        self,
        client: LeaseClient,
        *,
        concurrency: int,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        adaptive: bool = True,
    ) -> None:
        super().__init__(
            concurrency=concurrency,
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
            adaptive=adaptive,
        )
        self.client = client
        self.requests = client.requests
        self.tokens = client.tokens
        client.waiting = lambda: self.waiting

    def on_success(self, ticket: Ticket, usage: Usage, rate: RateInfo) -> None:
        """The local limiter learns; the desk learns with the next call."""
        super().on_success(ticket, usage, rate)
        announced = None if rate == NO_RATE_INFO else rate
        used = (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.reasoning_tokens)
        self.client.report(self._outcome(ticket, usage=(*used, usage.total_tokens), rate=announced))

    def on_failure(self, ticket: Ticket, exc: ProviderError, backoff_s: float) -> None:
        """The local limiter learns; a 429 goes to the desk at once (it slows every worker)."""
        super().on_failure(ticket, exc, backoff_s)
        outcome = self._outcome(ticket, error_type=exc.error_type, retry_after_s=exc.retry_after_s)
        self.client.report(outcome, urgent=exc.error_type == "rate_limited")

    def abandon(self, ticket: Ticket) -> None:
        """An attempt was cancelled: the desk gives its tokens back too."""
        super().abandon(ticket)
        self.client.report(self._outcome(ticket))

    def _outcome(
        self,
        ticket: Ticket,
        *,
        usage: tuple[int | None, int | None, int | None, int | None, int | None] | None = None,
        rate: RateInfo | None = None,
        error_type: str | None = None,
        retry_after_s: float | None = None,
    ) -> Outcome:
        sent_at = self.client.clock.to_wall(ticket.sent_at)
        return Outcome(
            sent_at, ticket.tokens, ticket.est_prompt_tokens, usage, rate, error_type, retry_after_s
        )
