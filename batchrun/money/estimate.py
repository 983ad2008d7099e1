"""`batchrun estimate`: rows, tokens, cost and duration of a job before a single request is sent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from batchrun import humanize
from batchrun.inputs.validate import check_input
from batchrun.job.schema import Job
from batchrun.job.sweep import SweepPromptSet, prompt_set
from batchrun.money.pricing import PriceBook
from batchrun.records import Request, Usage
from batchrun.store.runstore import FinishedIds, RunStore

DEFAULT_OUTPUT_TOKENS = 256  # per row, when the job sets no max_tokens: a guess, and said to be one


@dataclass(frozen=True, slots=True)
class Estimate:
    """What running a job would take. Token counts are estimates from text length, not a tokenizer."""

    rows: int
    to_send: int
    reused: int
    input_tokens: int
    output_tokens: int
    output_bounded: bool  # True when every row has max_tokens, so output_tokens is an upper bound
    cost_usd: float | None
    price_source: str | None
    duration_s: float
    duration_basis: str
    variants: int = 1  # a sweep's combinations: rows counts every input row once per variant
    batch_discount: float = 0.5  # the share of the price a Batch API charges (`[pricing] batch_discount`)
    batch: bool = False  # the job runs through a Batch API (`[batch] enabled`)

    @property
    def batch_cost_usd(self) -> float | None:
        """The same rows through the provider's Batch API."""
        return self.cost_usd * self.batch_discount if self.cost_usd is not None else None

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "rows": self.rows,
            "to_send": self.to_send,
            "answered_by_earlier_run": self.reused,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "output_tokens_is_upper_bound": self.output_bounded,
            "cost_usd": self.cost_usd,
            "batch_cost_usd": self.batch_cost_usd,
            "batch": self.batch,
            "price_source": self.price_source,
            "duration_s": round(self.duration_s, 1),
            "duration_basis": self.duration_basis,
            "variants": self.variants,
        }

    def lines(self) -> list[str]:
        """The estimate as a few human lines."""
        bound = "at most" if self.output_bounded else "about"
        if self.cost_usd is None:
            cost = "unknown: no price for this model (set [pricing] input and output)"
            batch = "unknown"
        else:
            cost = f"{bound} ${self.cost_usd:,.4f}"
            cost += f" ({self.price_source})" if self.price_source else ""
            share = f"{self.batch_discount:.0%} of the live price"
            batch = f"{bound} ${self.batch_cost_usd or 0.0:,.4f} ({share})"
        output_note = (
            "max_tokens per row" if self.output_bounded else f"a guess of {DEFAULT_OUTPUT_TOKENS} per row"
        )
        if self.batch:
            duration = f"within the Batch API's window ({self.duration_basis})"
        else:
            duration = f"about {humanize.duration(self.duration_s, digits=0)}: {self.duration_basis}"
        reused = f", {self.reused:,} answered by an earlier run" if self.reused else ""
        if self.variants > 1:
            reused += f"; {self.rows // self.variants:,} input rows x {self.variants} variants"
        return [
            f"rows:          {self.rows:,} ({self.to_send:,} to send{reused})",
            f"input tokens:  about {self.input_tokens:,} (from text length)",
            f"output tokens: {bound} {self.output_tokens:,} ({output_note})",
            f"cost:          {cost}",
            f"batch cost:    {batch}" + ("; this job's: [batch] enabled" if self.batch else ""),
            f"duration:      {duration}",
        ]


def estimate_job(
    job: Job, *, limit: int | None = None, latency_s: float = 2.0, fresh: bool = False
) -> Estimate:
    """Read and render the whole prompt set (sending nothing) and add up what the run would take; `fresh`:
    as `run --fresh` would, every row counted, answered or not."""
    prompts = prompt_set(job, limit=limit)
    check_input(prompts).enforce()  # the run's own check: bad rows stop an estimate as they stop a run
    done = RunStore(job.output_path).finished_ids() if not fresh else _no_ids()
    prices = PriceBook(
        input=job.pricing.input, output=job.pricing.output, cached_input=job.pricing.cached_input
    )
    rows = reused = to_send = input_tokens = output_tokens = 0
    cost = 0.0
    priced = bounded = True
    sources: set[str] = set()
    for piece in prompts.slices():
        rows += piece.frame.height
        finished = done.contains(piece.frame.get_column("custom_id").to_list())
        for item, skip in zip(piece.items, finished, strict=True):
            if skip:
                reused += 1
                continue
            if not isinstance(item, Request):
                continue  # a row that cannot be sent costs nothing
            to_send += 1
            bounded = bounded and item.output_cap is not None
            out = item.output_cap or DEFAULT_OUTPUT_TOKENS
            input_tokens += item.est_prompt_tokens
            output_tokens += out
            model = item.body.get("model")
            price = prices.price(model)
            if price is None:
                priced = False
                continue
            sources.add(f"{model}: {price.source}")
            cost += price.cost(Usage(prompt_tokens=item.est_prompt_tokens, completion_tokens=out)) or 0.0
    duration, basis = _expected_duration(job, to_send, input_tokens + output_tokens, latency_s)
    return Estimate(
        rows=rows,
        to_send=to_send,
        reused=reused,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        output_bounded=bounded,
        cost_usd=cost if priced else None,
        price_source="; ".join(sorted(sources)) or None,
        duration_s=duration,
        duration_basis=basis,
        variants=len(prompts.variants) if isinstance(prompts, SweepPromptSet) else 1,
        batch_discount=job.pricing.batch_discount,
        batch=job.batch.enabled,
    )


def _no_ids() -> FinishedIds:
    import polars as pl

    empty = pl.Series([], dtype=pl.UInt64)
    return FinishedIds(empty, empty)


def _expected_duration(job: Job, requests: int, tokens: int, latency_s: float) -> tuple[float, str]:
    """The slowest of: concurrency at the assumed latency, the request rate limit, the token rate limit;
    through a Batch API, its completion window."""
    if job.batch.enabled:
        window = job.batch.completion_window
        return float(int(window.rstrip("h")) * 3600), f"completion_window {window}"
    limits = job.limits
    bounds = [
        (
            requests * latency_s / limits.concurrency,
            f"concurrency {limits.concurrency} at an assumed {latency_s:g} s per request (--latency)",
        )
    ]
    if limits.requests_per_minute:
        bounds.append(
            (requests / limits.requests_per_minute * 60, f"{limits.requests_per_minute:g} requests/min")
        )
    if limits.tokens_per_minute:
        bounds.append((tokens / limits.tokens_per_minute * 60, f"{limits.tokens_per_minute:g} tokens/min"))
    seconds, basis = max(bounds)
    return seconds, f"limited by {basis}"
