"""What a reply's headers say about rate limits, in both OpenAI's and Anthropic's dialects.

OpenAI-style: `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, reset as a duration (`1s`, `6m0s`,
`20ms`). Anthropic-style: `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,
remaining,reset}`, reset as an RFC 3339 time. Both may be absent (DashScope sends none): every field is
optional and a malformed value is ignored, never an error.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

_DURATION = re.compile(
    r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?"
)


@dataclass(frozen=True, slots=True)
class RateLimits:
    """The provider's view of one limit (requests or tokens): how many are left and when it refills."""

    limit: float | None = None
    remaining: float | None = None
    reset_s: float | None = None  # seconds until the limit is fully replenished

    @property
    def exhausted(self) -> bool:
        """True when the provider says nothing is left."""
        return self.remaining is not None and self.remaining <= 0

    @property
    def fraction_left(self) -> float | None:
        """remaining / limit, when both are known."""
        if self.limit and self.remaining is not None:
            return self.remaining / self.limit
        return None


@dataclass(frozen=True, slots=True)
class RateInfo:
    """Request and token limits as one reply reported them."""

    requests: RateLimits = RateLimits()
    tokens: RateLimits = RateLimits()

    def wait_s(self) -> float | None:
        """How long until an exhausted limit refills (the longest, if both are); None if none is exhausted."""
        waits = [
            lim.reset_s for lim in (self.requests, self.tokens) if lim.exhausted and lim.reset_s is not None
        ]
        return max(waits) if waits else None


NO_RATE_INFO = RateInfo()


def parse_rate_info(headers: Mapping[str, str]) -> RateInfo:
    """Read either dialect of rate-limit headers; fields the reply lacks stay None."""
    if "x-ratelimit-remaining-requests" in headers or "x-ratelimit-remaining-tokens" in headers:
        return RateInfo(_openai(headers, "requests"), _openai(headers, "tokens"))
    if any(name.startswith("anthropic-ratelimit-") for name in headers):
        return RateInfo(_anthropic(headers, "requests"), _anthropic(headers, "tokens"))
    return NO_RATE_INFO


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """The wait a reply asks for: `retry-after-ms` (float ms) over `retry-after` (seconds or an HTTP date)."""
    value = headers.get("retry-after-ms")
    if value:
        number = _number(value)
        if number is not None:
            return max(0.0, number / 1000)
    value = headers.get("retry-after")
    if not value:
        return None
    number = _number(value)
    if number is not None:
        return max(0.0, number)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def wait_hint(headers: Mapping[str, str]) -> float | None:
    """How long a 429 says to wait: retry-after if given, else the reset of the exhausted limit."""
    explicit = retry_after_s(headers)
    return explicit if explicit is not None else parse_rate_info(headers).wait_s()


def parse_duration(text: str) -> float | None:
    """`1s`, `6m0s`, `20ms`, `1h2m3.5s`, or a bare number of seconds; None if it is none of those."""
    text = text.strip()
    number = _number(text)
    if number is not None:
        return number
    match = _DURATION.fullmatch(text)
    if not match or not any(match.groups()):
        return None
    hours, minutes, seconds, millis = (float(g) if g else 0.0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds + millis / 1000


def _openai(headers: Mapping[str, str], what: str) -> RateLimits:
    reset = headers.get(f"x-ratelimit-reset-{what}")
    return RateLimits(
        limit=_number(headers.get(f"x-ratelimit-limit-{what}")),
        remaining=_number(headers.get(f"x-ratelimit-remaining-{what}")),
        reset_s=parse_duration(reset) if reset else None,
    )


def _anthropic(headers: Mapping[str, str], what: str) -> RateLimits:
    reset = headers.get(f"anthropic-ratelimit-{what}-reset")
    reset_s = None
    if reset:
        try:
            reset_s = max(0.0, datetime.fromisoformat(reset.replace("Z", "+00:00")).timestamp() - time.time())
        except ValueError:
            reset_s = None
    return RateLimits(
        limit=_number(headers.get(f"anthropic-ratelimit-{what}-limit")),
        remaining=_number(headers.get(f"anthropic-ratelimit-{what}-remaining")),
        reset_s=reset_s,
    )


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None
