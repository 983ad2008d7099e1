"""Rate-limit headers, the run-wide cooldown, adaptive limits, the outage breaker, and error classes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import httpx
import pytest

from batchrun.engines.run import run_job
from batchrun.errors import ErrorClass, ProviderError, StopRun
from batchrun.job.loader import load_job
from batchrun.limits import adaptive as adaptive_module
from batchrun.limits.adaptive import AdaptiveLimit
from batchrun.limits.breaker import Breaker
from batchrun.limits.pacing import Limiter
from batchrun.providers.headers import parse_duration, parse_rate_info, wait_hint
from batchrun.records import Request, Usage

WriteJob = Callable[..., Path]
OK_BODY = {
    "id": "chatcmpl-1",
    "model": "qwen3-max",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "positive"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 20, "completion_tokens": 1, "total_tokens": 21},
}


def request(tokens: int = 10) -> Request:
    """A minimal rendered request."""
    return Request("id", {"model": "m", "messages": []}, b"{}", tokens, tokens)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5", 0.5), ("soon", None)],
)
def test_reset_durations_parse_as_openai_writes_them(text: str, seconds: float | None) -> None:
    """`x-ratelimit-reset-*` durations in OpenAI's format become seconds; nonsense becomes None."""
    assert parse_duration(text) == seconds


def test_openai_rate_headers_and_the_wait_of_an_exhausted_limit() -> None:
    """Remaining 0 with a reset of 1.5 s means a 1.5 s wait; retry-after-ms wins over it."""
    headers = {
        "x-ratelimit-limit-requests": "600",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1.5s",
        "x-ratelimit-remaining-tokens": "5000",
    }
    info = parse_rate_info(headers)
    assert info.requests.exhausted
    assert info.requests.limit == 600
    assert info.wait_s() == 1.5
    assert wait_hint(headers) == 1.5
    assert wait_hint({**headers, "retry-after-ms": "250"}) == 0.25


def test_anthropic_rate_headers_reset_as_a_timestamp() -> None:
    """`anthropic-ratelimit-*-reset` is an RFC 3339 time: the wait is the time until then."""
    reset = (datetime.now(UTC) + timedelta(seconds=30)).isoformat().replace("+00:00", "Z")
    headers = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": reset,
    }
    wait = wait_hint(headers)
    assert wait is not None
    assert 28 < wait <= 30


def test_a_429_cools_the_whole_run_down() -> None:
    """After a 429 asking for 0.2 s, the next request of any worker waits about that long."""

    async def scenario() -> float:
        limiter = Limiter(concurrency=4, adaptive=False)
        ticket = await limiter.acquire(request())
        limited = ProviderError(
            "slow down", error_type="rate_limited", error_class=ErrorClass.RETRY, status=429
        )
        limited.retry_after_s = 0.2
        limiter.on_failure(ticket, limited, backoff_s=5)
        assert limiter.cooling_down
        started = time.monotonic()
        await limiter.acquire(request())
        return time.monotonic() - started

    assert anyio.run(scenario) >= 0.19


def test_a_cooldown_also_holds_requests_already_queued_for_a_slot() -> None:
    """A request that passed the cooldown check, then waited for a slot during a 429, still waits it out."""

    async def scenario() -> float:
        limiter = Limiter(concurrency=1, adaptive=True)
        first = await limiter.acquire(request())
        sent_at: list[float] = []

        async def queued() -> None:
            await limiter.acquire(request())
            sent_at.append(time.monotonic())

        async with anyio.create_task_group() as tg:
            tg.start_soon(queued)
            await anyio.sleep(0.05)  # the second request is now waiting for the only slot
            limited = ProviderError(
                "slow down", error_type="rate_limited", error_class=ErrorClass.RETRY, status=429
            )
            limited.retry_after_s = 0.3
            refused_at = time.monotonic()
            limiter.on_failure(first, limited, backoff_s=5)
        return sent_at[0] - refused_at

    assert anyio.run(scenario) >= 0.29


