"""Splitting prepared requests into batch uploads: one model (and thinking mode) per file, within the
provider's request, byte and line limits, each file written to disk whole or not at all.

The limits by provider (their documentation, 2026-12): OpenAI 50,000 requests and 200 MB per file;
DashScope (Model Studio) 50,000 requests, 500 MB, a line at most 6 MB; Anthropic 100,000 requests or 256 MB
per batch (the whole create request). The defaults keep 5% below the byte limits: the providers count MB in
ways they do not spell out, and a multipart upload adds its own bytes. Counts are exact: nothing is unsure
about a count. A job can set its own (`[batch] max_requests_per_file`, `max_bytes_per_file`).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol
from urllib.parse import urlsplit

from batchrun.errors import ErrorClass, ProviderError
from batchrun.providers.batchapi.records import FileLimits, Part, Refused
from batchrun.records import Request

__all__ = ["HARD_LIMITS", "Encoder", "limits_for", "profile", "split"]

MB = 1000 * 1000
MARGIN = 0.95

HARD_LIMITS: dict[str, FileLimits] = {
    "openai": FileLimits(50_000, 200 * MB, 200 * MB),
    "dashscope": FileLimits(50_000, 500 * MB, 6 * MB),
    "anthropic": FileLimits(100_000, 256 * MB, 256 * MB),
}
"""What each provider documents, before the margin."""


class Encoder(Protocol):
    """What `split` needs of a Batch API client: how to group requests and how to write them."""

    envelope: tuple[bytes, bytes, bytes]  # what goes before the first line, between lines, after the last
    extension: str  # of a part's file: "jsonl" (a file to upload) or "json" (a request body)

    def group(self, request: Request) -> Hashable:
        """Requests that may share a file have the same group (a model; DashScope: and a thinking mode)."""
        ...

    def line(self, request: Request) -> bytes:
        """The request as it appears in an upload; ProviderError when this API cannot carry it."""
        ...


def profile(kind: str, base_url: str) -> str:
    """Whose limits apply: `anthropic`, `dashscope` (an Alibaba Cloud host) or `openai` (any other)."""
    if kind == "anthropic":
        return "anthropic"
    host = urlsplit(base_url).hostname or ""
    return "dashscope" if host == "aliyuncs.com" or host.endswith(".aliyuncs.com") else "openai"


def limits_for(
    kind: str, base_url: str, max_requests: int | None = None, max_bytes: int | None = None
) -> FileLimits:
    """The limits a split keeps to: the provider's less a margin, or the job's own."""
    hard = HARD_LIMITS[profile(kind, base_url)]
    size = max_bytes if max_bytes is not None else int(hard.max_bytes * MARGIN)
    line = min(int(hard.max_line_bytes * MARGIN), size)
    return FileLimits(max_requests if max_requests is not None else hard.max_requests, size, line)


def split(
    requests: Iterable[Request], encoder: Encoder, limits: FileLimits, folder: Path, first_index: int = 0
) -> Iterator[Part | Refused]:
    """Write `requests` into part files in `folder`, yielding each `Part` once it is full (or the input
    ends), and a `Refused` for each request no part can hold.

    Memory holds one line and the custom_ids of the open parts, whatever the input's size. A part's file
    appears under its final name (`part-{index:05d}.jsonl`, `.json` for Anthropic, numbered from
    `first_index`) only when complete; a kill leaves at most `.part-open-*.tmp` files, safe to delete. The
    same requests in the same order give the same parts.
    """
    folder.mkdir(parents=True, exist_ok=True)
    prefix, between, suffix = encoder.envelope
    room = limits.max_bytes - len(prefix) - len(suffix)  # the most one line can take
    longest = min(limits.max_line_bytes, room)
    open_parts: dict[Hashable, _Open] = {}
    index = first_index
    opened = 0
    try:
        for request in requests:
            try:
                line = encoder.line(request)
            except ProviderError as exc:
                yield Refused(request.custom_id, exc)
                continue
            if len(line) > longest:
                yield Refused(request.custom_id, _too_big(len(line), longest))
                continue
            key = encoder.group(request)
            current = open_parts.get(key)
            if current is not None and not current.fits(len(line), between, limits, suffix):
                del open_parts[key]
                yield current.close(folder / f"part-{index:05d}.{encoder.extension}", index, suffix)
                index += 1
                current = None
            if current is None:
                opened += 1
                current = open_parts[key] = _Open.start(folder, opened, request.body.get("model"), prefix)
            current.add(request.custom_id, line, between)
        for key in list(open_parts):
            yield open_parts.pop(key).close(folder / f"part-{index:05d}.{encoder.extension}", index, suffix)
            index += 1
    finally:
        for left in open_parts.values():
            left.discard()


def _too_big(size: int, limit: int) -> ProviderError:
    return ProviderError(
        f"the request is {size:,} bytes as a batch line; a batch takes at most {limit:,}: "
        "shorten it, or send it without the Batch API",
        error_type="bad_request",
        error_class=ErrorClass.ROW,
    )


@dataclass(slots=True)
class _Open:
    """A part being written."""

    tmp: Path
    out: IO[bytes]
    model: str | None
    size: int
    custom_ids: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, folder: Path, slot: int, model: object, prefix: bytes) -> _Open:
        tmp = folder / f".part-open-{slot}.{os.getpid()}.tmp"
        out = tmp.open("wb")
        out.write(prefix)
        return cls(tmp, out, model if isinstance(model, str) else None, len(prefix))

    def fits(self, line: int, between: bytes, limits: FileLimits, suffix: bytes) -> bool:
        gap = len(between) if self.custom_ids else 0
        within_bytes = self.size + gap + line + len(suffix) <= limits.max_bytes
        return len(self.custom_ids) < limits.max_requests and within_bytes

    def add(self, custom_id: str, line: bytes, between: bytes) -> None:
        if self.custom_ids:
            self.out.write(between)
            self.size += len(between)
        self.out.write(line)
        self.size += len(line)
        self.custom_ids.append(custom_id)

    def close(self, path: Path, index: int, suffix: bytes) -> Part:
        self.out.write(suffix)
        self.out.close()
        self.tmp.replace(path)
        return Part(index, self.model, path, tuple(self.custom_ids), self.size + len(suffix))

    def discard(self) -> None:
        self.out.close()
        self.tmp.unlink(missing_ok=True)
