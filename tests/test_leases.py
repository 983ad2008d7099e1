"""Leases: several workers' pacers share the desk's one schedule (the Ray engine's global rate limit)."""

from __future__ import annotations

import itertools
import math
import time

import anyio
import pytest

from batchrun.errors import ErrorClass, ProviderError
from batchrun.limits.leased import LeaseClient, LeasedLimiter, LeasedPacer
from batchrun.limits.leases import LEASE_S, OPEN_S, Ask, Clock, Grant, LeaseDesk, Outcome, Span
from batchrun.limits.pacer import Pacer
from batchrun.limits.pacing import Limiter, Ticket
from batchrun.providers.headers import NO_RATE_INFO
from batchrun.records import Usage


class FakeClock(Clock):
    """A clock that moves only when told to, and whose wall time is its monotonic time."""

    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        """The time set."""
        return self.t

    def to_wall(self, moment: float) -> float:
        """The same time."""
        return moment

    def from_wall(self, moment: float) -> float:
        """The same time."""
        return moment


async def never(_: Ask) -> Grant:
    """A desk that is never called."""
    raise AssertionError("the desk was called")


def simulate(
    desk: LeaseDesk, clients: list[LeaseClient], clock: FakeClock, sends: int
) -> list[tuple[float, int]]:
    """Every worker always has a request waiting: who sends when, as the shared schedule lets them.

    A lease is answered at once (a call that takes no time); time jumps to the next turn.
    """
    sent: list[tuple[float, int]] = []
    while len(sent) < sends:
        waits = []
        for worker, client in enumerate(clients):
            while True:
                wait = client.requests.reserve(1, clock.t)
                if not client.wanted:
                    break
                client.adopt(desk.lease(client.next_ask()))
                if wait == 0:
                    break  # it went; the lease was for its next span
            if wait == 0:
                sent.append((clock.t, worker))
            waits.append(wait)
        if 0 not in waits:
            clock.t += min(waits)
    return sent


@pytest.mark.parametrize(("workers", "per_s"), [(2, 50.0), (4, 50.0), (2, 15.0), (4, 12.5)])
def test_workers_sharing_the_desk_send_on_one_even_schedule(workers: int, per_s: float) -> None:
    """Together the workers send exactly as one pacer would: evenly spaced at the rate, each its share."""
    clock = FakeClock()
    desk = LeaseDesk(Limiter(concurrency=64, requests_per_minute=per_s * 60), backoff_s=0.1, clock=clock)
    clients = [LeaseClient(never, clock) for _ in range(workers)]
    for client in clients:
        client.waiting = lambda: 8
    sent = simulate(desk, clients, clock, 500)
    times = sorted(t for t, _ in sent)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 1 / per_s - 1e-9  # never two closer than the pace: no burst when a lease arrives
    assert times[-1] - times[0] == pytest.approx(499 / per_s, rel=0.01)  # and no time lost between leases
    per_worker = [sum(1 for _, w in sent if w == worker) for worker in range(workers)]
    assert min(per_worker) > 500 / workers / 2


def test_a_lease_is_one_call_for_many_requests() -> None:
    """A worker with requests waiting leases a span's worth at a time, not one request per call."""
    clock = FakeClock()
    desk = LeaseDesk(Limiter(concurrency=64, requests_per_minute=6000), backoff_s=0.1, clock=clock)
    client = LeaseClient(never, clock)
    client.waiting = lambda: 64
    asks = sent = 0
    while sent < 100:
        sent += client.requests.reserve(1, clock.t) == 0
        if client.wanted:
            asks += 1
            client.adopt(desk.lease(client.next_ask()))
        clock.t += 0.001
    assert asks <= 100 / (100 * LEASE_S) + 2  # 100 requests a second: a span holds 10


def test_a_429_reported_by_one_worker_holds_the_next_span_of_every_worker() -> None:
    """The desk learns the 429 (its cooldown) and the next span it leases, to anyone, starts after it.

    (Whether a 429 trims the pace is the desk's Limiter's own rule, tested in test_limits.)"""
    desk = LeaseDesk(Limiter(concurrency=8, requests_per_minute=600), backoff_s=0.1)
    first = desk.lease(Ask(1, 0))
    assert first.requests is not None
    refused = Outcome(time.time(), 0, 10, error_type="rate_limited", retry_after_s=0.5)
    grant = desk.lease(Ask(1, 0, (refused,)))
    assert grant.requests is not None
    assert grant.hold_s >= 0.4
    assert grant.requests.start >= grant.hold_s - 0.01
    assert desk.limiter.cooling_down