def test_token_reservation_follows_real_completions() -> None:
    """Reservations use a running average of real completion sizes, not max_tokens."""

    async def scenario() -> list[int]:
        limiter = Limiter(concurrency=4, tokens_per_minute=600_000, adaptive=False)
        sizes = []
        for _ in range(60):
            ticket = await limiter.acquire(request(tokens=100))
            limiter.on_success(ticket, Usage(100, 10, total_tokens=110), parse_rate_info({}))
            sizes.append(limiter.reserve_for(request(tokens=100)))
        return sizes

    sizes = anyio.run(scenario)
    assert sizes[0] == 110
    assert sizes[-1] == 110


def test_adaptive_limit_starts_at_full_concurrency_and_paces_after_a_429(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No limit known: all of `concurrency` at once; a 429 cuts the window and sets a first pace from what
    was admitted; a second later the busiest second of answers measures the pace."""
    monkeypatch.setattr(adaptive_module, "MIN_SPAN_S", 0.2)

    async def scenario() -> tuple[AdaptiveLimit, float | None]:
        adaptive = AdaptiveLimit(max_concurrency=64)
        assert adaptive.concurrency == 64  # a provider with room to spare costs nothing
        now = time.monotonic()
        for _ in range(20):
            await adaptive.acquire()
            adaptive.release()
            adaptive.on_success(now - 0.5, latency_s=0.1)
        adaptive.on_rate_limited(sent_at=now, now=now)
        # 20 admitted before the first refusal: taken as a second's worth, at the 95% margin.
        provisional = adaptive.rate_per_s
        assert adaptive.concurrency == 44  # 64 x 0.7 = 44.8
        for i in range(10):
            adaptive.on_success(now + 0.03 * (i + 1), latency_s=0.1)
        adaptive.on_rate_limited(sent_at=now + 0.3, now=now + 0.3)
        return adaptive, provisional

    adaptive, provisional = anyio.run(scenario)
    assert provisional == pytest.approx(19.0)
    assert adaptive.concurrency == 31  # (44.8 + 10 / 44.8) x 0.7: above what 9.5/s x 0.1 s needs
    # The busiest second since the first 429 held ten answers: 95% of that is 9.5, but the pace never
    # drops below half of what the provider admitted before it first refused (20).
    assert adaptive.rate_per_s == pytest.approx(10.0)


def test_adaptive_window_is_never_cut_below_what_the_pace_needs_in_flight() -> None:
    """At 100/s with 0.5 s round trips, 429s never cut the window below 2 x 50 in flight."""

    async def scenario() -> int:
        adaptive = AdaptiveLimit(max_concurrency=256)
        now = time.monotonic()
        for i in range(2000):  # 20 s of answers at 100/s, with a 429 every second
            t = now + i * 0.01
            adaptive.on_success(t, latency_s=0.5)
            if i % 100 == 99:
                adaptive.on_rate_limited(sent_at=t, now=t)
        return adaptive.concurrency

    assert anyio.run(scenario) >= 2 * 0.5 * 80


def test_breaker_opens_after_a_run_of_failures_and_closes_on_a_probe_success() -> None:
    """Ten server failures open it; one probe goes out; its success closes it for everyone."""

    async def scenario() -> None:
        breaker = Breaker(threshold=10, first_probe_s=0.05)
        for _ in range(10):
            breaker.failure()
        assert breaker.is_open
        admitted: list[str] = []

        async def worker(name: str) -> None:
            await breaker.admit()
            admitted.append(name)

        async with anyio.create_task_group() as tg:
            for name in ("a", "b", "c"):
                tg.start_soon(worker, name)
            await anyio.sleep(0.1)
            assert len(admitted) == 1  # only the probe went out
            breaker.success()
        assert sorted(admitted) == ["a", "b", "c"]
        assert not breaker.is_open

    anyio.run(scenario)


def mock_run(
    write_job: WriteJob, handler: Callable[[httpx.Request], httpx.Response], *overrides: str
) -> tuple[object, Path]:
    """Run a 40-row test job against `handler` instead of the network; return the summary and the job."""
    job_path = write_job("http://provider.test/v1")
    job = load_job(job_path, ["limits.backoff_base_s=0.001", *overrides])
    return run_job(job, transport=httpx.MockTransport(handler)), job_path


QUOTA = {"error": {"message": "You exceeded your current quota", "code": "insufficient_quota"}}
ARREARAGE = {
    "code": "Arrearage",
    "message": "Access denied, please make sure your account is in good standing.",
}


@pytest.mark.parametrize(
    ("status", "body", "fix"),
    [
        (429, QUOTA, "no balance or quota left"),
        (429, {"code": "PrepaidBillOverdue", "message": "bill overdue"}, "no balance or quota left"),
        (400, ARREARAGE, "no balance or quota left"),
        (401, {"error": {"message": "Incorrect API key", "code": "invalid_api_key"}}, "api_key_env"),
        (404, {"code": "ModelNotFound", "message": "Model not exist."}, "[provider] model"),
    ],
)
def test_account_problems_stop_the_run(
    write_job: WriteJob, reviews: Path, status: int, body: dict[str, object], fix: str
) -> None:
    """Unpaid, bad-key and unknown-model answers (by code, not only status) stop the run and say the fix."""
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(status, json=body)

    with pytest.raises(StopRun) as stopped:
        mock_run(write_job, handler, "limits.concurrency=2")
    assert calls <= 2
    assert fix in str(stopped.value)


def test_throttling_429_is_retried_and_moderation_fails_only_its_row(
    write_job: WriteJob, reviews: Path
) -> None:
    """DashScope's `Throttling` 429 and a 529 are retried; `DataInspectionFailed` fails only its row."""
    seen: dict[str, int] = {}
    moderated = {"code": "DataInspectionFailed", "message": "inappropriate content"}
    throttled = {"code": "Throttling.RateQuota", "message": "Requests rate limit exceeded"}
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}

    def handler(request: httpx.Request) -> httpx.Response:
        text = json.loads(request.content)["messages"][-1]["content"]
        seen[text] = seen.get(text, 0) + 1
        row = list(seen).index(text)
        if row == 2:
            return httpx.Response(400, json=moderated)
        if seen[text] == 1:  # every other row's first try fails, alternately 429 and 529
            return httpx.Response(429, json=throttled) if row % 2 else httpx.Response(529, json=overloaded)
        return httpx.Response(200, json=OK_BODY)

    summary, _ = mock_run(write_job, handler, "limits.concurrency=1")
    assert summary.failed == 1  # type: ignore[attr-defined]
    assert summary.errors == {"content_filter": 1}  # type: ignore[attr-defined]
    assert seen[list(seen)[2]] == 1  # the moderated row was not retried
    assert all(count == 2 for i, count in enumerate(seen.values()) if i != 2)


