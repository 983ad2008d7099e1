"""The protocol both Batch API clients implement, and what they share: reading result files line by line,
matching lines to the requests sent, classifying an error that has no HTTP status, and a create that is
never sent twice for one batch."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Collection, Hashable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import anyio
import orjson

from batchrun.errors import ErrorClass, ProviderError
from batchrun.limits.retry import FATAL_CODES, ROW_CODES, classify
from batchrun.providers.batchapi.control import Retry, scrub
from batchrun.providers.batchapi.records import BatchInfo, LineResult, Part, Tag, Unanswered
from batchrun.records import Request

__all__ = [
    "CLOCK_SKEW_S",
    "MAX_RESULT_LINE_BYTES",
    "BatchAPI",
    "Matcher",
    "create_safely",
    "dumps",
    "jsonl_objects",
    "line_error",
    "page_of",
]

CLOCK_SKEW_S = 300.0
"""How far a server's clock may be from ours when a batch is recognised by its creation time."""

MAX_RESULT_LINE_BYTES = 64 * 1024 * 1024
"""The longest result line read: no answer needs more; a longer one is skipped, and its request resent."""

UNANSWERED_CODES: dict[str, Unanswered] = {
    "batch_expired": "expired",
    "expired": "expired",
    "batch_cancelled": "cancelled",
    "batch_canceled": "cancelled",
    "cancelled": "cancelled",
    "canceled": "cancelled",
}
"""Codes of result lines for requests that never ran (OpenAI documents `batch_expired`)."""

LINE_ROW_CODES = frozenset({"InvalidParameter", "invalid_request_error", "invalid_request"})
"""Codes of a line that failed for its own content (DashScope documents `InvalidParameter` as a 400)."""


class BatchAPI(Protocol):
    """One provider's Batch API, for the batch engine (see the package docstring for the order of calls)."""

    kind: ClassVar[str]
    envelope: tuple[bytes, bytes, bytes]
    extension: str

    def group(self, request: Request) -> Hashable:
        """Requests that may share a batch have the same group."""
        ...

    def line(self, request: Request) -> bytes:
        """The request as one line of an upload; ProviderError when this API cannot carry it."""
        ...

    async def submit(self, part: Part, tag: Tag) -> BatchInfo:
        """Upload a part and create its tagged batch; a create whose answer was lost is found, not redone."""
        ...

    async def retrieve(self, batch_id: str) -> BatchInfo:
        """The batch now."""
        ...

    async def page(self, after: str | None = None, limit: int = 100) -> tuple[list[BatchInfo], str | None]:
        """One page of the account's batches, newest first, and the cursor of the next (None: the last)."""
        ...

    async def find(
        self, tags: Sequence[Tag], since: float, exclude: Collection[str] = ()
    ) -> dict[tuple[str, int], list[BatchInfo]]:
        """The batches made for `tags` since `since` (Unix time), oldest first, by `Tag.key`."""
        ...

    async def cancel(self, batch_id: str) -> BatchInfo:
        """Ask the provider to cancel the batch; a batch already over is left as it is."""
        ...

    async def download(self, info: BatchInfo, folder: Path) -> list[Path]:
        """Save a finished batch's result files in `folder` (replacing earlier copies) and return them."""
        ...

    def read(self, paths: Iterable[Path], expected: Sequence[str]) -> Iterator[LineResult]:
        """One `LineResult` per custom_id in `expected`: a reply, a classified error, or why unanswered."""
        ...


def jsonl_objects(
    paths: Iterable[Path], max_line_bytes: int = MAX_RESULT_LINE_BYTES
) -> Iterator[dict[str, Any]]:
    """The JSON objects of the files' lines; blank, broken, non-object and over-long lines are skipped."""
    for path in paths:
        with path.open("rb") as lines:
            while line := lines.readline(max_line_bytes + 1):
                if len(line) > max_line_bytes and not line.endswith(b"\n"):
                    while (rest := lines.readline(1 << 20)) and not rest.endswith(b"\n"):
                        pass  # skip to the line's end, a megabyte at a time
                    continue
                data = _loads(line)
                if isinstance(data, dict):
                    yield data