def test_a_worker_holds_its_pacers_for_the_desks_cooldown() -> None:
    """A grant whose cooldown lies ahead holds the worker's spans until it ends."""
    clock = FakeClock()
    client = LeaseClient(never, clock)
    client.adopt(Grant(clock.t, Span(0, 1, 10.0), None, hold_s=0.5, pace_per_s=10.0))
    assert client.requests.reserve(1, clock.t) == pytest.approx(0.5)


def test_without_a_pace_a_span_is_time_for_any_number_of_requests() -> None:
    """No pace known: a lease is a stretch of time in which the worker sends as fast as it can."""
    clock = FakeClock()
    desk = LeaseDesk(Limiter(concurrency=8), backoff_s=0.1, clock=clock)
    grant = desk.lease(Ask(1, 1))
    assert grant.requests is not None
    assert math.isinf(grant.requests.rate_per_s)
    client = LeaseClient(never, clock)
    client.adopt(grant)
    assert all(client.requests.reserve(1, clock.t) == 0 for _ in range(1000))
    assert client.requests.reserve(1, clock.t + OPEN_S) == math.inf  # past its end: the next lease


def test_the_desk_leaves_the_correction_of_a_reservation_to_the_worker() -> None:
    """A reported reply moves the shared schedule by nothing: its worker gave back what it did not use in
    its own span at once, and sent the desk only what that span could not hold (`overdrawn`)."""
    clock = FakeClock()
    desk = LeaseDesk(Limiter(concurrency=8, tokens_per_minute=60_000), backoff_s=0.1, clock=clock)
    spans = [desk.lease(Ask(0, 500)).tokens for _ in range(5)]  # half a second of the schedule ahead
    assert all(span is not None and span.end - span.start == pytest.approx(LEASE_S) for span in spans)
    last = spans[-1]
    assert last is not None
    used = Outcome(clock.t, 500, 400, usage=(90, 10, None, None, 100))
    after = desk.lease(Ask(0, 100, (used,), overdrawn=(0.0, -150))).tokens
    assert after is not None
    assert after.start == pytest.approx(last.end - 150 / 1000)  # 1,000 tokens a second


def test_tokens_a_reply_did_not_use_go_back_into_the_workers_span_at_once() -> None:
    """As in one process, a reservation's unused tokens are there for the worker's next take: the span it
    is in takes them back, so the correction does not wait for the desk (whose schedule is leased ahead:
    given back there, it came a span or more late, where it bunched with what was sent on time)."""
    clock = FakeClock()
    desk = LeaseDesk(Limiter(concurrency=8, tokens_per_minute=60_000), backoff_s=0.1, clock=clock)
    client = LeaseClient(never, clock)
    client.adopt(desk.lease(Ask(0, 100)))  # 100 tokens: 0.1 s of the schedule, 1,000 tokens a second
    pacer = client.tokens
    assert pacer.reserve(60, clock.t) == 0
    pacer.give_back(30)  # the reply used 30 of its 60
    clock.t += 0.03
    assert pacer.reserve(60, clock.t) == 0  # 40 left in the span, and the 30 given back
    assert client.next_ask().overdrawn == (0.0, 0.0)


def test_a_span_takes_back_to_one_take_before_its_start_and_the_desk_hears_of_overuse() -> None:
    """Tokens given back move the worker's schedule back to one take before its span at most (before it,
    the stretch is another worker's: as a `Pacer` catches a late take up by one interval, the make-up
    bunches one take at most); the rest is dropped, as a `Pacer` drops what it cannot catch up on (given
    to the desk, it came back a lead later and bunched with what was sent on time). A reply that used more
    than it reserved moves the take past the span's end by what is left over, and that the desk is told."""
    clock = FakeClock()
    desk = LeaseDesk(Limiter(concurrency=8, tokens_per_minute=60_000), backoff_s=0.1, clock=clock)
    client = LeaseClient(never, clock)
    client.adopt(desk.lease(Ask(0, 100)))  # 100 tokens: 0.1 s, 1,000 tokens a second
    pacer = client.tokens
    assert pacer.reserve(60, clock.t) == 0
    pacer.give_back(200)  # 120 go back: to one take (60) before the span's start; 80 are dropped
    assert client.next_ask().overdrawn == (0.0, 0.0)
    assert [pacer.reserve(60, clock.t) for _ in range(2)] == [0, 0]  # so two more go now
    assert math.isinf(pacer.reserve(60, clock.t))  # and 40 are left: carried into the next span
    assert pacer.carried == pytest.approx(40)

    desk = LeaseDesk(Limiter(concurrency=8, tokens_per_minute=60_000), backoff_s=0.1, clock=clock)
    other = LeaseClient(never, clock)
    other.adopt(desk.lease(Ask(0, 100)))
    assert other.tokens.reserve(60, clock.t) == 0
    other.tokens.give_back(-70)  # it used 130: 40 more fill the span, 30 go past its end
    assert other.next_ask().overdrawn == (0.0, pytest.approx(30))
    assert math.isinf(other.tokens.reserve(1, clock.t))  # the span is full: the next lease


