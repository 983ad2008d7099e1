"""Prices: the built-in table with its tiers and cached price, vendor prefixes, and the job's overrides."""

from __future__ import annotations

import pytest

from batchrun.money.pricing import builtin_prices, find_price, model_key
from batchrun.records import Usage

M = 1e-6  # prices are per 1M tokens


def cost(model: str, usage: Usage, **override: float) -> float | None:
    """The cost of `usage` for `model` with optional `[pricing]` keys; fails if no price is found."""
    price = find_price(model, **override)
    assert price is not None
    return price.cost(usage)


def test_qwen3_max_first_tier_ends_at_32000_inclusive() -> None:
    """32,000 prompt tokens bill at the first tier; 32,001 bill the whole request at the second."""
    assert cost("qwen3-max", Usage(32000, 1000)) == pytest.approx((32000 * 1.2 + 1000 * 6.0) * M)
    assert cost("qwen3-max", Usage(32001, 1000)) == pytest.approx((32001 * 2.4 + 1000 * 12.0) * M)


def test_qwen3_max_top_tier_and_past_every_edge() -> None:
    """128,001 to 252,000 tokens bill at the third tier, and a count past the last edge stays there."""
    assert cost("qwen3-max", Usage(200_000, 10)) == pytest.approx((200_000 * 3.0 + 10 * 15.0) * M)
    assert cost("qwen3-max", Usage(300_000, 10)) == pytest.approx((300_000 * 3.0 + 10 * 15.0) * M)


def test_cached_input_tokens_bill_at_the_cached_price() -> None:
    """Cached prompt tokens cost the cached price, the rest of the prompt the input price."""
    usage = Usage(prompt_tokens=1000, completion_tokens=100, cached_tokens=400)
    assert cost("qwen3-max", usage) == pytest.approx((600 * 1.2 + 400 * 0.24 + 100 * 6.0) * M)
    assert cost("qwen-max", usage) == pytest.approx((600 * 1.6 + 400 * 0.32 + 100 * 6.4) * M)


def test_cached_count_above_the_prompt_is_capped() -> None:
    """A cached count larger than the prompt count is treated as the whole prompt cached."""
    usage = Usage(prompt_tokens=100, completion_tokens=0, cached_tokens=500)
    assert cost("qwen3-max", usage) == pytest.approx(100 * 0.24 * M)


@pytest.mark.parametrize(
    "model", ["alibaba/qwen3-max-256k", "qwen3-max-256k", "Qwen3-Max", "vendor/x/qwen3-max"]
)
def test_vendor_prefix_and_case_find_the_same_price(model: str) -> None:
    """A vendor prefix and upper case are ignored, and `qwen3-max-256k` is priced as qwen3-max."""
    assert find_price(model) is builtin_prices()["qwen3-max"]


def test_model_key_strips_the_vendor_prefix() -> None:
    """`alibaba/qwen3-max-256k` is looked up as `qwen3-max-256k`."""
    assert model_key("alibaba/Qwen3-Max-256K") == "qwen3-max-256k"


def test_builtin_price_names_its_source() -> None:
    """Every built-in price records where it comes from and when."""
    assert "Alibaba Cloud Model Studio" in builtin_prices()["qwen-max"].source
    assert "recorded 2026-11-22" in builtin_prices()["qwen-max"].source


@pytest.mark.parametrize("model", ["my-local-finetune", "gpt-4o-mini", None])
def test_unknown_model_has_no_price(model: str | None) -> None:
    """A model not in the table (or no model) has no price: None, never a zero price."""
    assert find_price(model) is None


def test_job_pricing_prices_an_unknown_model() -> None:
    """Input and output from the job price a model the table lacks; cached input defaults to input."""
    usage = Usage(prompt_tokens=1000, completion_tokens=100, cached_tokens=400)
    assert cost("my-finetune", usage, input=2.0, output=4.0) == pytest.approx((1000 * 2.0 + 100 * 4.0) * M)
    assert cost("my-finetune", usage, input=2.0, output=4.0, cached_input=0.5) == pytest.approx(
        (600 * 2.0 + 400 * 0.5 + 100 * 4.0) * M
    )


def test_half_a_price_for_an_unknown_model_is_no_price() -> None:
    """Only an output (or only an input) price for an unknown model gives None rather than a made-up cost."""
    assert find_price("my-finetune", output=4.0) is None
    assert find_price("my-finetune", input=1.0, cached_input=0.1) is None


def test_full_override_replaces_every_tier() -> None:
    """Input, output and cached input from the job replace the built-in prices in every tier."""
    price = find_price("qwen3-max", input=1.0, output=2.0, cached_input=0.1)
    assert price is not None
    assert "the job's [pricing]" in price.source
    for prompt in (1000, 100_000, 200_000):
        usage = Usage(prompt_tokens=prompt, completion_tokens=10, cached_tokens=100)
        assert price.cost(usage) == pytest.approx(((prompt - 100) * 1.0 + 100 * 0.1 + 10 * 2.0) * M)


def test_partial_override_keeps_the_rest_of_the_table() -> None:
    """Only `output` from the job keeps the table's tiered input and cached prices."""
    usage = Usage(prompt_tokens=40_000, completion_tokens=100, cached_tokens=1000)
    assert cost("qwen3-max", usage, output=9.0) == pytest.approx((39_000 * 2.4 + 1000 * 0.48 + 100 * 9.0) * M)


def test_overriding_input_alone_drops_the_builtin_cache_discount() -> None:
    """A job that sets its own input price but no cached price bills cached tokens at that input price."""
    usage = Usage(prompt_tokens=1000, completion_tokens=0, cached_tokens=500)
    assert cost("qwen3-max", usage, input=2.0) == pytest.approx(1000 * 2.0 * M)


@pytest.mark.parametrize(
    "usage",
    [Usage(), Usage(prompt_tokens=10), Usage(completion_tokens=10), Usage(cached_tokens=5, total_tokens=20)],
)
def test_cost_is_none_when_usage_lacks_counts(usage: Usage) -> None:
    """Without both prompt and completion counts the cost is unknown (None), not 0."""
    assert cost("qwen3-max", usage) is None


def test_zero_usage_costs_zero() -> None:
    """A reply with zero tokens reported costs exactly 0, which is different from unknown."""
    assert cost("qwen3-max", Usage(prompt_tokens=0, completion_tokens=0)) == 0.0
