"""What a run checks before it sends its first request, shared by `batchrun run` and `batchrun validate`.

In order: the prompt set (the input file, its columns, the template's placeholders), the API key (set when
required, no control or non-ASCII character), a price for every model when `[limits] max_cost_usd` is set,
and every row of the input read and checked (`batchrun.inputs.validate`). Any problem raises a
`UsageError` or `InputError` (exit 2) naming the file, key, variable or rows to fix; bad rows that
`[input] on_bad_row` lets through are a warning.
"""

from __future__ import annotations

from dataclasses import dataclass

from batchrun.errors import UsageError
from batchrun.inputs.prompts import PromptSet
from batchrun.inputs.validate import InputReport, check_input
from batchrun.job.schema import Job
from batchrun.job.sweep import prompt_set, request_models
from batchrun.money.pricing import PriceBook
from batchrun.net.endpoint import api_key


@dataclass(frozen=True, slots=True)
class Checked:
    """A job that passed the checks: its prompt set (which knows its row count), key and prices."""

    prompts: PromptSet
    key: str | None
    prices: PriceBook
    input: InputReport


def preflight(job: Job, *, limit: int | None = None) -> Checked:
    """Run every check a run makes before sending; raise (exit 2) on a problem, warn on tolerated bad rows."""
    prompts = prompt_set(job, limit=limit)
    key = api_key(job)
    if key is not None and not key.isascii():
        # httpx refused it with a traceback; the key itself is never shown, only where to look.
        at = next(i for i, c in enumerate(key) if not c.isascii()) + 1
        raise UsageError(
            f"{job.source}: the key in {job.provider.api_key_env} holds a character that is not ASCII (its "
            f"character {at}; a pasted ellipsis or quote?), which no HTTP header can carry: set it again"
        )
    prices = PriceBook(
        input=job.pricing.input, output=job.pricing.output, cached_input=job.pricing.cached_input
    )
    if job.limits.max_cost_usd is not None:
        for model in request_models(job):  # a sweep's every model needs its price
            if prices.price(model) is None:
                raise UsageError(
                    f"{job.source}: [limits] max_cost_usd needs a price, and none is known for model "
                    f"{model!r}: set [pricing] input and output"
                )
    report = check_input(prompts)  # every row, before the first request: a bad one stops the job here
    report.enforce()
    return Checked(prompts, key, prices, report)
