"""The OpenAI-compatible Batch API (OpenAI, DashScope, vLLM and others): `/files` + `/batches`.

A part is a JSONL file of `{custom_id, method: POST, url, body}` lines, uploaded (`POST /files`, multipart,
`purpose=batch`), then a batch is created for it (`POST /batches` with `metadata` naming the job, run and
part). Results are two files, `output_file_id` and `error_file_id`, either of which may be missing (a batch
where every request failed completes with `output_file_id: null`). Their lines, in any order:

- `response: {status_code, request_id, body}`: a 200's body is read by the provider's own `parse`, any other
  status by its `error` (so a 400 fails the row, a `DataInspectionFailed` is a content filter, as live);
- `response: null` and an error object with `code`/`message` (OpenAI's documentation, DashScope's too) or
  `error_code`/`error_message` (DashScope's sample files; also accepted beside `error` at the top level):
  `batch_expired` / `batch_cancelled` mean the request never ran (resend it), other codes are classified.

DashScope shows timestamps as 0 rather than null and keeps documented metadata keys (`ds_name`,
`ds_description`): the tag is also written as `ds_name`, so a batch is found again either way.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import anyio
import httpx
import orjson

from batchrun.errors import ErrorClass, ProviderError
from batchrun.inputs.render import encode
from batchrun.providers.base import Provider
from batchrun.providers.batchapi.base import (
    CLOCK_SKEW_S,
    Matcher,
    create_safely,
    dumps,
    jsonl_objects,
    line_error,
    page_of,
    refusal,
)
from batchrun.providers.batchapi.control import DEFAULT_RETRY, Control, Retry, checked_id, scrub, scrubbed
from batchrun.providers.batchapi.records import BatchInfo, Counts, LineResult, Part, State, Tag
from batchrun.records import Request

__all__ = ["MAX_LIST_PAGES", "OpenAIBatchAPI", "metadata", "tag_key"]

MAX_LIST_PAGES = 50
"""How many pages of 100 batches `find` reads at most (it stops sooner at batches older than `since`)."""

MAX_DOWNLOAD_BYTES = 8 * 1000 * 1000 * 1000
"""The largest result file saved: well above any output of a 500 MB input."""

STATES: frozenset[str] = frozenset(
    {"validating", "in_progress", "finalizing", "cancelling", "completed", "failed", "expired", "cancelled"}
)

STREAM_KEYS = ("stream", "stream_options")


def metadata(tag: Tag) -> dict[str, str]:
    """The batch's metadata: the job (cut to 200 characters), run and part, and the same as DashScope's
    `ds_name`, for a server that keeps only its documented keys."""
    return {
        "batchrun_job": tag.job[:200],
        "batchrun_run": tag.run,
        "batchrun_part": str(tag.part),
        "ds_name": f"batchrun:{tag.run}:{tag.part}",
    }


def tag_key(data: Any) -> tuple[str, int] | None:
    """(run, part) from a batch's metadata, as `metadata` wrote it; None when it is not ours."""
    if not isinstance(data, dict):
        return None
    run, part = data.get("batchrun_run"), data.get("batchrun_part")
    if not (isinstance(run, str) and isinstance(part, str)):
        name = data.get("ds_name")
        pieces = name.split(":") if isinstance(name, str) else []
        if len(pieces) != 3 or pieces[0] != "batchrun":
            return None
        run, part = pieces[1], pieces[2]
    return (run, int(part)) if part.isascii() and part.isdigit() and len(part) < 10 else None


