"""How the emulator's Batch APIs behave: their timing (in seconds, so a test can wait for them) and faults."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = ["DEFAULT_BATCH_CONFIG", "BatchConfig", "ErrorShape"]

ErrorShape = Literal["openai", "dashscope"]
"""How a failed line names its error: `error.code`/`error.message` (OpenAI's documentation, and
DashScope's) or `error.error_code`/`error.error_message` (DashScope's own sample files)."""


def _seconds(value: object) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    )


@dataclass(frozen=True, slots=True)
class BatchConfig:
    """The life of an emulated batch, from creation: `validating` for `validating_s`, then `in_progress` for
    `in_progress_s` (its requests are answered evenly over that time, in a shuffled order), then
    `finalizing` for `finalizing_s` (make it long for a batch "stuck" there), then `completed`.

    `expire_after_s` is the completion window: a batch not through `in_progress` by then ends `expired`,
    with the requests answered so far in its output and the rest as `batch_expired` lines. A cancel
    makes it `cancelling` for `cancelling_s`, then `cancelled`, the same way. `models` (when set) lists the
    models a batch may use: a file naming another is refused at validation, as DashScope refuses models its
    region does not batch. `line_error_rate` is the share of requests (a seeded draw) that fail with a 500
    in the error file; at 1.0 a batch completes with `output_file_id: null`. `metadata_keys` (when set)
    keeps only those metadata keys, as a server that stores only its own (`ds_name`, `ds_description`).
    """

    validating_s: float = 0.05
    in_progress_s: float = 0.2
    finalizing_s: float = 0.05
    cancelling_s: float = 0.05
    expire_after_s: float | None = None
    line_error_rate: float = 0.0
    error_shape: ErrorShape = "openai"
    models: tuple[str, ...] | None = None
    metadata_keys: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        """Check every field; a bad value raises ValueError naming the field."""
        for name in ("validating_s", "in_progress_s", "finalizing_s", "cancelling_s"):
            if not _seconds(getattr(self, name)):
                raise ValueError(
                    f"BatchConfig.{name} must be a finite number >= 0, got {getattr(self, name)!r}"
                )
        expiry = self.expire_after_s
        if expiry is not None and not _seconds(expiry):
            raise ValueError(
                f"BatchConfig.expire_after_s must be None or a finite number >= 0, got {expiry!r}"
            )
        rate = self.line_error_rate
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
            raise ValueError(f"BatchConfig.line_error_rate must be between 0 and 1, got {rate!r}")
        if self.error_shape not in ("openai", "dashscope"):
            raise ValueError(
                f'BatchConfig.error_shape must be "openai" or "dashscope", got {self.error_shape!r}'
            )
        for name in ("models", "metadata_keys"):
            value = getattr(self, name)
            if value is not None and not (
                isinstance(value, tuple) and all(isinstance(v, str) for v in value)
            ):
                raise ValueError(f"BatchConfig.{name} must be None or a tuple of strings, got {value!r}")


DEFAULT_BATCH_CONFIG = BatchConfig()
"""Batches that take about a third of a second, without faults."""
