"""Wire formats (one module each) and the presets that point them at real endpoints."""

from __future__ import annotations

from collections.abc import Mapping

from batchrun.providers.base import Provider
from batchrun.providers.openai import OpenAIProvider

KINDS: dict[str, type[OpenAIProvider]] = {OpenAIProvider.kind: OpenAIProvider}


def make_provider(kind: str, base_url: str, api_key: str | None, headers: Mapping[str, str]) -> Provider:
    """The adapter for `kind` (a key of `KINDS`)."""
    return KINDS[kind](base_url, api_key, headers)


__all__ = ["KINDS", "Provider", "make_provider"]
