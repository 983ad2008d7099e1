"""Prices and the cost of one request.

The table is data (`prices.toml`, with the source and date of each price), read once on first use. Cost is
computed from the usage the provider reported; where no price is known the cost is None, never 0.
"""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from batchrun.records import Usage

PER_TOKEN = 1e-6  # prices are quoted per 1M tokens


@dataclass(frozen=True, slots=True)
class Tier:
    """Prices (USD per 1M tokens) for requests whose input is at most `up_to` tokens."""

    up_to: int | None
    input: float
    output: float
    cached_input: float


@dataclass(frozen=True, slots=True)
class Price:
    """A model's price: one or more tiers, and where the numbers come from."""

    tiers: tuple[Tier, ...]
    source: str

    def cost(self, usage: Usage) -> float | None:
        """USD for one request's usage; None when the usage lacks the counts needed."""
        if usage.prompt_tokens is None or usage.completion_tokens is None:
            return None
        tier = self.tier_for(usage.prompt_tokens)
        cached = min(usage.cached_tokens or 0, usage.prompt_tokens)
        return PER_TOKEN * (
            (usage.prompt_tokens - cached) * tier.input
            + cached * tier.cached_input
            + usage.completion_tokens * tier.output
        )

    def tier_for(self, prompt_tokens: int) -> Tier:
        """The tier a request with this many input tokens is billed at (the last one past every edge)."""
        for tier in self.tiers:
            if tier.up_to is None or prompt_tokens <= tier.up_to:
                return tier
        return self.tiers[-1]


@functools.cache
def builtin_prices() -> dict[str, Price]:
    """The built-in table, keyed by model name."""
    text = resources.files("batchrun.money").joinpath("prices.toml").read_text(encoding="utf-8")
    models: dict[str, Any] = tomllib.loads(text)["models"]
    table: dict[str, Price] = {}
    for name, entry in models.items():
        if "same_as" not in entry:
            table[name] = _price(entry, f"{entry['source']}, recorded {entry['recorded']}")
    for name, entry in models.items():
        if "same_as" in entry:
            table[name] = table[entry["same_as"]]
    return table


def _price(entry: dict[str, Any], source: str) -> Price:
    raw_tiers = entry.get("tiers") or [entry]
    tiers = tuple(
        Tier(
            up_to=t.get("up_to"),
            input=t["input"],
            output=t["output"],
            cached_input=t.get("cached_input", t["input"]),
        )
        for t in raw_tiers
    )
    return Price(tiers, source)


def model_key(model: str) -> str:
    """The table key for a model name as providers spell it: `alibaba/qwen3-max-256k` -> `qwen3-max-256k`."""
    return model.rsplit("/", 1)[-1].lower()


def find_price(
    model: str | None,
    *,
    input: float | None = None,
    output: float | None = None,
    cached_input: float | None = None,
) -> Price | None:
    """The price for `model`: the job's `[pricing]` keys over the built-in entry; None if nothing is known.

    A job may set only some keys (say, output) and take the rest from the table.
    """
    builtin = builtin_prices().get(model_key(model)) if model else None
    if input is None and output is None and cached_input is None:
        return builtin
    if builtin is None:
        if input is None or output is None:
            return None  # half a price would make a made-up cost
        tier = Tier(None, input, output, input if cached_input is None else cached_input)
        return Price((tier,), "the job's [pricing]")
    tiers = tuple(
        Tier(
            t.up_to,
            t.input if input is None else input,
            t.output if output is None else output,
            _cached(t.cached_input, input, cached_input),
        )
        for t in builtin.tiers
    )
    return Price(tiers, f"the job's [pricing] over {builtin.source}")


def _cached(builtin: float, input: float | None, cached_input: float | None) -> float:
    # A job that sets its own input price but no cached price gets no cache discount it did not state.
    if cached_input is not None:
        return cached_input
    return builtin if input is None else input


class PriceBook:
    """Prices by model for one job (its `[pricing]` over the built-in table), looked up once per model."""

    def __init__(
        self, *, input: float | None = None, output: float | None = None, cached_input: float | None = None
    ) -> None:
        self._overrides = {"input": input, "output": output, "cached_input": cached_input}
        self._prices: dict[str | None, Price | None] = {}

    def price(self, model: str | None) -> Price | None:
        """The price for `model`, or None when nothing is known."""
        if model not in self._prices:
            self._prices[model] = find_price(model, **self._overrides)
        return self._prices[model]

    def cost(self, model: str | None, usage: Usage) -> float | None:
        """USD for one request's usage; None when the price or the counts are unknown."""
        price = self.price(model)
        return price.cost(usage) if price is not None else None