def test_a_token_span_holds_a_whole_number_of_the_workers_takes() -> None:
    """Sized in whole takes, a span is filled exactly: no part of it is left that no take fits, to go back
    to the desk and come back later where it bunches with what was sent on time."""
    clock = FakeClock()
    desk = LeaseDesk(Limiter(concurrency=8, tokens_per_minute=60_000), backoff_s=0.1, clock=clock)
    span = desk.lease(Ask(0, 1000, token_take=30)).tokens  # at most 100 tokens (LEASE_S): three takes
    assert span is not None
    assert span.end - span.start == pytest.approx(0.09)
    big = desk.lease(Ask(0, 10, token_take=250)).tokens  # one take larger than LEASE_S holds: one take
    assert big is not None
    assert big.end - big.start == pytest.approx(0.25)
    client = LeaseClient(never, clock)
    assert client.next_ask().token_take == 0.0  # nothing taken yet: any amount
    clock.t += 0.34  # the two spans above have passed
    client.adopt(desk.lease(Ask(0, 1000, token_take=30)))
    assert client.tokens.reserve(30, clock.t) == 0
    assert client.next_ask().token_take == 30


def test_a_span_that_eleven_takes_fill_holds_eleven() -> None:
    """100 / (100 / 11) is 10.999999999999998 in floats: rounding must not cost a take."""
    clock = FakeClock()
    desk = LeaseDesk(Limiter(concurrency=8, tokens_per_minute=60_000), backoff_s=0.1, clock=clock)
    span = desk.lease(Ask(0, 1000, token_take=100 / 11)).tokens
    assert span is not None
    assert span.end - span.start == pytest.approx(LEASE_S)


def test_a_take_that_did_not_fit_sizes_the_next_span() -> None:
    """The next span is leased in whole takes of the one that waits, not of the last that went."""
    clock = FakeClock()
    desk = LeaseDesk(Limiter(concurrency=8, tokens_per_minute=60_000), backoff_s=0.1, clock=clock)
    client = LeaseClient(never, clock)
    client.adopt(desk.lease(Ask(0, 100)))
    assert client.tokens.reserve(30, clock.t) == 0
    assert math.isinf(client.tokens.reserve(80, clock.t))  # 70 left: it waits
    client.tokens.reserve(20, clock.t)  # a smaller take comes by meanwhile
    assert client.next_ask().token_take == 80


def test_a_span_used_up_leaves_nothing_to_carry() -> None:
    """Only room a take did not fit is carried: after a span filled exactly, the next starts on time."""
    clock = FakeClock()
    desk = LeaseDesk(Limiter(concurrency=8, tokens_per_minute=60_000), backoff_s=0.1, clock=clock)
    client = LeaseClient(never, clock)
    pacer = client.tokens
    client.adopt(desk.lease(Ask(0, 120, token_take=60)))  # [0, 0.06): 100 tokens at most hold one take
    assert pacer.reserve(60, clock.t) == 0
    assert math.isinf(pacer.reserve(60, clock.t + 0.06))  # used up
    assert pacer.carried == 0
    clock.t += 0.5
    client.adopt(desk.lease(Ask(0, 60, token_take=60)))  # [0.5, 0.56)
    assert pacer.reserve(60, clock.t - 0.01) == pytest.approx(0.01)  # at its start, not before


