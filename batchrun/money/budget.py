"""The run's spending cap (`[limits] max_cost_usd`): reservations before sending, settlement after."""

from __future__ import annotations

from typing import TYPE_CHECKING

from batchrun.records import Usage

if TYPE_CHECKING:
    from batchrun.money.pricing import PriceBook
    from batchrun.records import Request


class Budget:
    """A spending cap: each request reserves its worst-case cost before it is sent, and settles after.

    A request is sent only if what is spent, plus what requests in flight have reserved, plus its own
    reservation stays within the cap, so the run can overshoot by no more than the requests in flight
    cost beyond their reservations.
    """

    def __init__(self, cap_usd: float, spent_usd: float = 0.0) -> None:
        self.cap_usd = cap_usd
        self.spent_usd = spent_usd
        self.reserved_usd = 0.0

    def try_reserve(self, amount_usd: float) -> bool:
        """Reserve `amount_usd` if it fits under the cap; False (and nothing reserved) if it does not."""
        if self.spent_usd + self.reserved_usd + amount_usd > self.cap_usd:
            return False
        self.reserved_usd += amount_usd
        return True

    def hold(self, amount_usd: float) -> None:
        """Reserve `amount_usd` whatever the cap: what an earlier run committed (its batches in flight)."""
        self.reserved_usd += amount_usd

    def release(self, reserved_usd: float) -> None:
        """Release a reservation (the request is done, or was cancelled)."""
        self.reserved_usd = max(0.0, self.reserved_usd - reserved_usd)

    def spend(self, amount_usd: float | None) -> None:
        """Count what a finished request really cost."""
        self.spent_usd += amount_usd or 0.0


def worst_case_usd(request: Request, prices: PriceBook) -> float:
    """The most `request` can cost: its prompt, and its output cap (twice the expected output without one)."""
    output = request.output_cap or 2 * request.est_output_tokens
    worst = Usage(prompt_tokens=request.est_prompt_tokens, completion_tokens=output)
    return prices.cost(request.body.get("model"), worst) or 0.0
