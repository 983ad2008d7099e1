"""Anthropic's Message Batches API (`/v1/messages/batches`), and Anthropic-compatible servers that offer it.

A part is the create request itself, `{"requests": [{custom_id, params}, ...]}`, written to disk and sent
from there (up to 256 MB); `params` is the Messages body the live path would send (the same translation),
less `stream`. Results are one JSONL file of `{custom_id, result: {type, message | error}}` lines:
`succeeded` is read by the provider's own `parse`, `errored` by its `error` (classified by the error's
`type`, as live; it has no HTTP status), `canceled` and `expired` mean the request never ran.

custom_ids must match `^[a-zA-Z0-9_-]{1,64}$`. batchrun's own (32 hex characters) pass as they are; any
other (an OpenAI batch-lines input may use any text) goes as `batchrun_` + the first 40 hex characters of
its SHA-256, and so does one that already starts with `batchrun_`, so a mapped id never equals a kept one.
`read` maps them back from the custom_ids the engine sent (`wire_id` is a pure function of the id).

Message batches carry no metadata. `find` recognises a batch by what it has: created since the intent
(within `CLOCK_SKEW_S`), holding as many requests as the part, not already recorded. That is exact when the
engine creates one batch at a time and records each id at once (at most one batch is then unrecorded after a
kill) and nothing else on the same workspace creates a batch of the same size in those minutes.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import anyio
import httpx

from batchrun.errors import ErrorClass, ProviderError
from batchrun.providers.base import Provider, retryable_bad_reply
from batchrun.providers.batchapi.base import (
    CLOCK_SKEW_S,
    Matcher,
    create_safely,
    dumps,
    jsonl_objects,
    page_of,
)
from batchrun.providers.batchapi.control import DEFAULT_RETRY, Control, Retry, checked_id, scrub, scrubbed
from batchrun.providers.batchapi.records import BatchInfo, Counts, LineResult, Part, State, Tag
from batchrun.records import Request

__all__ = ["MAX_LIST_PAGES", "AnthropicBatchAPI", "wire_id"]

MAX_LIST_PAGES = 20
"""How many pages of 100 batches `find` reads at most (it stops sooner at batches older than `since`)."""

MAX_DOWNLOAD_BYTES = 8 * 1000 * 1000 * 1000
"""The largest results file saved."""

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAPPED = "batchrun_"


def wire_id(custom_id: str) -> str:
    """The custom_id sent to Anthropic for ours (see the module docstring)."""
    if CUSTOM_ID.match(custom_id) and not custom_id.startswith(MAPPED):
        return custom_id
    return MAPPED + hashlib.sha256(custom_id.encode()).hexdigest()[:40]


class AnthropicBatchAPI:
    """Message batches on an Anthropic-compatible endpoint (`base_url` as for live requests: no `/v1`)."""

    kind: ClassVar[str] = "anthropic"
    envelope = (b'{"requests":[', b",", b"]}")
    extension = "json"

    def __init__(
        self,
        client: httpx.AsyncClient,
        provider: Provider,
        base_url: str,
        api_key: str | None,
        *,
        retry: Retry = DEFAULT_RETRY,
    ) -> None:
        """The batches live at `{base_url}/v1/messages/batches`."""
        self.base = base_url.rstrip("/")
        self.root = f"{self.base}/v1/messages/batches"
        self.provider = provider
        self.secret = api_key
        self.retry = retry
        self.control = Control(client, provider, api_key, retry)

    def group(self, request: Request) -> Any:
        """The model (Anthropic mixes models in a batch, but the output is reported per model)."""
        return request.body.get("model")

    def line(self, request: Request) -> bytes:
        """`{custom_id, params}` with the Messages body the live path sends, less `stream`."""
        if "stream" in request.body or "stream_options" in request.body:
            trimmed = {k: v for k, v in request.body.items() if k not in ("stream", "stream_options")}
            request = replace(request, body=trimmed)
        params = self.provider.content(request)  # a ProviderError (no max_tokens) refuses the request
        return b'{"custom_id":' + dumps(wire_id(request.custom_id)) + b',"params":' + params + b"}"

    async def submit(self, part: Part, tag: Tag) -> BatchInfo:
        """Send the part's file as the create request (see `create_safely`)."""
        since = time.time()

        async def create() -> BatchInfo:
            return self.info(await self.control.call("POST", self.root, json_file=part.path, retried=False))

        async def find() -> BatchInfo | None:
            found = (await self.find([tag], since)).get(tag.key)
            return found[0] if found else None

        return await create_safely(create, find, self.retry)

    async def retrieve(self, batch_id: str) -> BatchInfo:
        """`GET /v1/messages/batches/{id}`."""
        return self.info(await self.control.call("GET", f"{self.root}/{checked_id(batch_id, 'batch id')}"))

    async def page(self, after: str | None = None, limit: int = 100) -> tuple[list[BatchInfo], str | None]:
        """`GET /v1/messages/batches?limit=&after_id=` (newest first)."""
        params: dict[str, str | int] = {"limit": limit}
        if after is not None:
            params["after_id"] = checked_id(after, "batch id")
        return page_of(await self.control.call("GET", self.root, params=params), self.info)

    async def find(
        self, tags: Sequence[Tag], since: float, exclude: Collection[str] = ()
    ) -> dict[tuple[str, int], list[BatchInfo]]:
        """Batches created since `since` (less `CLOCK_SKEW_S`) holding as many requests as a tag's part."""
        start = since - CLOCK_SKEW_S
        candidates: list[BatchInfo] = []
        after: str | None = None
        for _ in range(MAX_LIST_PAGES):
            infos, after = await self.page(after)
            candidates += [i for i in infos if i.id not in exclude and (i.created_at or 0) >= start]
            oldest = infos[-1].created_at if infos else None
            if after is None or (oldest is not None and oldest < start):
                break
        candidates.reverse()  # the list is newest first; a stable sort keeps ties in creation order too
        candidates.sort(key=lambda info: info.created_at or 0)
        found: dict[tuple[str, int], list[BatchInfo]] = {}
        for tag in tags:
            matching = [info for info in candidates if info.counts.total == tag.requests]
            if matching:
                found[tag.key] = matching
        return found

    async def cancel(self, batch_id: str) -> BatchInfo:
        """`POST /v1/messages/batches/{id}/cancel`; a batch that has ended is retrieved instead."""
        url = f"{self.root}/{checked_id(batch_id, 'batch id')}/cancel"
        try:
            return self.info(await self.control.call("POST", url))
        except ProviderError as exc:
            if exc.error_class is not ErrorClass.ROW:
                raise
            return await self.retrieve(batch_id)

    async def download(self, info: BatchInfo, folder: Path) -> list[Path]:
        """The results file of an ended batch, as `{batch id}.results.jsonl` (nothing before it ends).

        The documented `results_url` is followed only on the endpoint's own host: the key is never sent to
        a host the job did not name. Elsewhere the documented path is used.
        """
        if not info.done:
            return []
        await anyio.Path(folder).mkdir(parents=True, exist_ok=True)
        batch_id = checked_id(info.id, "batch id")
        url = f"{self.root}/{batch_id}/results"
        given = info.results_url
        if given is not None and _origin(given) == _origin(self.base):
            url = given
        return [await self.control.download(url, folder / f"{batch_id}.results.jsonl", MAX_DOWNLOAD_BYTES)]

    def read(self, paths: Iterable[Path], expected: Sequence[str]) -> Iterator[LineResult]:
        """Every result line matched to `expected` (by `wire_id`), then the requests it missed."""
        matcher = Matcher(expected, wire_id)
        for data in jsonl_objects(paths):
            custom_id = matcher.claim(data.get("custom_id"))
            if custom_id is not None:
                yield self._result(custom_id, data.get("result"))
        yield from matcher.missing()

    def _result(self, custom_id: str, result: Any) -> LineResult:
        kind = result.get("type") if isinstance(result, dict) else None
        if kind in ("canceled", "expired"):
            return LineResult(custom_id, unanswered="cancelled" if kind == "canceled" else "expired")
        try:
            if kind == "succeeded" and isinstance(result, dict):
                return LineResult(custom_id, reply=self.provider.parse(dumps(result.get("message"))))
            if kind != "errored" or not isinstance(result, dict):
                raise retryable_bad_reply(f"a batch result of unknown type {scrub(str(kind), None)[:40]!r}")
            # 200 is the provider's "no HTTP status" (an error found in a body): classified by its type.
            error = self.provider.error(200, {}, dumps(result.get("error")))
            error.status = None
        except ProviderError as exc:
            error = exc
        return LineResult(custom_id, error=scrubbed(error, self.secret))

    def info(self, data: dict[str, Any]) -> BatchInfo:
        """A MessageBatch read defensively: an unknown status is `unknown`, odd counts 0, the id checked."""
        status = str(data.get("processing_status"))[:40]
        raw = data.get("request_counts")
        raw = raw if isinstance(raw, dict) else {}
        counts = {
            name: _count(raw.get(name))
            for name in ("processing", "succeeded", "errored", "canceled", "expired")
        }
        state: State = "unknown"
        if status == "in_progress":
            state = "in_progress"
        elif status == "canceling":
            state = "cancelling"
        elif status == "ended":
            state = "cancelled" if counts["canceled"] else "expired" if counts["expired"] else "completed"
        url = data.get("results_url")
        return BatchInfo(
            id=checked_id(data.get("id"), "batch id"),
            status=scrub(status, self.secret),
            state=state,
            counts=Counts(
                total=sum(counts.values()),
                succeeded=counts["succeeded"],
                failed=counts["errored"],
                expired=counts["expired"],
                cancelled=counts["canceled"],
                processing=counts["processing"],
            ),
            created_at=_time(data.get("created_at")),
            results_url=url if isinstance(url, str) and len(url) < 2000 else None,
        )


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**40 else 0


def _time(value: Any) -> float | None:
    """An RFC 3339 time as a Unix time; None when it is not one."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return ("", None, None)
    return parts.scheme.lower(), (parts.hostname or "").lower(), port
