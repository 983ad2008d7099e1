"""What a finished batch's lines mean for their rows: an answer, an error row, a row to send again, a stop.

Every answer is made into a `Result` by the same code as a live one (`reply_result`), priced at the job's
`[pricing] batch_discount`, and tagged with the batch's id. A request the batch never ran (expired,
cancelled, or missing from its results) was not billed: it is sent again, in the next batch or live, while
the row has attempts left (`[limits] max_attempts`); an error worth retrying (a 500 inside the batch) too.
A row out of attempts is an error row a rerun sends again. An error that means no request can succeed (a
bad key, no balance) stops the run, as live.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from batchrun.engines.base import RunContext
from batchrun.engines.batchlog import Row
from batchrun.engines.outcomes import Tries, error_result, reply_result
from batchrun.errors import ErrorClass, ProviderError
from batchrun.providers.batchapi.records import LineResult
from batchrun.records import Result

UNANSWERED_MESSAGES = {
    "expired": "the batch's completion window ended before this row ran",
    "cancelled": "the batch was cancelled before this row ran",
    "missing": "the batch's results did not name this row",
}


@dataclass(slots=True)
class Collected:
    """What one batch came to: results for the writer, rows to send again, and what the budget is charged."""

    results: list[Result] = field(default_factory=list)
    resend: dict[str, Row] = field(default_factory=dict)
    charged_usd: float = 0.0
    answered: int = 0
    failed: int = 0
    fatal: ProviderError | None = None


class Collector:
    """Turns one batch's `LineResult`s into rows (see the module docstring)."""

    def __init__(self, context: RunContext, model: str | None, batch_id: str | None) -> None:
        self.context = context
        self.model = model
        self.batch_id = batch_id
        self.discount = context.job.pricing.batch_discount
        self.max_attempts = context.job.limits.max_attempts
        self.outcome = Collected()

    def line(self, row: Row, line: LineResult) -> None:
        """Take one row's line."""
        if line.reply is not None:
            self._answer(row, line)
        elif line.error is not None:
            self.error(row, line.error)
        else:
            reason = line.unanswered or "missing"
            self._again(
                row,
                ProviderError(
                    UNANSWERED_MESSAGES[reason],
                    error_type=f"batch_{reason}",
                    error_class=ErrorClass.RETRY,
                ),
            )

    def error(self, row: Row, exc: ProviderError) -> None:
        """A row's request failed (or its whole batch did): retry it, fail it, or stop the run."""
        if exc.error_class is ErrorClass.FATAL:
            self.outcome.fatal = self.outcome.fatal or exc
            self._fail(row, exc)
        elif exc.retryable:
            self._again(row, exc)
        else:
            self._fail(row, exc)

    def _answer(self, row: Row, line: LineResult) -> None:
        assert line.reply is not None
        result = reply_result(
            row.custom_id,
            self.model,
            line.reply,
            self.context.prices,
            json_mode=row.json_mode,
            attempts=row.attempt,
            discount=self.discount,
            batch_id=self.batch_id,
        )
        self.outcome.results.append(result)
        self.outcome.charged_usd += result.cost_usd or 0.0
        self.outcome.answered += 1
        if row.cache_key is not None and result.ok and self.context.cache is not None:
            self.context.to_cache.append((row.cache_key, result))

    def _again(self, row: Row, exc: ProviderError) -> None:
        if row.attempt < self.max_attempts:
            self.outcome.resend[row.custom_id] = row
        else:
            self._fail(row, exc)

    def _fail(self, row: Row, exc: ProviderError) -> None:
        tries = Tries(made=row.attempt)
        self.outcome.results.append(error_result(row.custom_id, exc, tries, batch_id=self.batch_id))
        self.outcome.failed += 1