class OpenAIBatchAPI:
    """Files + batches on an OpenAI-compatible endpoint (`base_url` ending in `/v1`, as for live requests)."""

    kind: ClassVar[str] = "openai"
    envelope = (b"", b"\n", b"\n")
    extension = "jsonl"

    def __init__(
        self,
        client: httpx.AsyncClient,
        provider: Provider,
        base_url: str,
        api_key: str | None,
        *,
        endpoint: str = "/v1/chat/completions",
        completion_window: str = "24h",
        retry: Retry = DEFAULT_RETRY,
    ) -> None:
        """`endpoint`: what every line and the batch name (DashScope's test model: `/v1/chat/ds-test`)."""
        self.base = base_url.rstrip("/")
        self.provider = provider
        self.secret = api_key
        self.endpoint = endpoint
        self.window = completion_window
        self.retry = retry
        self.control = Control(client, provider, api_key, retry)
        self._url = orjson.dumps(endpoint)

    def group(self, request: Request) -> tuple[Any, bool]:
        """The model, and the thinking mode (DashScope takes one per file)."""
        return request.body.get("model"), request.body.get("enable_thinking") is True

    def line(self, request: Request) -> bytes:
        """`{custom_id, method, url, body}`; the body as sent live, less streaming (a batch never streams)."""
        body = request.payload
        if any(key in request.body for key in STREAM_KEYS):
            body = encode({k: v for k, v in request.body.items() if k not in STREAM_KEYS})
        custom_id = dumps(request.custom_id)
        return (
            b'{"custom_id":' + custom_id + b',"method":"POST","url":' + self._url + b',"body":' + body + b"}"
        )

    async def submit(self, part: Part, tag: Tag) -> BatchInfo:
        """Upload the part's file, then create its batch (see `create_safely`)."""
        uploaded = await self.control.call(
            "POST", f"{self.base}/files", upload=(part.path, {"purpose": "batch"})
        )
        file_id = checked_id(uploaded.get("id"), "file id")
        since = time.time()
        body = {
            "input_file_id": file_id,
            "endpoint": self.endpoint,
            "completion_window": self.window,
            "metadata": metadata(tag),
        }

        async def create() -> BatchInfo:
            return self.info(
                await self.control.call("POST", f"{self.base}/batches", body=body, retried=False)
            )

        async def find() -> BatchInfo | None:
            found = (await self.find([tag], since)).get(tag.key)
            return found[0] if found else None

        return await create_safely(create, find, self.retry)

    async def retrieve(self, batch_id: str) -> BatchInfo:
        """`GET /batches/{id}`."""
        return self.info(
            await self.control.call("GET", f"{self.base}/batches/{checked_id(batch_id, 'batch id')}")
        )

    async def page(self, after: str | None = None, limit: int = 100) -> tuple[list[BatchInfo], str | None]:
        """`GET /batches?after=&limit=`."""
        params: dict[str, str | int] = {"limit": limit}
        if after is not None:
            params["after"] = checked_id(after, "batch id")
        return page_of(await self.control.call("GET", f"{self.base}/batches", params=params), self.info)

    async def find(
        self, tags: Sequence[Tag], since: float, exclude: Collection[str] = ()
    ) -> dict[tuple[str, int], list[BatchInfo]]:
        """Batches whose metadata names one of `tags`, reading the list (newest first) back to `since` (a
        Unix time: when the first create was sent, by our clock; less `CLOCK_SKEW_S`)."""
        wanted = {tag.key for tag in tags}
        found: dict[tuple[str, int], list[BatchInfo]] = {}
        after: str | None = None
        for _ in range(MAX_LIST_PAGES):
            infos, after = await self.page(after)
            for info in infos:
                key = info.tag_key
                if key in wanted and info.id not in exclude:
                    found.setdefault(key, []).insert(0, info)  # the list is newest first; keep oldest first
            oldest = infos[-1].created_at if infos else None
            if after is None or (oldest is not None and oldest < since - CLOCK_SKEW_S):
                break
        return found

    async def cancel(self, batch_id: str) -> BatchInfo:
        """`POST /batches/{id}/cancel`; a batch that cannot be cancelled (it is over) is retrieved instead."""
        try:
            data = await self.control.call(
                "POST", f"{self.base}/batches/{checked_id(batch_id, 'batch id')}/cancel"
            )
        except ProviderError as exc:
            if exc.error_class is not ErrorClass.ROW:
                raise
            return await self.retrieve(batch_id)
        return self.info(data)

    async def download(self, info: BatchInfo, folder: Path) -> list[Path]:
        """The output and error files, as `{batch id}.output.jsonl` and `{batch id}.error.jsonl`."""
        await anyio.Path(folder).mkdir(parents=True, exist_ok=True)
        paths = []
        for file_id, name in ((info.output_file_id, "output"), (info.error_file_id, "error")):
            if file_id is not None:
                url = f"{self.base}/files/{checked_id(file_id, 'file id')}/content"
                dest = folder / f"{checked_id(info.id, 'batch id')}.{name}.jsonl"
                paths.append(await self.control.download(url, dest, MAX_DOWNLOAD_BYTES))
        return paths

    def read(self, paths: Iterable[Path], expected: Sequence[str]) -> Iterator[LineResult]:
        """Every line of the output and error files matched to `expected`, then the requests they missed."""
        matcher = Matcher(expected)
        for data in jsonl_objects(paths):
            custom_id = matcher.claim(data.get("custom_id"))
            if custom_id is not None:
                yield self._result(custom_id, data)
        yield from matcher.missing()

    def _result(self, custom_id: str, data: dict[str, Any]) -> LineResult:
        response = data.get("response")
        status = response.get("status_code") if isinstance(response, dict) else None
        if isinstance(response, dict) and isinstance(status, int) and not isinstance(status, bool):
            body = dumps(response.get("body"))
            try:
                if status == 200:
                    return LineResult(custom_id, reply=self.provider.parse(body))
                error = self.provider.error(status, {}, body)
            except ProviderError as exc:
                error = exc
            return LineResult(custom_id, error=scrubbed(error, self.secret))
        error_object = data.get("error")
        if not isinstance(error_object, dict):
            error_object = data  # DashScope's sample: error_code / error_message beside the line's fields
        code = error_object.get("code", error_object.get("error_code"))
        message = error_object.get("message", error_object.get("error_message"))
        outcome = line_error(code, message, self.secret)
        if isinstance(outcome, ProviderError):
            return LineResult(custom_id, error=outcome)
        return LineResult(custom_id, unanswered=outcome)

    def info(self, data: dict[str, Any]) -> BatchInfo:
        """A Batch object read defensively: unknown statuses are `unknown`, odd counts 0, ids checked."""
        status = str(data.get("status"))[:40]
        state: State = status if status in STATES else "unknown"  # type: ignore[assignment]
        counts = data.get("request_counts")
        counts = counts if isinstance(counts, dict) else {}
        error = None
        if state == "failed":
            errors = data.get("errors")
            listed = errors.get("data") if isinstance(errors, dict) else None
            first = listed[0] if isinstance(listed, list) and listed and isinstance(listed[0], dict) else {}
            line = first.get("line")
            message = first.get("message")
            if message is not None and isinstance(line, int) and line > 0:
                message = f"{message} (line {line})"
            error = refusal(first.get("code"), message, self.secret)
        return BatchInfo(
            id=checked_id(data.get("id"), "batch id"),
            status=scrub(status, self.secret),
            state=state,
            counts=Counts(
                total=_count(counts.get("total")),
                succeeded=_count(counts.get("completed")) or 0,
                failed=_count(counts.get("failed")) or 0,
            ),
            created_at=_time(data.get("created_at")),
            output_file_id=_file_id(data.get("output_file_id")),
            error_file_id=_file_id(data.get("error_file_id")),
            tag_key=tag_key(data.get("metadata")),
            error=error,
        )


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63 else None


def _time(value: Any) -> float | None:
    """A Unix time; DashScope's 0 (for "not yet") is None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 2**40:
        return None
    return float(value)


def _file_id(value: Any) -> str | None:
    return checked_id(value, "file id") if value not in (None, "") else None
