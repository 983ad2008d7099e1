"""Which failures are retried, fail one row or stop the run, and how long to wait between attempts."""

from __future__ import annotations

import anyio
import pytest
from tenacity import RetryCallState

from batchrun.errors import ErrorClass, ProviderError
from batchrun.limits.retry import RETRY_AFTER_CAP_S, BackoffWait, classify, retrying

RETRY, ROW, FATAL = ErrorClass.RETRY, ErrorClass.ROW, ErrorClass.FATAL


@pytest.mark.parametrize(
    ("status", "code", "error_class", "error_type"),
    [
        # DashScope throttling codes are plain 429s: retried.
        (429, "Throttling", RETRY, "rate_limited"),
        (429, "Throttling.RateQuota", RETRY, "rate_limited"),
        (429, "Throttling.BurstRate", RETRY, "rate_limited"),
        (429, "rate_limit_exceeded", RETRY, "rate_limited"),
        (429, None, RETRY, "rate_limited"),
        # OpenAI's insufficient_quota and unpaid bills are 429s no retry can fix.
        (429, "insufficient_quota", FATAL, "billing"),
        (429, "PrepaidBillOverdue", FATAL, "billing"),
        (429, "PostpaidBillOverdue", FATAL, "billing"),
        (429, "CommodityNotPurchased", FATAL, "billing"),
        # Content moderation fails the row, whatever the status.
        (400, "DataInspectionFailed", ROW, "content_filter"),
        (400, "data_inspection_failed", ROW, "content_filter"),
        (500, "DataInspectionFailed", ROW, "content_filter"),
        (400, "context_length_exceeded", ROW, "context_length"),
        # Arrearage is a 400 or 403 that stops the run.
        (400, "Arrearage", FATAL, "billing"),
        (403, "Arrearage", FATAL, "billing"),
        (401, None, FATAL, "auth"),
        (401, "InvalidApiKey", FATAL, "auth"),
        (401, "invalid_api_key", FATAL, "auth"),
        (403, None, FATAL, "auth"),
        (403, "AccessDenied", FATAL, "auth"),
        (403, "AccessDenied.Unpurchased", FATAL, "auth"),
        (403, "Model.AccessDenied", FATAL, "auth"),
        (404, None, FATAL, "model_not_found"),
        (404, "ModelNotFound", FATAL, "model_not_found"),
        (404, "model_not_found", FATAL, "model_not_found"),
        (400, "model_not_found", FATAL, "model_not_found"),
        (500, None, RETRY, "server_error"),
        (500, "InternalError", RETRY, "server_error"),
        (500, "RequestTimeOut", RETRY, "server_error"),
        (502, None, RETRY, "server_error"),
        (503, "ModelServingError", RETRY, "server_error"),
        (503, "ModelUnavailable", RETRY, "server_error"),
        (504, None, RETRY, "timeout"),
        (408, None, RETRY, "timeout"),
        (529, "overloaded_error", RETRY, "overloaded"),
        (599, None, RETRY, "server_error"),
        (400, None, ROW, "bad_request"),
        (400, "InvalidParameter", ROW, "bad_request"),
        (400, "invalid_request_error", ROW, "bad_request"),
        (413, "request_too_large", ROW, "bad_request"),
        (422, None, ROW, "bad_request"),
        # Codes batchrun gives failures below HTTP or in a 200's body.
        (None, "timeout", RETRY, "timeout"),
        (None, "connection", RETRY, "connection"),
        (None, "bad_response", RETRY, "bad_response"),
        (None, "truncated", RETRY, "truncated"),
        (None, None, RETRY, "server_error"),
        # Redirects are not followed; 402 means no money.
        (301, None, FATAL, "redirect"),
        (308, None, FATAL, "redirect"),
        (402, None, FATAL, "billing"),
    ],
)
def test_classify(status: int | None, code: str | None, error_class: ErrorClass, error_type: str) -> None:
    """A failure is classed by its provider code first, then by its HTTP status."""
    assert classify(status, code) == (error_class, error_type)


def error(retry_after_s: float | None = None, error_class: ErrorClass = RETRY) -> ProviderError:
    """A provider error of the given class, with an optional retry-after."""
    return ProviderError(
        "x", error_type="t", error_class=error_class, status=429, retry_after_s=retry_after_s
    )


def state_after(attempt: int, exc: BaseException) -> RetryCallState:
    """Tenacity's state after attempt number `attempt` raised `exc`."""
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = attempt
    state.set_exception((type(exc), exc, None))
    return state


