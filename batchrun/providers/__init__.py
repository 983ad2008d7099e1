"""Wire formats (one module each) and the presets that point them at real endpoints."""

from __future__ import annotations

from collections.abc import Mapping

from batchrun.providers.anthropic import AnthropicProvider
from batchrun.providers.base import Auth, Provider, ProviderType
from batchrun.providers.openai import OpenAIProvider

KINDS: dict[str, ProviderType] = {cls.kind: cls for cls in (OpenAIProvider, AnthropicProvider)}
"""The registry of wire formats by `[provider] kind`."""


def make_provider(
    kind: str, base_url: str, api_key: str | None, headers: Mapping[str, str], auth: Auth | None = None
) -> Provider:
    """The adapter for `kind` (a key of `KINDS`)."""
    return KINDS[kind](base_url, api_key, headers, auth)


__all__ = ["KINDS", "Auth", "Provider", "ProviderType", "make_provider"]
