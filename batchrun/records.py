"""Provider-neutral records that flow through a run: `Request` in, `Reply` from the wire, `Result` out."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class Request:
    """One rendered row, ready to send.

    `body` is in the OpenAI chat-completions shape (the lingua franca of the inputs); a provider adapter turns
    it into its own wire format. `payload` is `body` as canonical JSON, encoded once and reused.
    """

    custom_id: str
    body: dict[str, Any]
    payload: bytes
    est_prompt_tokens: int
    est_output_tokens: int

    @property
    def output_cap(self) -> int | None:
        """The most output tokens the body allows (`max_tokens` or `max_completion_tokens`); None: no cap."""
        cap = self.body.get("max_tokens") or self.body.get("max_completion_tokens")
        return int(cap) if cap else None


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as the provider reported them; None where it did not say."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    total_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """A successful answer, parsed from any wire format."""

    completion: str | None
    finish_reason: str | None
    usage: Usage
    model: str | None = None
    response_id: str | None = None
    reasoning: str | None = None
    tool_calls: str | None = None  # JSON text
    completions: tuple[str | None, ...] | None = None  # every choice's text, only when there are several


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of one row: the columns Contract 2 adds to the output, plus whether a rerun retries it."""

    custom_id: str
    status: str  # "ok" | "error"
    completion: str | None = None
    finish_reason: str | None = None
    reasoning: str | None = None
    tool_calls: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    total_tokens: int | None = None
    cost_usd: float | None = None
    model: str | None = None
    response_id: str | None = None
    latency_s: float | None = None
    attempts: int = 0
    error_type: str | None = None
    error: str | None = None
    http_status: int | None = None
    cached: bool = False  # answered from the response cache: cost_usd is 0 on this run
    completions: list[str | None] | None = None  # every choice (n > 1); null for a single choice
    json: str | None = None  # the completion as canonical JSON text, when the request asked for JSON
    batch_id: str | None = None  # the provider's batch that answered the row; null for a live row
    retryable: bool = False  # an error a rerun sends again (rate limits, 5xx); not an output column
    # What `max_cost_usd` counted for the row: its cost, or the worst case where a reply gave no usage (a
    # resumed run's budget starts from it); not an output column.
    budget_usd: float | None = None
    # When the result was made (UNIX seconds, to the millisecond): the report's "run over time". Set here,
    # by default, so every engine's results carry it; not an output column.
    finished_at: float = field(default_factory=lambda: round(time.time(), 3))

    @property
    def ok(self) -> bool:
        """True when the row has its answer."""
        return self.status == "ok"


INTERNAL_FIELDS = ("retryable", "budget_usd", "finished_at")  # journaled, not written to the output
OUTPUT_COLUMNS = tuple(f.name for f in fields(Result) if f.name not in INTERNAL_FIELDS)
"""Contract 2: the columns batchrun appends to the input's, in this order."""
