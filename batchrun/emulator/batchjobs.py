"""The life of an emulated batch, shared by both Batch APIs: its phase and progress at a moment.

A batch's requests are all answered when it is created (by the same code as live replies, see `batches` and
`msgbatches`), in a shuffled order; time only decides how many of them count as done, and which phase the
batch shows. So the outcome never depends on when a client polls, only on the config, the seed and the
requests: a test sees the same batch every run.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from batchrun.emulator.batchconfig import BatchConfig

__all__ = ["ACTIVE", "TERMINAL", "BatchJob", "Line", "draw_error", "listing", "page", "read_body", "shuffled"]

ACTIVE = ("validating", "in_progress", "finalizing")
"""Phases a batch can be cancelled in."""

TERMINAL = ("completed", "failed", "expired", "cancelled")
"""Phases a batch never leaves."""


@dataclass(frozen=True, slots=True)
class Line:
    """One request's outcome: its custom_id, whether it succeeded, and its rendered output line."""

    custom_id: str
    ok: bool
    data: bytes


def shuffled(lines: Sequence[Line], seed: int, number: int) -> list[Line]:
    """The order the `number`th batch of an emulator finishes its requests in: a seeded shuffle (real
    batches never keep input order)."""
    order = list(lines)
    random.Random(f"{seed}:{number}").shuffle(order)
    return order


def draw_error(seed: int, key: str, rate: float) -> bool:
    """True when the request with this key fails by `line_error_rate` (a seeded draw, stable across runs)."""
    return rate > 0 and random.Random(f"{seed}:batch:{key}").random() < rate


def page(
    ids: Iterable[str], limit: int, after: str | None, before: str | None = None
) -> tuple[list[str], bool]:
    """A page of batch ids (given oldest first), newest first: the `limit` after the cursor `after`
    (older ones), or the `limit` just before `before` (newer ones); and whether more follow."""
    newest = list(reversed(list(ids)))
    if after is not None:
        newest = newest[newest.index(after) + 1 :] if after in newest else []
    if before is not None:
        newest = newest[: newest.index(before)] if before in newest else []
        return newest[-limit:], len(newest) > limit
    return newest[:limit], len(newest) > limit


def listing(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """A list reply: the objects, whether more follow, and the first and last ids (the cursors)."""
    return {
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


async def read_body(request: web.Request, limit: int) -> bytes | None:
    """The request's body, or None when it is over `limit` bytes (aiohttp's own cap is 1 MiB: too small)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class BatchJob:
    """One batch: when it was created, cancelled, and its requests' outcomes in the order they finish.

    Phases follow `BatchConfig` (validating -> in_progress -> finalizing -> completed, or failed when
    `refusal` is set, expired past the window, cancelling -> cancelled after a cancel). `done(now)` is how
    many requests have finished by then, evenly over `in_progress_s`.
    """

    def __init__(
        self,
        batch_id: str,
        lines: list[Line],
        config: BatchConfig,
        refusal: dict[str, Any] | None = None,
        now: float | None = None,
    ) -> None:
        """`lines` in the order they finish; `refusal` (an error object): the file fails validation."""
        self.id = batch_id
        self.lines = lines
        self.config = config
        self.refusal = refusal
        self.created = time.monotonic() if now is None else now
        self.created_at = int(time.time())  # what the API shows; the phases run on the monotonic clock
        self.cancel_at: float | None = None
        self._ok = list(itertools.accumulate((line.ok for line in lines), initial=0))

    @property
    def total(self) -> int:
        """How many requests the batch holds."""
        return len(self.lines)

    def phase(self, now: float) -> str:
        """The batch's status at `now` (OpenAI's names)."""
        config = self.config
        t = now - self.created
        if self.cancel_at is not None:
            return "cancelling" if now < self.cancel_at + config.cancelling_s else "cancelled"
        if t < config.validating_s:
            return "validating"
        if self.refusal is not None:
            return "failed"
        worked = config.validating_s + config.in_progress_s
        expiry = config.expire_after_s
        if expiry is not None and expiry < worked and t >= expiry:
            return "expired"
        if t < worked:
            return "in_progress"
        return "finalizing" if t < worked + config.finalizing_s else "completed"

    def done(self, now: float) -> int:
        """How many requests have finished by `now` (the work stops at a cancel or at the window's end)."""
        if self.refusal is not None:
            return 0
        config = self.config
        worked = self.created + config.validating_s + config.in_progress_s
        stop = worked
        if self.cancel_at is not None:
            stop = min(stop, self.cancel_at)
        if config.expire_after_s is not None:
            stop = min(stop, self.created + config.expire_after_s)
        at = min(now, stop)
        if at >= worked:  # compared as times, not as a ratio: rounding must not leave one request behind
            return self.total
        elapsed = at - self.created - config.validating_s
        return int(self.total * elapsed / config.in_progress_s) if elapsed > 0 else 0

    def succeeded(self, done: int) -> int:
        """How many of the first `done` requests to finish succeeded."""
        return self._ok[done]

    def cancel(self, now: float) -> bool:
        """Start cancelling; False when the batch is past cancelling (a cancel already started is kept)."""
        phase = self.phase(now)
        if phase in ("cancelling", "cancelled"):
            return True
        if phase not in ACTIVE:
            return False
        self.cancel_at = now
        return True

    def ended_after(self) -> float:
        """Seconds from creation to the moment the batch ends (or will, if nothing changes)."""
        config = self.config
        if self.cancel_at is not None:
            return self.cancel_at - self.created + config.cancelling_s
        if self.refusal is not None:
            return config.validating_s
        worked = config.validating_s + config.in_progress_s
        if config.expire_after_s is not None and config.expire_after_s < worked:
            return config.expire_after_s
        return worked + config.finalizing_s

    def started(self) -> bool:
        """True when the batch got past validation (whatever happened after)."""
        if self.refusal is not None:
            return False
        validated = self.created + self.config.validating_s
        return self.cancel_at is None or self.cancel_at >= validated

    def moment(self, offset_s: float) -> int:
        """A Unix time `offset_s` after the batch was created, as the API shows its timestamps."""
        return self.created_at + int(offset_s)
