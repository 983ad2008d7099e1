"""The seam between a run and the engine that answers its requests.

A run (`batchrun.engines.run`) reads and renders the input, skips rows already answered, serves cached
answers, journals results and assembles the output. Between the two sits an `Engine`: it takes the
prepared requests from one stream and puts a `Result` for each on another, by whatever means: the live
engine sends them one by one under the run's limits; the batch engine gathers them into a provider's Batch
API. What the two share beyond the streams (the job, the provider, prices and budget, the counts, the
stop) is the `RunContext`. Every engine makes its results with `batchrun.engines.outcomes`, so a row is
parsed, priced and recorded the same way whichever engine answered it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

from batchrun.engines.outcomes import Counters
from batchrun.money.budget import Budget, worst_case_usd
from batchrun.net.endpoint import fatal_message

if TYPE_CHECKING:
    from pathlib import Path

    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from batchrun.errors import ProviderError
    from batchrun.job.schema import Job
    from batchrun.money.pricing import PriceBook
    from batchrun.providers.base import Provider
    from batchrun.records import Request, Result
    from batchrun.report.progress import Snapshot
    from batchrun.store.cache import ResponseCache
    from batchrun.store.runstore import FinishedIds


class RunContext:
    """What a run shares with its engine: the job, provider and prices, the budget, the counts, the stop."""

    def __init__(
        self,
        job: Job,
        provider: Provider,
        prices: PriceBook,
        run_dir: Path,
        cache: ResponseCache | None = None,
        *,
        base_url: str = "",
        api_key: str | None = None,
    ) -> None:
        self.job = job
        self.provider = provider
        self.prices = prices
        self.cache = cache
        self.run_dir = run_dir
        # The endpoint's base (the emulator's port, for its preset): for engines that call more than chat
        # (Batch APIs) or send from other processes (Ray workers).
        self.base_url = base_url
        self.api_key = api_key
        # Set by the run before the engine starts: rows answered by earlier runs, and a way to render
        # given rows again (an engine that must resend rows it no longer holds, e.g. a batch that expired).
        self.finished: FinishedIds | None = None
        self.rerender: Callable[[set[str]], Iterator[Request]] | None = None
        self.counters = Counters()
        self.budget: Budget | None = None
        self.stop_reason: str | None = None
        self.draining = False  # no new requests: an interrupt, the budget or a fatal error
        self.to_cache: list[tuple[str, Result]] = []  # answers the writer stores in the cache

    def drain(self, reason: str) -> None:
        """Send nothing new; let what is in flight finish; the run then stops (exit 3) with `reason`."""
        if self.stop_reason is None:
            self.stop_reason = f"{reason}\nWhat finished is saved in {self.run_dir}; rerun to resume."
        self.draining = True

    def explain(self, text: str) -> None:
        """Add a line to the reason the run stops with (what an engine leaves behind: batches running)."""
        if self.stop_reason is not None:
            self.stop_reason = f"{self.stop_reason}\n{text}"

    def fail(self, exc: ProviderError) -> None:
        """A fatal error (bad key, unpaid account, unknown model): the run stops, naming what to fix.

        The engine stops its own work; the run stops feeding it.
        """
        self.drain(fatal_message(self.job, exc))

    def reserve(self, request: Request, discount: float = 1.0) -> float | None:
        """Reserve the request's worst-case cost under `max_cost_usd`; None (and drain) when it won't fit."""
        if self.budget is None:
            return 0.0
        amount = worst_case_usd(request, self.prices) * discount
        if self.budget.try_reserve(amount):
            return amount
        budget = self.budget
        self.drain(
            f"Budget reached: ${budget.spent_usd:.4f} spent and ${budget.reserved_usd:.4f} in flight of "
            f"[limits] max_cost_usd = ${budget.cap_usd:g}. Raise it and rerun to go on."
        )
        return None

    def settle(self, reserved_usd: float, charged_usd: float | None) -> None:
        """A request is done: release its reservation and count what it was charged."""
        if self.budget is not None:
            self.budget.release(reserved_usd)
            self.budget.spend(charged_usd)

    def remember(self, request: Request, result: Result) -> None:
        """Keep a successful answer for the response cache (the writer stores it with the journal line)."""
        if self.cache is not None and result.ok:
            self.to_cache.append((self.cache.key(request), result))


class Engine(Protocol):
    """Answers the requests of one run (see the module docstring)."""

    async def run(
        self, requests: MemoryObjectReceiveStream[Request], results: MemoryObjectSendStream[Result]
    ) -> None:
        """Take requests until the stream ends; put one result each on `results` (closing both at the end).

        A row the engine could not finish (a stop) gets no result: the next run sends it again. Returns
        early when `RunContext.draining` is set and its work in flight is done.
        """
        ...

    def interrupt(self) -> str:
        """The first Ctrl+C: no new work; what is in flight may finish. Returns what it waits for."""
        ...

    def abort(self) -> None:
        """The second Ctrl+C: stop now (answers already received are still journaled)."""
        ...

    def describe(self, snapshot: Snapshot) -> Snapshot:
        """The snapshot with the engine's own state filled in (in flight, limiter, batches)."""
        ...