@pytest.mark.parametrize(
    ("status", "code", "message", "error_class", "error_type"),
    [
        # maxtoken documents "Content policy violation" under 503: the row fails, whatever the status.
        (503, None, "Content policy violation", ROW, "content_filter"),
        (400, "InvalidParameter", "Request blocked: content POLICY", ROW, "content_filter"),
        (403, None, "Insufficient balance, please top up", FATAL, "billing"),
        (403, None, "Access denied", FATAL, "auth"),
        (503, None, "Service busy", RETRY, "server_error"),
        # A code that says more than the words keeps its meaning.
        (429, "insufficient_quota", "content policy", FATAL, "billing"),
        # Only the message's start is read: words far down a long message are not looked for.
        (503, None, "x" * 300 + " content policy", RETRY, "server_error"),
    ],
)
def test_classify_by_documented_words(
    status: int, code: str | None, message: str, error_class: ErrorClass, error_type: str
) -> None:
    """A phrase a provider documents in its error message classifies it; other words do not."""
    assert classify(status, code, message) == (error_class, error_type)


def test_backoff_honours_retry_after() -> None:
    """A retry-after from the provider is the wait, whatever the attempt number and the jitter."""
    wait = BackoffWait(0.5, 60.0, rng=lambda: 0.0)
    assert wait(state_after(1, error(7.5))) == 7.5
    assert wait(state_after(9, error(0.0))) == 0.0


def test_backoff_caps_an_absurd_retry_after() -> None:
    """An hour-long retry-after is cut to the cap (the larger of backoff_max_s and 300 s)."""
    assert BackoffWait(0.5, 60.0)(state_after(1, error(3600.0))) == RETRY_AFTER_CAP_S
    assert BackoffWait(0.5, 900.0)(state_after(1, error(3600.0))) == 900.0


@pytest.mark.parametrize(
    ("attempt", "cap"),
    [(1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (8, 10.0), (30, 10.0)],
)
def test_backoff_is_full_jitter_below_the_exponential_cap(attempt: int, cap: float) -> None:
    """Without retry-after the wait is `rng() * min(max_s, base_s * 2**(attempt-1))`."""
    exc = error(None)
    assert BackoffWait(0.5, 10.0, rng=lambda: 1.0)(state_after(attempt, exc)) == pytest.approx(cap)
    assert BackoffWait(0.5, 10.0, rng=lambda: 0.25)(state_after(attempt, exc)) == pytest.approx(cap / 4)
    assert BackoffWait(0.5, 10.0, rng=lambda: 0.0)(state_after(attempt, exc)) == 0.0


def test_backoff_for_a_non_provider_error_uses_the_exponential_cap() -> None:
    """An exception that is not a ProviderError carries no retry-after, so jittered backoff applies."""
    assert BackoffWait(1.0, 60.0, rng=lambda: 0.5)(state_after(3, ValueError("x"))) == pytest.approx(2.0)


def test_backoff_default_rng_stays_within_the_cap() -> None:
    """With the real random source every wait lies in [0, cap]."""
    wait = BackoffWait(0.5, 4.0)
    waits = [wait(state_after(attempt, error(None))) for attempt in range(1, 8) for _ in range(20)]
    assert all(0.0 <= w <= 4.0 for w in waits)
    assert len(set(waits)) > 1


async def run_with_retries(errors: list[ProviderError], max_attempts: int) -> int:
    """Attempts made by `retrying` when the first attempts raise `errors` in turn and later ones succeed."""
    attempts = 0
    async for attempt in retrying(max_attempts, 0.0, 0.0):
        with attempt:
            attempts += 1
            if attempts <= len(errors):
                raise errors[attempts - 1]
    return attempts


def test_retrying_retries_retryable_errors_until_success() -> None:
    """Two retryable failures then a success take three attempts."""
    assert anyio.run(run_with_retries, [error(), error()], 5) == 3


def test_retrying_raises_row_and_fatal_errors_at_once() -> None:
    """A row or fatal error is raised after one attempt, not retried."""
    for error_class in (ROW, FATAL):
        failure = error(error_class=error_class)
        with pytest.raises(ProviderError) as info:
            anyio.run(run_with_retries, [failure, failure], 5)
        assert info.value is failure


def test_retrying_reraises_the_last_error_after_max_attempts() -> None:
    """When every attempt fails, the last attempt's own error is raised after exactly max_attempts."""
    failures = [error() for _ in range(3)]
    with pytest.raises(ProviderError) as info:
        anyio.run(run_with_retries, [*failures, error()], 3)
    assert info.value is failures[2]
