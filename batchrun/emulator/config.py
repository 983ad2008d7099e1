"""The emulator's settings: latency, rate limits, injected faults, an outage window and an API key."""

from __future__ import annotations

import math
from dataclasses import dataclass

from batchrun.emulator.batchconfig import DEFAULT_BATCH_CONFIG, BatchConfig
from batchrun.emulator.ratelimit import WINDOWS

__all__ = ["DEFAULT_CONFIG", "FAULT_RATES", "EmulatorConfig"]

FAULT_RATES = (
    "rate_429",
    "rate_500",
    "rate_502",
    "rate_503",
    "rate_529",
    "rate_drop",
    "rate_truncate",
    "rate_slow",
)
"""The fault-rate fields in the order one draw assigns them (429 and 500 first, so old seeded runs replay)."""

# Rates that add up to 1 on paper may not in floats (0.33 + 0.56 + 0.11 = 1.0000000000000002): allow for it.
_SUM_TOLERANCE = 1e-9


def _is_number(value: object) -> bool:
    """True for an int or float (bool excluded: `True` is an int, but never a meaningful rate or delay)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """How the emulator behaves: added latency, rate limits, injected faults, an outage and an API key.

    Everything beyond `latency_s` is off by default. Fault rates are shares of all requests, decided by one
    seeded draw per request, so they never overlap and must sum to at most 1.
    """

    latency_s: float = 0.0  # added delay before each answer, errors included (not limiter 429s)
    rate_429: float = 0.0  # share of requests answered 429
    rate_500: float = 0.0  # share of requests answered 500
    retry_after_s: float = 0.05  # advertised on injected 429s as `retry-after-ms` and `retry-after`
    api_key: str | None = None  # when set, requests must carry `Authorization: Bearer <api_key>`
    seed: int = 0  # seeds the fault choice
    hold_after: int | None = None  # answer this many requests, then hold every later one until stop()
    # Rate limits, enforced as `limit_window` says (see `batchrun.emulator.ratelimit`): a bucket holding one
    # second's worth, a sliding or fixed one-second window of limit/60, or a fixed minute of the whole limit.
    # Over the limit: 429 at once, no latency.
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None  # cost: prompt tokens + max_tokens (see `Emulator`)
    limit_window: str = "bucket"  # one of ratelimit.WINDOWS: bucket, sliding, second, minute
    # True: OpenAI's `x-ratelimit-*` headers on every reply while a limit is set, `retry-after(-ms)` on 429s.
    # False: bare 429s without any rate-limit or retry header, as DashScope sends them.
    rate_limit_headers: bool = True
    rate_502: float = 0.0  # share of requests answered 502 (OpenAI-shaped server_error)
    rate_503: float = 0.0  # share of requests answered 503 (OpenAI-shaped server_error)
    rate_529: float = 0.0  # share of requests answered 529 with Anthropic's overloaded_error body
    rate_drop: float = 0.0  # share of requests whose connection is closed without any reply
    rate_truncate: float = 0.0  # share answered 200 with only the first half of the body, then closed
    rate_slow: float = 0.0  # share of requests answered normally but slow_s late (on top of latency_s)
    slow_s: float = 5.0
    # From outage_after_s seconds after the server started, for outage_s seconds, every chat request is
    # answered 503 (after latency_s).
    outage_after_s: float | None = None
    outage_s: float = 0.0
    batch: BatchConfig = DEFAULT_BATCH_CONFIG  # the Batch APIs' timing and faults (see `batchconfig`)

    def __post_init__(self) -> None:
        """Check every field; a bad value raises ValueError naming the field."""
        for name in ("latency_s", "retry_after_s", "slow_s", "outage_s"):
            value = getattr(self, name)
            if not (_is_number(value) and math.isfinite(value) and value >= 0):
                raise ValueError(f"EmulatorConfig.{name} must be a finite number >= 0, got {value!r}")
        for name in FAULT_RATES:
            value = getattr(self, name)
            if not (_is_number(value) and 0 <= value <= 1):
                raise ValueError(f"EmulatorConfig.{name} must be between 0 and 1, got {value!r}")
        # One draw decides every fault, so each rate is its share of all requests and they cannot overlap.
        used = [name for name in FAULT_RATES if getattr(self, name)]
        total = sum(getattr(self, name) for name in used)
        if total > 1 + _SUM_TOLERANCE:
            raise ValueError(f"EmulatorConfig.{' + '.join(used)} must be at most 1 in total, got {total!r}")
        for name in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(self, name)
            if value is not None and not (_is_number(value) and math.isfinite(value) and value > 0):
                raise ValueError(f"EmulatorConfig.{name} must be None or a finite number > 0, got {value!r}")
        if self.limit_window not in WINDOWS:
            raise ValueError(
                f"EmulatorConfig.limit_window must be one of {', '.join(WINDOWS)}, got {self.limit_window!r}"
            )
        if not isinstance(self.rate_limit_headers, bool):
            raise ValueError(
                f"EmulatorConfig.rate_limit_headers must be a bool, got {self.rate_limit_headers!r}"
            )
        after = self.outage_after_s
        if after is None:
            if self.outage_s:  # an outage that never starts is a mistake, not a no-op to ignore
                raise ValueError("EmulatorConfig.outage_s needs outage_after_s (when the outage starts)")
        elif not (_is_number(after) and math.isfinite(after) and after >= 0):
            raise ValueError(
                f"EmulatorConfig.outage_after_s must be None or a finite number >= 0, got {after!r}"
            )
        if not isinstance(self.batch, BatchConfig):
            raise ValueError(f"EmulatorConfig.batch must be a BatchConfig, got {self.batch!r}")
        if self.api_key is not None and not self.api_key:
            raise ValueError("EmulatorConfig.api_key must be None or a non-empty string")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"EmulatorConfig.seed must be an int, got {self.seed!r}")
        if self.hold_after is not None and (
            isinstance(self.hold_after, bool) or not isinstance(self.hold_after, int) or self.hold_after < 0
        ):
            raise ValueError(
                f"EmulatorConfig.hold_after must be None or an int >= 0, got {self.hold_after!r}"
            )


DEFAULT_CONFIG = EmulatorConfig()
"""The default config; one shared instance is safe because the config is frozen."""
