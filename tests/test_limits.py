"""Rate limits: the pacer (even spacing, no burst); the run-wide limiter's reservations, cooldowns, trim.

Timing checks are lower bounds only (the limiter must wait at least this long), each well under a second.
"""

from __future__ import annotations

import time

import anyio
import pytest

from batchrun.errors import ErrorClass, ProviderError
from batchrun.limits import adaptive as adaptive_module
from batchrun.limits.adaptive import RateTrim
from batchrun.limits.pacer import Pacer
from batchrun.limits.pacing import Limiter
from batchrun.providers.headers import RateInfo, RateLimits
from batchrun.records import Request, Usage

NO_HEADERS = RateInfo()


def request(prompt: int, output: int) -> Request:
    """A request whose token estimates are `prompt` and `output`."""
    return Request("cid", {}, b"{}", prompt, output)


def rate_limited(retry_after_s: float | None) -> ProviderError:
    """A 429 as the provider adapter reports it."""
    return ProviderError(
        "slow down",
        error_type="rate_limited",
        error_class=ErrorClass.RETRY,
        status=429,
        retry_after_s=retry_after_s,
    )


def test_pacer_spaces_takes_evenly() -> None:
    """At 10/s the first two takes go at once (one interval of catch-up), then one every 0.1 s."""
    pacer = Pacer(10.0)
    assert pacer.reserve(1, 0.0) == 0.0
    assert pacer.reserve(1, 0.0) == 0.0
    assert pacer.reserve(1, 0.0) == pytest.approx(0.1)  # nothing taken: it must wait 0.1 s
    assert pacer.reserve(1, 0.1) == 0.0
    assert pacer.reserve(1, 0.15) == pytest.approx(0.05)


def test_pacer_schedule_after_a_pause_starts_with_no_burst() -> None:
    """After a long pause at most two takes go back to back; the third waits a whole interval."""
    pacer = Pacer(10.0)
    for i in range(50):
        assert pacer.reserve(1, i / 10) == 0.0
    assert pacer.reserve(1, 1000.0) == 0.0
    assert pacer.reserve(1, 1000.0) == 0.0
    assert pacer.reserve(1, 1000.0) == pytest.approx(0.1)
    assert pacer.reserve(1, 1000.1) == 0.0
    assert pacer.reserve(1, 1000.1) == pytest.approx(0.1)


def test_a_late_waiter_is_caught_up_without_the_rate_sagging() -> None:
    """A take a little after its turn moves the schedule on from its turn, not from its lateness."""
    pacer = Pacer(10.0)
    pacer.reserve(1, 0.0)
    pacer.reserve(1, 0.0)  # the schedule now says 0.1
    assert pacer.reserve(1, 0.13) == 0.0  # 30 ms late
    assert pacer.reserve(1, 0.2) == 0.0  # still on the 0.1 s grid: 0.2, not 0.23


def test_a_hold_delays_the_schedule_and_banks_nothing() -> None:
    """`hold_until` (a cooldown) stops every take until then; after it they go one interval apart."""
    pacer = Pacer(10.0)
    pacer.hold_until(5.0)
    assert pacer.reserve(1, 1.0) == pytest.approx(4.0)
    assert pacer.reserve(1, 5.0) == 0.0
    assert pacer.reserve(1, 5.0) == pytest.approx(0.1)


def test_token_amounts_move_the_schedule_by_their_size_and_give_back_corrects_it() -> None:
    """A 50-token take at 100 tokens/s holds the schedule 0.5 s; giving 30 back frees 0.3 s of it."""
    pacer = Pacer(100.0)
    assert pacer.reserve(50, 0.0) == 0.0  # the first is caught up: the schedule is at 0.0
    assert pacer.reserve(50, 0.0) == 0.0
    assert pacer.reserve(10, 0.0) == pytest.approx(0.5)
    pacer.give_back(30)
    assert pacer.reserve(10, 0.0) == pytest.approx(0.2)
    pacer.give_back(-30)  # a reply that used more than it reserved
    assert pacer.reserve(10, 0.0) == pytest.approx(0.5)


def test_an_infinite_rate_only_holds() -> None:
    """Without a rate every take goes at once, but a hold still stops them."""
    pacer = Pacer()
    assert all(pacer.reserve(1, 0.0) == 0.0 for _ in range(100))
    pacer.hold_until(1.0)
    assert pacer.reserve(1, 0.5) == pytest.approx(0.5)


def test_takes_from_many_tasks_share_one_schedule() -> None:
    """Eight tasks share one request pace: 16 requests at 40/s take at least 14 intervals (0.35 s)."""

    async def main() -> float:
        limiter = Limiter(concurrency=8, requests_per_minute=2400)
        req = request(1, 1)

        async def worker() -> None:
            for _ in range(2):
                await limiter.acquire(req)

        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(worker)
        return time.monotonic() - started

    assert anyio.run(main) >= 0.34


def test_configured_rates_turn_adaptive_concurrency_off() -> None:
    """With RPM or TPM configured the limiter paces at those rates and keeps no adaptive window."""
    limiter = Limiter(concurrency=8, requests_per_minute=600, tokens_per_minute=1_000_000)
    assert limiter.requests.rate_per_s == 10.0
    assert limiter.tokens is not None
    assert limiter.tokens.rate_per_s == pytest.approx(1_000_000 / 60)
    assert limiter.adaptive is None
    bare = Limiter(concurrency=8, adaptive=False)
    assert bare.pace_per_s is None
    assert bare.tokens is None
    assert bare.adaptive is None


def test_first_reservation_is_prompt_estimate_plus_expected_output() -> None:
    """Before any reply a request reserves its prompt estimate plus its expected output tokens."""
    assert Limiter(concurrency=1, adaptive=False).reserve_for(request(40, 20)) == 60


def test_replies_correct_the_token_reservation() -> None:
    """After a reply the schedule gets back the reservation minus the tokens used; a failure gets it all."""

    async def main() -> list[float]:
        limiter = Limiter(concurrency=8, tokens_per_minute=6000)  # 100 tokens/s
        assert limiter.tokens is not None
        tokens = limiter.tokens
        req = request(40, 20)
        first = await limiter.acquire(req)  # caught up: the schedule is at its send time
        ticket = await limiter.acquire(req)  # 60 tokens: 0.6 s of schedule
        assert ticket.tokens == 60
        ahead = [tokens._next - ticket.sent_at]
        limiter.on_success(ticket, Usage(prompt_tokens=40, completion_tokens=2, total_tokens=42), NO_HEADERS)
        ahead.append(tokens._next - ticket.sent_at)
        failed = ProviderError("boom", error_type="server_error", error_class=ErrorClass.RETRY, status=500)
        limiter.on_failure(first, failed, 0.0)  # a failed request used nothing
        ahead.append(tokens._next - ticket.sent_at)
        return ahead

    # 0.6 s ahead; the reply used 42 of 60, so 0.18 s back; the failed one's 0.6 s back as well.
    assert anyio.run(main) == pytest.approx([0.6, 0.42, -0.18], abs=0.01)


def test_reply_larger_than_reserved_delays_the_next_request() -> None:
    """A reply that used more tokens than reserved is charged: the next request waits for it."""

    async def main() -> float:
        limiter = Limiter(concurrency=8, tokens_per_minute=6000)  # 100 tokens/s
        req = request(10, 5)
        ticket = await limiter.acquire(req)
        limiter.on_success(ticket, Usage(prompt_tokens=10, completion_tokens=35, total_tokens=45), NO_HEADERS)
        started = time.monotonic()  # 30 tokens more than reserved: 0.3 s before the next may go
        await limiter.acquire(req)
        return time.monotonic() - started

    assert anyio.run(main) >= 0.25


def test_prompt_estimates_are_corrected_by_what_replies_report() -> None:
    """Estimates 25% high are learned: the reservation follows the prompt tokens replies report."""
    limiter = Limiter(concurrency=1, tokens_per_minute=60_000_000)
    req = request(100, 0)

    async def main() -> int:
        for _ in range(200):
            ticket = await limiter.acquire(req)
            limiter.on_success(
                ticket, Usage(prompt_tokens=80, completion_tokens=0, total_tokens=80), NO_HEADERS
            )
        return limiter.reserve_for(req)

    assert anyio.run(main) == 80


def test_cool_down_delays_acquire() -> None:
    """After `cool_down(0.25)` every acquire waits out the pause; a shorter later cooldown does not cut it."""

    async def main() -> tuple[bool, float, bool]:
        limiter = Limiter(concurrency=8, adaptive=False)
        limiter.cool_down(0.25)
        limiter.cool_down(0.01)
        cooling = limiter.cooling_down
        started = time.monotonic()
        await limiter.acquire(request(1, 1))
        return cooling, time.monotonic() - started, limiter.cooling_down

    cooling_before, waited, cooling_after = anyio.run(main)
    assert cooling_before is True
    assert waited >= 0.24
    assert cooling_after is False


def test_cool_down_extended_while_waiting_is_honoured() -> None:
    """A cooldown extended while a task is already waiting makes that task wait to the new deadline."""

    async def main() -> float:
        limiter = Limiter(concurrency=8, adaptive=False)
        limiter.cool_down(0.05)
        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(limiter.acquire, request(1, 1))
            await anyio.sleep(0.02)
            limiter.cool_down(0.2)  # a new 429 while the first pause runs
        return time.monotonic() - started

    assert anyio.run(main) >= 0.21


@pytest.mark.parametrize(("retry_after_s", "expected"), [(0.2, 0.2), (None, 0.15)])
def test_a_429_cools_the_whole_run_down(retry_after_s: float | None, expected: float) -> None:
    """A rate-limited failure pauses every acquire for its retry-after, or else for the backoff."""

    async def main() -> float:
        limiter = Limiter(concurrency=8, adaptive=False)
        ticket = await limiter.acquire(request(1, 1))
        limiter.on_failure(ticket, rate_limited(retry_after_s), 0.15)
        started = time.monotonic()
        await limiter.acquire(request(1, 1))  # another worker's next request
        return time.monotonic() - started

    assert anyio.run(main) >= expected - 0.01


def test_server_errors_do_not_cool_down() -> None:
    """A 500 is retried by its own row's backoff; it does not pause the rest of the run."""

    async def main() -> bool:
        limiter = Limiter(concurrency=8, adaptive=False)
        ticket = await limiter.acquire(request(1, 1))
        error = ProviderError("boom", error_type="server_error", error_class=ErrorClass.RETRY, status=500)
        limiter.on_failure(ticket, error, 5.0)
        return limiter.cooling_down

    assert anyio.run(main) is False


def test_a_429_during_a_cooldown_does_not_stack_cooldowns() -> None:
    """429s for requests sent before a cooldown began leave it as it is, however many come back."""

    async def main() -> list[float]:
        limiter = Limiter(concurrency=8, requests_per_minute=600)
        tickets = [await limiter.acquire(request(1, 1)) for _ in range(4)]
        limiter.on_failure(tickets[0], rate_limited(0.05), 0.0)
        await anyio.sleep(0.06)  # that first pause is over; the next 429 starts the one under test
        sent = await limiter.acquire(request(1, 1))
        limiter.on_failure(sent, rate_limited(0.3), 0.0)  # two 429s: the pace is cut once
        deadline = limiter._cool_until
        await anyio.sleep(0.05)
        for ticket in tickets[1:]:  # sent before the cooldown: their 429s say nothing new
            limiter.on_failure(ticket, rate_limited(0.3), 0.0)
            limiter.on_failure(ticket, rate_limited(None), 0.0)
        return [deadline, limiter._cool_until, limiter.trim.factor]

    first_deadline, deadline, factor = anyio.run(main)
    assert deadline == first_deadline
    assert factor == pytest.approx(1 - adaptive_module.TRIM)  # one cut, not four


def test_a_bare_429_pauses_one_interval_doubling_while_they_keep_coming() -> None:
    """Without a retry-after the pause is the pace's interval, doubled per 429 in a row, reset by answers."""

    async def main() -> list[float]:
        limiter = Limiter(concurrency=8, requests_per_minute=600)  # 10/s: 0.1 s apart
        pauses = []
        for outcome in ("429", "429", "429", "ok", "429"):
            ticket = await limiter.acquire(request(1, 1))
            if outcome == "ok":
                limiter.on_success(ticket, Usage(1, 1, total_tokens=2), NO_HEADERS)
                continue
            limiter.on_failure(ticket, rate_limited(None), 5.0)
            pauses.append(limiter.cooldown_left_s)
        return pauses

    pauses = anyio.run(main)
    trimmed = 1 / (10 * (1 - adaptive_module.TRIM))  # the second 429 in a row trimmed the pace
    assert pauses == pytest.approx([0.1, 0.2, 0.4, trimmed], rel=0.05)


def test_a_configured_pace_is_trimmed_by_a_429_and_grows_back_with_answers() -> None:
    """A lone 429 cuts nothing; a second takes TRIM off the pace; RECOVER_REPLIES answers later it is back."""
    trim = RateTrim()
    for i in range(100):
        trim.on_success(i * 0.01)
    assert not trim.on_rate_limited(sent_at=0.5, now=1.0)  # one 429 in a hundred replies: jitter
    assert trim.factor == 1.0
    assert trim.on_rate_limited(sent_at=1.0, now=1.0)
    assert trim.factor == pytest.approx(0.99)
    assert not trim.on_rate_limited(sent_at=0.99, now=1.5)  # sent before the cut
    assert not trim.on_rate_limited(sent_at=1.2, now=1.5)  # within a second of the cut
    for i in range(adaptive_module.RECOVER_REPLIES // 2):
        trim.on_success(2.0 + i * 0.01)
    assert 0.99 < trim.factor < 1.0
    for i in range(adaptive_module.RECOVER_REPLIES):
        trim.on_success(10.0 + i * 0.01)
    assert trim.factor == 1.0


def test_a_pace_far_above_the_limit_is_cut_by_the_share_refused() -> None:
    """When a fifth of the replies to requests sent since the last cut were 429s, a cut takes a fifth off."""
    trim = RateTrim()
    trim.on_rate_limited(sent_at=0.0, now=0.0)
    assert trim.on_rate_limited(sent_at=0.0, now=0.0)  # two 429s at once: nothing measured yet, 1% off
    before = trim.factor
    assert before == pytest.approx(0.99)
    for i in range(40):  # fewer than TRIM_REPLIES: no cut before the second is up
        sent = 0.05 + i * 0.02
        if i % 5 == 0:
            trim.on_rate_limited(sent_at=sent, now=sent)  # within a second of the cut: counted, no cut
        else:
            trim.on_success(sent)
    assert trim.factor > before  # only grown by the answers
    grown = trim.factor
    assert trim.on_rate_limited(sent_at=1.0, now=1.0)
    # Replies to requests sent since the first cut: 8 + 1 refusals, 32 answers. Beyond this one, 8 / 41.
    assert trim.factor == pytest.approx(grown * (1 - 8 / 41), rel=0.02)


def test_replies_to_requests_sent_before_a_cut_do_not_count_toward_the_next() -> None:
    """After a cut, the refusals of requests sent at the old pace are not held against the new one."""
    trim = RateTrim()
    for i in range(50):
        trim.on_rate_limited(sent_at=-0.5 + i / 100, now=0.0 + i / 1000)  # the second cuts, at 0.001
    for i in range(50):
        trim.on_success(0.1 + i / 100)  # sent after the cut: all answered
    trim.on_rate_limited(sent_at=1.1, now=1.1)
    assert trim.on_rate_limited(sent_at=1.1, now=1.1)
    assert trim.factor == pytest.approx(0.99 * 0.99, rel=0.01)  # two cuts of TRIM, not one of ~half


def test_headers_of_a_long_window_are_heeded_and_a_short_one_left_to_the_pace() -> None:
    """Nothing left of a minute's window pauses the run to its reset; of a one-second window, it does not."""

    async def main() -> tuple[float, float]:
        limiter = Limiter(concurrency=8, requests_per_minute=600)
        spent = RateInfo(requests=RateLimits(limit=600, remaining=0, reset_s=0.8))
        ticket = await limiter.acquire(request(1, 1))
        limiter.on_success(ticket, Usage(1, 1, total_tokens=2), spent)
        short = limiter.cooldown_left_s
        minute = RateInfo(requests=RateLimits(limit=600, remaining=0, reset_s=20.0))
        ticket = await limiter.acquire(request(1, 1))
        limiter.on_success(ticket, Usage(1, 1, total_tokens=2), minute)
        return short, limiter.cooldown_left_s

    short, long = anyio.run(main)
    assert short == 0.0
    assert 19.0 < long <= 20.0


def test_a_limit_announced_in_headers_is_adopted_when_none_is_configured() -> None:
    """With no rate in the job, `x-ratelimit-limit-requests: 1200` paces the run at 20 a second."""

    async def main() -> float | None:
        limiter = Limiter(concurrency=8)
        ticket = await limiter.acquire(request(1, 1))
        announced = RateInfo(requests=RateLimits(limit=1200, remaining=19, reset_s=0.05))
        limiter.on_success(ticket, Usage(1, 1, total_tokens=2), announced)
        return limiter.pace_per_s

    assert anyio.run(main) == pytest.approx(20.0)


def test_enough_fresh_replies_allow_a_cut_within_the_second() -> None:
    """At a high rate a cut need not wait a second: TRIM_REPLIES replies since the last cut are enough."""
    trim = RateTrim()
    trim.on_rate_limited(sent_at=0.0, now=0.0)
    assert trim.on_rate_limited(sent_at=0.0, now=0.0)
    for i in range(adaptive_module.TRIM_REPLIES - 2):
        trim.on_success(0.001 * (i + 1))
    assert not trim.on_rate_limited(sent_at=0.1, now=0.1)  # one reply short: not yet
    assert trim.on_rate_limited(sent_at=0.1, now=0.1)  # enough