def test_an_outage_pauses_and_probes_without_burning_attempts(write_job: WriteJob, reviews: Path) -> None:
    """0.6 s of 503s with max_attempts=3: the breaker pauses the run and every row still ends ok."""
    started = time.monotonic()
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if time.monotonic() - started < 0.6:
            return httpx.Response(503, json={"code": "ModelUnavailable", "message": "down"})
        return httpx.Response(200, json=OK_BODY)

    summary, _ = mock_run(write_job, handler, "limits.max_attempts=3", "limits.concurrency=4")
    assert summary.ok == 40  # type: ignore[attr-defined]
    assert calls < 200  # paused and probed: it did not hammer the provider through the outage


def test_a_429_after_a_handful_of_answers_sets_no_pace() -> None:
    """Two answers before the first 429 say nothing of a window: no first pace is guessed from them."""

    async def scenario() -> float | None:
        adaptive = AdaptiveLimit(max_concurrency=1)
        now = time.monotonic()
        for i in range(2):
            await adaptive.acquire()
            adaptive.release()
            adaptive.on_success(now + i * 0.001, latency_s=0.001)
        adaptive.on_rate_limited(sent_at=now + 0.01, now=now + 0.01)
        return adaptive.rate_per_s

    assert anyio.run(scenario) is None
