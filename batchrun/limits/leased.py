"""A worker's side of the leases (`batchrun.limits.leases`): its pacers over spans of the desk's schedule,
the calls on the desk that keep them supplied, and the `Limiter` that uses them."""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Awaitable, Callable

import anyio

from batchrun.errors import ProviderError
from batchrun.limits.leases import (
    CLOCK,
    EPSILON,
    LEASE_S,
    OPEN_S,
    Ask,
    Clock,
    Grant,
    Outcome,
    Span,
)
from batchrun.limits.pacer import Pacer
from batchrun.limits.pacing import Limiter, Ticket
from batchrun.providers.headers import NO_RATE_INFO, RateInfo
from batchrun.records import Usage

REPORT_BATCH = 1_000  # outcomes held before they are sent without waiting for the next lease
CLOCK_SLACK = 1e-3  # seconds: how far two leases' times may disagree from their translation alone
SPEED_WEIGHT = 0.3  # how fast a worker's measured pace follows new leases
OVERRUN = 0.05  # the share of a take that may run past its span's end (its reservation grew since)


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
