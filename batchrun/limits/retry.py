"""Which failures are retried, and how long to wait before the next attempt.

Classification looks at the provider's error code first (DashScope's `Arrearage` is a 400 but stops the
run; OpenAI's `insufficient_quota` is a 429 that no retry can fix), then at the few words providers document
in a message instead of a code (`MESSAGE_RULES`: the message's first `MESSAGE_CHARS` characters, ignoring
case), then at the HTTP status.

What a failure says about the server, and so what is done with it:

- **Down or overloaded**: 5xx, 529, timeouts, refused or reset connections, and a body cut short
  (`truncated`: the connection broke before the reply's framing said it had ended, or an event stream
  stopped before its end event and before any `finish_reason`). Retried up to `max_attempts`; these, and
  only these, feed the outage breaker (`batchrun.limits.pacing.SERVER_SIDE`).
- **Up, but its reply cannot be used** (`bad_response`): a complete 2xx body that is not JSON, is HTML,
  lacks `choices` / `message` / `content`, carries negative or absurd token counts, is in a corrupt or
  unknown content coding, or is larger than `[limits] max_reply_mib`. "Complete" is the transport's word:
  the framing (Content-Length, chunked encoding, or the connection's close for a body with neither) said
  the body had ended. Asked once more (`BAD_RESPONSE_TRIES` in all: a flaky gateway may do better), then
  that row fails; it never feeds the breaker, since the server answered.
- **The endpoint is wrong**: a certificate that does not verify, a redirect, a 404 on the path, HTML or no
  connection at all from an endpoint that never answered: the run stops at once (`batchrun.net.endpoint`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import anyio
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from batchrun.errors import ErrorClass, ProviderError

# Codes meaning no request of this run can succeed: the account, the key or the model is the problem.
FATAL_CODES: dict[str, str] = {
    "invalid_api_key": "auth",
    "InvalidApiKey": "auth",
    "AccessDenied": "auth",
    "AccessDenied.Unpurchased": "auth",
    "Model.AccessDenied": "auth",
    "insufficient_quota": "billing",
    "Arrearage": "billing",
    "PrepaidBillOverdue": "billing",
    "PostpaidBillOverdue": "billing",
    "CommodityNotPurchased": "billing",
    "model_not_found": "model_not_found",
    "ModelNotFound": "model_not_found",
}
# Codes for one row's content: that row fails, the rest go on.
ROW_CODES: dict[str, str] = {
    "DataInspectionFailed": "content_filter",
    "data_inspection_failed": "content_filter",
    "content_filter": "content_filter",
    "context_length_exceeded": "context_length",
}
# Codes batchrun itself gives to failures that happen below HTTP or in a 200's body.
TRANSIENT_CODES: dict[str, str] = {
    "timeout": "timeout",
    "connection": "connection",
    "bad_response": "bad_response",
    "truncated": "truncated",
}
# Words a provider documents in an error's message rather than in a code, with the status they go with
# (None: any): what they mean for the run.
MESSAGE_RULES: tuple[tuple[str, int | None, ErrorClass, str], ...] = (
    # maxtoken's error table lists "Content policy violation" under 503 ("actual status code is 400").
    ("content policy", None, ErrorClass.ROW, "content_filter"),
    # A 403 that means an empty account, not a bad key: retrying or changing the key cannot help.
    ("insufficient balance", None, ErrorClass.FATAL, "billing"),
)
MESSAGE_CHARS = 200
BAD_RESPONSE_TRIES = 2  # an unreadable reply is asked for once more, then its row fails
RETRY_AFTER_CAP_S = 300.0
RETRY_STATUSES = {408, 409, 425, 429, 500, 502, 503, 504, 529}


def classify(status: int | None, code: str | None, message: str | None = None) -> tuple[ErrorClass, str]:
    """The class (retry, row, fatal) and the `error_type` of a failure: its code, its message, its status."""
    if code:
        if code in FATAL_CODES:
            return ErrorClass.FATAL, FATAL_CODES[code]
        if code in ROW_CODES:
            return ErrorClass.ROW, ROW_CODES[code]
    said = by_message(status, message)
    if said is not None:
        return said
    if code and code in TRANSIENT_CODES:
        return ErrorClass.RETRY, TRANSIENT_CODES[code]
    if status is not None and 300 <= status < 400:
        return ErrorClass.FATAL, "redirect"
    if status == 402:
        return ErrorClass.FATAL, "billing"
    if status in (401, 403):
        return ErrorClass.FATAL, "auth"
    if status == 404:
        return ErrorClass.FATAL, "model_not_found"
    if status == 429:
        return ErrorClass.RETRY, "rate_limited"
    if status == 529:
        return ErrorClass.RETRY, "overloaded"
    if status in (408, 504):
        return ErrorClass.RETRY, "timeout"
    if status in RETRY_STATUSES or (status is not None and status >= 500):
        return ErrorClass.RETRY, "server_error"
    if status is not None and 400 <= status < 500:
        return ErrorClass.ROW, "bad_request"
    return ErrorClass.RETRY, "server_error"


def by_message(status: int | None, message: str | None) -> tuple[ErrorClass, str] | None:
    """What a documented phrase in the message means (`MESSAGE_RULES`); None when it holds none."""
    if not message:
        return None
    words = message[:MESSAGE_CHARS].lower()
    for phrase, when, error_class, error_type in MESSAGE_RULES:
        if phrase in words and when in (None, status):
            return error_class, error_type
    return None


def bad_response(message: str, status: int | None = 200) -> ProviderError:
    """A reply the server completed but batchrun cannot use (see the module docstring)."""
    return ProviderError(
        message, error_type="bad_response", error_class=ErrorClass.RETRY, status=status, code="bad_response"
    )


def cut_short(message: str, status: int | None = 200) -> ProviderError:
    """A reply that broke off before its end (see the module docstring): the server's trouble, retried."""
    return ProviderError(
        message, error_type="truncated", error_class=ErrorClass.RETRY, status=status, code="truncated"
    )


