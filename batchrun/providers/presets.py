"""Presets for the providers batchrun knows: each fills `kind`, `base_url` and `api_key_env` of `[provider]`.

Any field a job sets itself wins over the preset's, so a preset is a starting point, never a cage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Preset:
    """A named provider endpoint."""

    name: str
    kind: str
    base_url: str | None  # None: the emulator, started in-process on a free loopback port
    api_key_env: str | None
    description: str
    example_model: str = ""  # a model the endpoint serves, shown by `batchrun providers`
    api_key_required: bool = True  # local servers (vLLM, Ollama) accept requests without a key
    batch: str = "no Batch API documented: send live"  # what `[batch] enabled` gets there

    def fields(self) -> dict[str, Any]:
        """The `[provider]` keys this preset fills."""
        return {
            "kind": self.kind,
            "base_url": self.base_url,
            "api_key_env": self.api_key_env,
            "api_key_required": self.api_key_required,
        }


_DASHSCOPE = "Alibaba Cloud Model Studio (DashScope), OpenAI-compatible mode"
_DASHSCOPE_BATCH = "/batches at 50%, completion_window 24h-336h, 50,000 lines and 500 MB a file"

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "emulator",
            "openai",
            None,
            None,
            "batchrun's built-in emulator (no key, no network)",
            "qwen3-max",
            api_key_required=False,
            batch="both Batch APIs, emulated: a batch takes about a second",
        ),
        Preset(
            "maxtoken", "openai", "https://api.maxtoken.io/v1", "MAXTOKEN_API_KEY", "maxtoken", "qwen3-max"
        ),
        Preset("aimlapi", "openai", "https://api.aimlapi.com/v1", "AIMLAPI_API_KEY", "AI/ML API", "qwen-max"),
        Preset(
            "siray", "openai", "https://api.siray.ai/v1", "SIRAY_API_KEY", "siray", "alibaba/qwen3-max-256k"
        ),
        Preset(
            "dashscope-intl",
            "openai",
            "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
            "DASHSCOPE_API_KEY",
            f"{_DASHSCOPE}, Singapore",
            "qwen3-max",
            batch=f"{_DASHSCOPE_BATCH}; models qwen-max, qwen-plus, qwen-flash, qwen-turbo (not qwen3-max)",
        ),
        Preset(
            "dashscope-cn",
            "openai",
            "https://dashscope.aliyuncs.com/compatible-mode/v1",
            "DASHSCOPE_API_KEY",
            f"{_DASHSCOPE}, Beijing",
            "qwen3-max",
            batch=f"{_DASHSCOPE_BATCH}; models qwen3-max, qwen-max, qwen-plus, qwen-flash, qwen-turbo",
        ),
        Preset(
            "dashscope-us",
            "openai",
            "https://dashscope-us.aliyuncs.com/compatible-mode/v1",
            "DASHSCOPE_API_KEY",
            f"{_DASHSCOPE}, US",
            "qwen3-max",
            batch=f"{_DASHSCOPE_BATCH}; which models this region batches is not documented: try one",
        ),
        Preset(
            "qwen-cloud-anthropic",
            "anthropic",
            "https://dashscope-intl.aliyuncs.com/apps/anthropic",
            "DASHSCOPE_API_KEY",
            "Qwen Cloud (Model Studio), Anthropic-compatible mode, Singapore",
            "qwen3-max",
        ),
        Preset(
            "anthropic",
            "anthropic",
            "https://api.anthropic.com",
            "ANTHROPIC_API_KEY",
            "Anthropic",
            "claude-sonnet-4-5",
            batch="Message Batches at 50%, 100,000 requests or 256 MB a batch, results within 24 h",
        ),
        Preset(
            "openai",
            "openai",
            "https://api.openai.com/v1",
            "OPENAI_API_KEY",
            "OpenAI",
            "gpt-4o-mini",
            batch="/batches at 50%, completion_window 24h, 50,000 lines and 200 MB a file",
        ),
        Preset(
            "vllm",
            "openai",
            "http://127.0.0.1:8000/v1",
            "VLLM_API_KEY",
            "a local vLLM server",
            api_key_required=False,
        ),
        Preset(
            "ollama",
            "openai",
            "http://127.0.0.1:11434/v1",
            None,
            "a local Ollama server",
            api_key_required=False,
        ),
        Preset(
            "llamacpp",
            "openai",
            "http://127.0.0.1:8080/v1",
            None,
            "a local llama.cpp server",
            api_key_required=False,
        ),
    )
}
