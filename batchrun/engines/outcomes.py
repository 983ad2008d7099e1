"""What a row's tries come to: the `Result` journaled for it, and the run's running counts of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from batchrun.engines.structured import INVALID_JSON, as_json, invalid_json_message
from batchrun.errors import ErrorClass, ProviderError
from batchrun.records import Reply, Request, Result

if TYPE_CHECKING:
    from batchrun.money.pricing import PriceBook
    from batchrun.net.transport import Answer


CONTENT_FILTER = "content_filter"


@dataclass(slots=True)
class Tries:
    """A row's tries so far: all of them, and those that count against `max_attempts`."""

    made: int = 0
    counted: int = 0
    retry_json: bool = False  # JSON mode and `[limits] retry_invalid_json`: a non-JSON answer is sent again
    discarded_usd: float = 0.0  # what the answers sent again for invalid JSON cost
    unreadable: int = 0  # replies that came back whole but could not be used (`bad_response`)
    worst_usd: float = 0.0  # the row's reservation under `max_cost_usd`: what one reply may cost at most
    charged_usd: float = 0.0  # what the budget counts for the replies so far

    def charge(self, cost_usd: float | None) -> None:
        """Count one reply against the budget: its cost, or the worst case when its usage was not given.

        A reply without usage, or one that could not be read, was most likely billed all the same.
        """
        self.charged_usd += self.worst_usd if cost_usd is None else cost_usd


def ok_result(
    request: Request, answer: Answer, tries: Tries, prices: PriceBook, *, json_mode: bool
) -> Result:
    """A live answer as the row's result (see `reply_result`), with its latency and every try counted."""
    return reply_result(
        request.custom_id,
        request.body.get("model"),
        answer.reply,
        prices,
        json_mode=json_mode,
        attempts=tries.made,
        latency_s=answer.latency_s,
        discarded_usd=tries.discarded_usd,
        budget_usd=tries.charged_usd or None,
    )


def reply_result(
    custom_id: str,
    model: str | None,
    reply: Reply,
    prices: PriceBook,
    *,
    json_mode: bool,
    attempts: int,
    latency_s: float | None = None,
    discarded_usd: float = 0.0,
    budget_usd: float | None = None,
    discount: float = 1.0,
    batch_id: str | None = None,
) -> Result:
    """The row's answer with its usage and cost, whichever engine got it.

    `model` is the one the request named (its price is the price); `discount` the share of it paid (a
    Batch API's half price); `discarded_usd` what answers sent again for invalid JSON cost. An answer the
    provider's content filter stopped (`finish_reason = content_filter`) is kept, with its usage and cost,
    but the row is a `content_filter` error; in JSON mode a completion that does not parse is kept (it was
    paid for), but the row is an `invalid_json` error. A rerun resends neither.
    """
    usage = reply.usage
    cost = prices.cost(model, usage)
    if cost is not None:
        cost = cost * discount + discarded_usd
    parsed = as_json(reply.completion) if json_mode else None
    error_type, error = None, None
    if reply.finish_reason == CONTENT_FILTER:
        error_type, error = CONTENT_FILTER, "the provider's content filter stopped the answer"
    elif json_mode and parsed is None:
        error_type, error = INVALID_JSON, invalid_json_message(reply.completion)
    return Result(
        custom_id=custom_id,
        status="ok" if error_type is None else "error",
        completion=reply.completion,
        finish_reason=reply.finish_reason,
        reasoning=reply.reasoning,
        tool_calls=reply.tool_calls,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        total_tokens=usage.total_tokens,
        cost_usd=cost,
        model=reply.model,
        response_id=reply.response_id,
        latency_s=latency_s,
        attempts=attempts,
        error_type=error_type,
        error=error,
        http_status=None if error_type is None else 200,
        completions=list(reply.completions) if reply.completions is not None else None,
        json=parsed,
        batch_id=batch_id,
        budget_usd=budget_usd,
    )


def error_result(custom_id: str, exc: ProviderError, tries: Tries, *, batch_id: str | None = None) -> Result:
    """The row's failure, classified; its cost is what it paid before failing (discarded answers)."""
    return Result(
        custom_id=custom_id,
        status="error",
        cost_usd=tries.discarded_usd or None,  # so budgets count it
        attempts=tries.made,
        batch_id=batch_id,
        error_type=exc.error_type,
        error=exc.message,
        http_status=exc.status,
        # A fatal error (bad key, unpaid account) says nothing about the row: send it again next run.
        retryable=exc.retryable or exc.error_class is ErrorClass.FATAL,
        budget_usd=tries.charged_usd or None,
    )


@dataclass(slots=True)
class Counters:
    """What this run has done so far (rows answered in earlier runs are not counted here)."""

    sent: int = 0
    ok: int = 0
    failed: int = 0
    reused: int = 0
    cached: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)  # failed attempts tried again, by type
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def attempt_failed(self, exc: ProviderError, *, retried: bool) -> None:
        """Count one failed attempt that is tried again (a 429, a 5xx, a timeout... with tries left), by
        type; `retried`: the row has tries left."""
        if exc.retryable and retried:
            self.retries[exc.error_type] = self.retries.get(exc.error_type, 0) + 1

    def add(self, result: Result) -> None:
        """Count one finished row."""
        if result.ok:
            self.ok += 1
            self.cached += result.cached
            self.prompt_tokens += result.prompt_tokens or 0
            self.completion_tokens += result.completion_tokens or 0
            self.cost_usd += result.cost_usd or 0.0
        else:
            self.failed += 1
            key = result.error_type or "error"
            self.errors[key] = self.errors.get(key, 0) + 1