def page_of(
    data: dict[str, Any], read: Callable[[dict[str, Any]], BatchInfo]
) -> tuple[list[BatchInfo], str | None]:
    """A list reply's batches (each read by `read`) and the cursor of the next page (None: the last)."""
    items = data.get("data")
    infos = [read(item) for item in items if isinstance(item, dict)] if isinstance(items, list) else []
    more = data.get("has_more") is True and bool(infos)
    return infos, (infos[-1].id if more else None)


def dumps(value: Any) -> bytes:
    """A decoded result body encoded again for the provider's parser; json takes what orjson refuses
    (integers past 64 bits, lone surrogates) from a line json decoded."""
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(value).encode()


def _loads(line: bytes) -> Any:
    if not line.strip():
        return None
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(line)  # NaN, Infinity, lone surrogates: what orjson refuses and json reads
    except (ValueError, UnicodeDecodeError):
        return None


class Matcher:
    """Matches result lines to the requests sent: each answered once; lines naming requests not sent, or
    named twice, are ignored (a server's file never decides what batchrun records)."""

    def __init__(self, expected: Sequence[str], wire: Callable[[str], str] | None = None) -> None:
        """`wire` maps our custom_id to the one sent (Anthropic's pattern); identity by default."""
        self._pending = {wire(c) if wire else c: c for c in expected}
        self._order = expected

    def claim(self, wire_id: Any) -> str | None:
        """Our custom_id for a line's, the first time it is seen; None for a foreign or repeated one."""
        return self._pending.pop(wire_id, None) if isinstance(wire_id, str) else None

    def missing(self) -> Iterator[LineResult]:
        """A `missing` result for every request no line answered, in the order they were sent."""
        left = set(self._pending.values())
        for custom_id in self._order:
            if custom_id in left:
                yield LineResult(custom_id, unanswered="missing")


def line_error(code: Any, message: Any, secret: str | None) -> Unanswered | ProviderError:
    """A result line's error that has no HTTP status: a request that never ran (expired, cancelled), or one
    classified by its code (FATAL and row codes as live; other codes are retried within `max_attempts`)."""
    code = str(code)[:100] if code is not None else None
    if code in UNANSWERED_CODES:
        return UNANSWERED_CODES[code]
    text = scrub(str(message) if message is not None else f"the batch gave error {code}", secret)
    if code in LINE_ROW_CODES:
        return ProviderError(text, error_type="bad_request", error_class=ErrorClass.ROW, code=code)
    error_class, error_type = classify(None, code)
    return ProviderError(text, error_type=error_type, error_class=error_class, code=code)


def refusal(code: Any, message: Any, secret: str | None) -> ProviderError:
    """Why a batch failed as a whole: a code that stops the run stops it; a batch refused for its file
    fails its requests (`batch_refused`: sending the same file again would be refused again); a failure
    without any reason is retried."""
    if code is None and message is None:
        error_class, error_type = classify(None, None)
        return ProviderError(
            "the batch failed and gave no reason", error_type=error_type, error_class=error_class
        )
    code = str(code)[:100] if code is not None else None
    text = scrub(f"the batch was refused: {message if message is not None else code}", secret)
    if code in FATAL_CODES or code in ROW_CODES:
        error_class, error_type = classify(None, code)
    else:
        error_class, error_type = ErrorClass.ROW, "batch_refused"
    return ProviderError(text, error_type=error_type, error_class=error_class, code=code)


async def create_safely(
    create: Callable[[], Awaitable[BatchInfo]], find: Callable[[], Awaitable[BatchInfo | None]], retry: Retry
) -> BatchInfo:
    """`create()` tried at most `retry.attempts` times; after a failure that may have created the batch
    anyway (a timeout, a dropped connection, a 5xx: anything but a 429), `find()` looks for it before the
    next try, so a lost answer never makes a second batch of the same requests."""
    wait = retry.wait()
    started = time.monotonic()
    for attempt in range(1, retry.attempts + 1):
        try:
            return await create()
        except ProviderError as exc:
            if not exc.retryable or attempt == retry.attempts or time.monotonic() - started > retry.total_s:
                raise
            await anyio.sleep(wait.after(attempt, exc))
            if exc.error_type != "rate_limited" and (found := await find()) is not None:
                return found
    raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover
