"""Rate limits: token buckets (rate, debt, give-back) and the run-wide limiter's reservations and cooldown.

Timing checks are lower bounds only (the limiter must wait at least this long), each well under a second.
"""

from __future__ import annotations

import time

import anyio
import pytest

from batchrun.errors import ErrorClass, ProviderError
from batchrun.limits import TokenBucket, per_minute_bucket
from batchrun.pacing import Limiter
from batchrun.providers.headers import RateInfo
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


def test_bucket_rate_bounds_many_takes() -> None:
    """30 takes from a 10-token bucket refilled at 100/s need at least the 20 refills: ~0.2 s."""

    async def main() -> float:
        bucket = TokenBucket(100.0, 10)
        started = time.monotonic()
        for _ in range(30):
            await bucket.take(1)
        return time.monotonic() - started

    assert anyio.run(main) >= 0.18


def test_bucket_starts_full_and_capacity_is_at_least_one() -> None:
    """A new bucket holds `capacity` tokens, and a capacity below 1 is raised to 1."""

    async def main() -> float:
        bucket = TokenBucket(1.0, 10)
        await bucket.take(10)
        return bucket._level

    assert anyio.run(main) == pytest.approx(0.0, abs=0.05)
    assert TokenBucket(0.5, 0.2).capacity == 1.0


def test_oversized_take_from_a_full_bucket_leaves_debt() -> None:
    """Taking 50 from a full 10-token bucket goes through and leaves 40 owed: the next take waits ~0.41 s."""

    async def main() -> tuple[float, float]:
        bucket = TokenBucket(100.0, 10)
        await bucket.take(50)
        level = bucket._level
        started = time.monotonic()
        await bucket.take(1)
        return level, time.monotonic() - started

    level, waited = anyio.run(main)
    assert level == pytest.approx(-40.0, abs=0.5)
    assert waited >= 0.38


def test_oversized_take_waits_for_a_full_bucket() -> None:
    """An oversized take from an empty bucket waits until the bucket is full (capacity / rate)."""

    async def main() -> float:
        bucket = TokenBucket(100.0, 10)
        await bucket.take(10)
        started = time.monotonic()
        await bucket.take(25)
        return time.monotonic() - started

    assert anyio.run(main) >= 0.09


def test_give_back_returns_tokens_up_to_capacity() -> None:
    """`give_back` refunds unused tokens, never above capacity, and a negative amount puts it in debt."""

    async def main() -> list[float]:
        bucket = TokenBucket(1.0, 10)
        await bucket.take(10)
        levels = []
        bucket.give_back(6)
        levels.append(bucket._level)
        bucket.give_back(1000)
        levels.append(bucket._level)
        bucket.give_back(-25)
        levels.append(bucket._level)
        return levels

    assert anyio.run(main) == pytest.approx([6.0, 10.0, -15.0], abs=0.05)


def test_negative_give_back_delays_the_next_take() -> None:
    """Tokens taken back with a negative give_back must be refilled before the next take."""

    async def main() -> float:
        bucket = TokenBucket(100.0, 10)
        bucket.give_back(-20)  # 10 - 20 = -10: 11 tokens to refill before taking 1
        started = time.monotonic()
        await bucket.take(1)
        return time.monotonic() - started

    assert anyio.run(main) >= 0.1


@pytest.mark.parametrize(
    ("per_minute", "rate", "capacity"),
    [(600, 10.0, 10), (1_000_000, 1_000_000 / 60, 16667), (30, 0.5, 1)],
)
def test_per_minute_bucket_holds_one_seconds_worth(per_minute: float, rate: float, capacity: float) -> None:
    """A per-minute limit becomes a per-second rate with a second's worth (at least 1) of capacity."""
    bucket = per_minute_bucket(per_minute)
    assert bucket.rate_per_s == pytest.approx(rate)
    assert bucket.capacity == capacity


def test_configured_rates_turn_adaptive_concurrency_off() -> None:
    """With RPM or TPM configured the limiter uses those buckets and no adaptive window."""
    limiter = Limiter(concurrency=8, requests_per_minute=600, tokens_per_minute=1_000_000)
    assert limiter.requests is not None
    assert limiter.tokens is not None
    assert limiter.tokens.capacity == 16667
    assert limiter.adaptive is None
    bare = Limiter(concurrency=8, adaptive=False)
    assert bare.requests is None
    assert bare.tokens is None
    assert bare.adaptive is None


def test_first_reservation_is_prompt_estimate_plus_expected_output() -> None:
    """Before any reply a request reserves its prompt estimate plus its expected output tokens."""
    assert Limiter(concurrency=1, adaptive=False).reserve_for(request(40, 20)) == 60


def test_replies_correct_the_token_reservation() -> None:
    """After a reply the bucket gets back the reservation minus the tokens used; a failure returns it all."""

    async def main() -> list[float]:
        limiter = Limiter(concurrency=8, tokens_per_minute=6000)  # 100 tokens/s, 100 capacity
        assert limiter.tokens is not None
        levels = []
        req = request(40, 20)
        ticket = await limiter.acquire(req)
        assert ticket.tokens == 60
        levels.append(limiter.tokens._level)
        limiter.on_success(ticket, Usage(prompt_tokens=8, completion_tokens=2, total_tokens=10), NO_HEADERS)
        levels.append(limiter.tokens._level)
        ticket = await limiter.acquire(req)
        limiter.on_failure(ticket, rate_limited(None), 0.0)  # a failed request used nothing
        levels.append(limiter.tokens._level)
        return levels

    # 100 - 60 = 40; + (60 - 10) = 90; - 42 (40 + the 2 completion tokens now expected) + 42 = 90.
    assert anyio.run(main) == pytest.approx([40.0, 90.0, 90.0], abs=1.0)


def test_reply_larger_than_reserved_puts_the_bucket_in_debt() -> None:
    """A reply that used more tokens than reserved is charged, so the next request waits for the refill."""

    async def main() -> float:
        limiter = Limiter(concurrency=8, tokens_per_minute=6000)  # 100 tokens/s, 100 capacity
        req = request(10, 5)
        ticket = await limiter.acquire(req)  # reserves 15: level 85
        limiter.on_success(
            ticket, Usage(prompt_tokens=110, completion_tokens=5, total_tokens=115), NO_HEADERS
        )
        started = time.monotonic()  # level -15; the next reserves 10 + 5 = 15, so 30 must refill
        await limiter.acquire(req)
        return time.monotonic() - started

    assert anyio.run(main) >= 0.27


def test_requests_per_minute_is_shared_by_concurrent_tasks() -> None:
    """Eight tasks share one request bucket: 56 requests at 40/s with 40 up front take at least 0.4 s."""

    async def main() -> float:
        limiter = Limiter(concurrency=8, requests_per_minute=2400)
        req = request(1, 1)

        async def worker() -> None:
            for _ in range(7):
                await limiter.acquire(req)

        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(worker)
        return time.monotonic() - started

    assert anyio.run(main) >= 0.38


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