def test_a_give_back_never_moves_a_workers_schedule_later_nor_into_a_hold() -> None:
    """A give-back moves the schedule back or leaves it; a cooldown holds whatever replies give back."""
    clock = FakeClock()
    desk = LeaseDesk(Limiter(concurrency=8, tokens_per_minute=60_000), backoff_s=0.1, clock=clock)
    client = LeaseClient(never, clock)
    pacer = client.tokens
    client.adopt(desk.lease(Ask(0, 100)))  # [0, 0.1)
    assert pacer.reserve(60, clock.t) == 0
    assert math.isinf(pacer.reserve(60, clock.t))  # 40 carried
    client.adopt(desk.lease(Ask(0, 100, token_take=10)))  # [0.1, 0.2): starts 40 early, at 0.06
    assert pacer.reserve(10, clock.t + 0.06) == 0  # a take of 10, the latest: one take is 0.01 s
    pacer.give_back(1)  # already more than one take (10) before the span: it stays where it is
    assert pacer.reserve(10, clock.t + 0.07) == 0  # at 0.07, not pulled on to 0.09
    pacer.hold_until(clock.t + 0.15)  # a 429 elsewhere
    pacer.give_back(500)
    assert pacer.reserve(10, clock.t + 0.1) == pytest.approx(0.05)


def test_a_give_back_never_moves_a_pacer_into_a_hold() -> None:
    """One process's pacer too: a reply that arrives during a cooldown does not let a take through it."""
    pacer = Pacer(100.0)
    assert pacer.reserve(1, 10.0) == 0
    pacer.hold_until(11.0)
    pacer.give_back(50)
    assert pacer.reserve(1, 10.5) == pytest.approx(0.5)


def test_past_the_end_of_a_hold_or_without_a_token_limit_only_overuse_is_told() -> None:
    """Where the span cannot take a give-back (a hold reaching past its end, no token limit), tokens given
    back are dropped and tokens used beyond the reservation still reach the desk."""
    clock = FakeClock()
    desk = LeaseDesk(Limiter(concurrency=8, tokens_per_minute=60_000), backoff_s=0.1, clock=clock)
    client = LeaseClient(never, clock)
    client.adopt(desk.lease(Ask(0, 100)))
    assert client.tokens.reserve(60, clock.t) == 0
    client.tokens.hold_until(clock.t + 1)
    client.tokens.give_back(30)
    client.tokens.give_back(-20)
    assert client.next_ask().overdrawn == (0.0, pytest.approx(20))
    unlimited = LeaseClient(never, clock)
    unlimited.adopt(LeaseDesk(Limiter(concurrency=8), backoff_s=0.1, clock=clock).lease(Ask(0, 100)))
    assert unlimited.tokens.reserve(60, clock.t) == 0
    unlimited.tokens.give_back(30)
    unlimited.tokens.give_back(-20)
    assert unlimited.next_ask().overdrawn == (0.0, pytest.approx(20))


def test_a_take_grown_a_little_since_its_span_was_sized_still_goes() -> None:
    """A reservation a little larger than the takes the span was sized for (the estimate moved) runs past
    its end by that little, told to the desk, rather than leave the whole take's room unused."""
    clock = FakeClock()
    desk = LeaseDesk(Limiter(concurrency=8, tokens_per_minute=60_000), backoff_s=0.1, clock=clock)
    client = LeaseClient(never, clock)
    client.adopt(desk.lease(Ask(0, 1000, token_take=30)))  # 90 tokens: 0.09 s
    pacer = client.tokens
    for _ in range(2):
        assert pacer.reserve(30, clock.t) == 0
        clock.t += 0.03
    assert pacer.reserve(31, clock.t) == 0  # one token past the end: within OVERRUN of a take
    assert client.next_ask().overdrawn == (0.0, pytest.approx(1))
    other = LeaseClient(never, clock)
    desk = LeaseDesk(Limiter(concurrency=8, tokens_per_minute=60_000), backoff_s=0.1, clock=clock)
    other.adopt(desk.lease(Ask(0, 1000, token_take=30)))
    for _ in range(2):
        assert other.tokens.reserve(30, clock.t) == 0
        clock.t += 0.03
    assert math.isinf(other.tokens.reserve(33, clock.t))  # 3 past the end: more than OVERRUN, it waits
    assert other.tokens.carried == pytest.approx(30)  # and the 30 left are carried into the next span