def final(exc: ProviderError) -> ProviderError:
    """`exc` as its row's last word: the same failure, no more tries."""
    return ProviderError(
        exc.message, error_type=exc.error_type, error_class=ErrorClass.ROW, status=exc.status, code=exc.code
    )


class BackoffWait:
    """Tenacity wait: the provider's `retry-after` when it gave one, else full-jitter exponential backoff.

    Full jitter (a uniform draw below the exponential cap) spreads retries out so that many rows failing
    together do not come back together.
    """

    def __init__(
        self, base_s: float, max_s: float, rng: Callable[[], float] = random.random, tries_before: int = 0
    ) -> None:
        self.base_s = base_s
        self.max_s = max_s
        self.rng = rng
        self.tries_before = tries_before  # tries made before tenacity took over (see `retrying`)

    def __call__(self, state: RetryCallState) -> float:
        """Seconds to wait before the next attempt."""
        exc = state.outcome.exception() if state.outcome is not None else None
        return self.after(state.attempt_number + self.tries_before, exc)

    def after(self, attempt_number: int, exc: BaseException | None) -> float:
        """Seconds to wait after try number `attempt_number` (from 1) failed with `exc`."""
        if isinstance(exc, ProviderError) and exc.retry_after_s is not None:
            # Honour the provider's wait, but not an absurd one (an hour) that would look like a hang.
            return float(min(exc.retry_after_s, max(self.max_s, RETRY_AFTER_CAP_S)))
        cap: float = min(self.max_s, self.base_s * 2.0 ** (attempt_number - 1))
        return cap * self.rng()


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, ProviderError) and exc.retryable


def retrying(
    max_attempts: int,
    base_s: float,
    max_s: float,
    attempts_used: Callable[[], int] | None = None,
    tries_before: int = 0,
) -> AsyncRetrying:
    """A fresh retry controller for one row: retryable `ProviderError`s only, at most `max_attempts` tries.

    `attempts_used` counts the tries that count (an attempt lost to a provider outage does not); by
    default every try counts. `tries_before` is how many tries were made before this controller took
    over (the runner makes the first outside it: most rows need one, and tenacity costs a tenth of a
    row's CPU), so the backoff goes on growing from there. After the last attempt the last error is
    raised as it is, so the row records what really happened.
    """
    stop: Callable[[RetryCallState], bool]
    if attempts_used is None:
        stop = stop_after_attempt(max_attempts - tries_before)
    else:
        used = attempts_used

        def stop(state: RetryCallState) -> bool:
            return used() >= max_attempts

    return AsyncRetrying(
        retry=retry_if_exception(_is_retryable),
        stop=stop,
        wait=BackoffWait(base_s, max_s, tries_before=tries_before),
        sleep=_sleep,
        reraise=True,
    )


async def _sleep(seconds: float) -> Any:
    await anyio.sleep(seconds)
