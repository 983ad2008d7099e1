"""What the Batch API clients take and give: tags, parts, batches as a poll saw them, results per line."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from batchrun.errors import ProviderError
from batchrun.records import Reply

__all__ = [
    "DONE_STATES",
    "BatchInfo",
    "Counts",
    "FileLimits",
    "LineResult",
    "Part",
    "Refused",
    "State",
    "Tag",
    "Unanswered",
]

State = Literal[
    "validating",
    "in_progress",
    "finalizing",
    "cancelling",
    "completed",
    "failed",
    "expired",
    "cancelled",
    "unknown",
]
"""A batch's status in OpenAI's words, for both APIs (Anthropic's `ended` is told apart by its counts)."""

DONE_STATES: frozenset[State] = frozenset({"completed", "failed", "expired", "cancelled"})
"""States a batch never leaves: its results, if any, can be downloaded."""

Unanswered = Literal["expired", "cancelled", "missing"]
"""Why a request of a batch got no answer: the window ended, the batch was cancelled, or the results do not
name it at all. None of these is billed; the engine sends the request again."""

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,40}$")


@dataclass(frozen=True, slots=True)
class FileLimits:
    """What one batch may hold: requests, bytes of the whole upload, bytes of one request's line."""

    max_requests: int
    max_bytes: int
    max_line_bytes: int

    def __post_init__(self) -> None:
        """Every limit is a positive integer, and a line fits in a file."""
        for name in ("max_requests", "max_bytes", "max_line_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.max_line_bytes > self.max_bytes:
            raise ValueError(
                f"max_line_bytes ({self.max_line_bytes}) cannot exceed max_bytes ({self.max_bytes})"
            )


@dataclass(frozen=True, slots=True)
class Tag:
    """What a batch is tagged with, so a batch created but never recorded is found again by listing.

    `job` names the job (any text; it is cut to 200 characters), `run` the run (1-40 of `A-Za-z0-9_-`:
    stable across resumes of the same output, e.g. a hash of its run folder), `part` the part's index, and
    `requests` how many requests the part holds: Anthropic's batches carry no metadata, so there the count
    and the creation time are all a batch can be recognised by.
    """

    job: str
    run: str
    part: int
    requests: int

    def __post_init__(self) -> None:
        """`run` must be a short token (it goes into metadata values that providers bound)."""
        if not _TOKEN.match(self.run):
            raise ValueError(f"Tag.run must be 1-40 characters of A-Z a-z 0-9 _ -, got {self.run!r}")
        if self.part < 0 or self.requests < 1:
            raise ValueError(f"Tag.part must be >= 0 and Tag.requests >= 1, got {self.part}, {self.requests}")

    @property
    def key(self) -> tuple[str, int]:
        """(run, part): what identifies the batch among those of the same job."""
        return self.run, self.part


@dataclass(frozen=True, slots=True)
class Part:
    """One upload's worth of requests, written to `path` in the API's own format (JSONL or a JSON body).

    `index` counts the parts of one `split` from its `first_index`; `model` is the model every request in
    it names; `custom_ids` are ours, in file order (Anthropic's wire ids may differ: see `wire_id`).
    """

    index: int
    model: str | None
    path: Path
    custom_ids: tuple[str, ...]
    size: int


@dataclass(frozen=True, slots=True)
class Refused:
    """A request no batch can carry (over the line limit, or refused by the wire format): `error` says why."""

    custom_id: str
    error: ProviderError


@dataclass(frozen=True, slots=True)
class Counts:
    """A batch's request counts. OpenAI's `failed` includes expired and cancelled requests (it does not tell
    them apart); Anthropic's counts are all 0 but `processing` until the batch ends."""

    total: int | None = None
    succeeded: int = 0
    failed: int = 0
    expired: int = 0
    cancelled: int = 0
    processing: int = 0


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """A batch as one poll saw it.

    `status` is the provider's own word (bounded); `state` the same in OpenAI's vocabulary; `done` is True
    once nothing more will change. `error` says why a batch failed as a whole (e.g. its file was refused at
    validation): it is classified like a request's error, and applies to every request in the batch.
    `tag_key` is the `Tag.key` read back from the metadata (None when it carries none of ours: always on
    Anthropic, whose batches have no metadata).
    """

    id: str
    status: str
    state: State
    counts: Counts
    created_at: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    results_url: str | None = None
    tag_key: tuple[str, int] | None = None
    error: ProviderError | None = None

    @property
    def done(self) -> bool:
        """True when the batch is over: download what it has, resend what it did not answer."""
        return self.state in DONE_STATES


@dataclass(frozen=True, slots=True)
class LineResult:
    """What a batch did with one request: a parsed `reply`, a classified `error`, or why `unanswered`."""

    custom_id: str
    reply: Reply | None = None
    error: ProviderError | None = None
    unanswered: Unanswered | None = None