def test_tokens_taken_past_a_span_move_the_desks_schedule_on() -> None:
    """A take of tokens larger than any span starts in one, ends past it, and moves the schedule on."""
    clock = FakeClock()
    desk = LeaseDesk(Limiter(concurrency=8, tokens_per_minute=60_000), backoff_s=0.1, clock=clock)
    client = LeaseClient(never, clock)
    client.adopt(desk.lease(Ask(0, 100)))  # 100 tokens: 0.1 s of the schedule
    assert client.tokens.reserve(250, clock.t) == 0  # goes, 150 tokens past the span's end
    ask = client.next_ask()
    assert ask.overdrawn == (0.0, pytest.approx(150))
    after = desk.lease(ask).tokens
    assert after is not None
    assert after.start == pytest.approx(0.25)  # from now: 1,000 tokens a second


def test_a_take_that_would_cross_into_another_workers_span_waits_for_a_span_it_fits_in() -> None:
    """Tokens that fit a span but not what is left of this one wait for the next, and what was left is
    carried into it: it begins that much earlier for this worker. (Given back to the desk, the rest came
    back overlapping the stretch leased last, and was lost when that was this worker's own.)"""
    clock = FakeClock()
    desk = LeaseDesk(Limiter(concurrency=8, tokens_per_minute=60_000), backoff_s=0.1, clock=clock)
    client = LeaseClient(never, clock)
    client.adopt(desk.lease(Ask(0, 100)))  # 100 tokens: 0.1 s of the schedule, 1,000 tokens a second
    assert client.tokens.reserve(60, clock.t) == 0  # 40 left
    assert math.isinf(client.tokens.reserve(60, clock.t))  # would end 20 tokens into the next stretch
    ask = client.next_ask()
    assert ask.overdrawn == (0.0, 0.0)  # the 40 unused stay with the worker
    assert ask.tokens >= 60  # and the next span holds the take whole
    client.adopt(desk.lease(ask))  # from 0.1 s, where the first ends
    clock.t += 0.06  # the first take's 60 tokens have passed
    assert client.tokens.reserve(60, clock.t) == 0  # 40 tokens (0.04 s) early
    assert client.tokens.carried == 0  # once


def test_a_pacer_without_a_span_waits_for_the_next_lease() -> None:
    """A take finding no span asks for a lease and goes as soon as one is held."""
    leases: list[Ask] = []

    async def desk(ask: Ask) -> Grant:
        leases.append(ask)
        return Grant(time.time(), Span(0, 1, 100.0), Span(0, 1, math.inf), 0.0, 100.0)

    async def scenario() -> None:
        client = LeaseClient(desk)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.serve)
                await client.requests.take(1)
                await client.tokens.take(30)
                tg.cancel_scope.cancel()

    anyio.run(scenario)
    assert leases
    assert leases[0].requests >= 1


def test_a_workers_limiter_reports_a_429_at_once_and_successes_with_the_next_call() -> None:
    """Outcomes go to the desk with the worker's calls; a 429 makes a call due at once."""
    client = LeaseClient(never)
    limiter = LeasedLimiter(client, concurrency=4, requests_per_minute=600)
    assert isinstance(limiter.requests, LeasedPacer)
    ticket = Ticket(50, time.monotonic(), slot=False, est_prompt_tokens=40)
    limiter.on_success(ticket, Usage(prompt_tokens=40, completion_tokens=5, total_tokens=45), NO_RATE_INFO)
    assert not client.wanted
    refused = ProviderError("slow down", error_type="rate_limited", error_class=ErrorClass.RETRY)
    limiter.on_failure(ticket, refused, 0.1)
    assert client.wanted
    ask = client.next_ask()
    assert [o.usage is not None for o in ask.outcomes] == [True, False]
    assert ask.outcomes[1].error_type == "rate_limited"
    limiter.requests.rate_per_s = 1.0  # the worker's own retune: the desk's rate wins
    assert math.isinf(limiter.requests.rate_per_s)


def test_back_to_back_spans_overlapping_by_the_clocks_translation_lose_no_take() -> None:
    """Two spans back to back in the desk's schedule, the second arriving 2 microseconds early (each
    lease's times are translated from wall-clock time on their own): every unit of both is taken."""
    pacer = LeasedPacer(lambda: None)
    start = 1000.0
    pacer.add(Span(start, start + 0.1, 50.0))
    pacer.add(Span(start + 0.1 - 2e-6, start + 0.2 - 2e-6, 50.0))
    taken = 0
    for slot in range(10):
        now = start + slot * 0.02 + 1e-9
        wait = pacer.reserve(1, now)
        if wait > 0 and not math.isinf(wait):
            wait = pacer.reserve(1, now + wait)
        taken += wait == 0
    assert taken == 10
