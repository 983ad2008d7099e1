"""The OpenAI-style Batch API (OpenAI, DashScope, vLLM): `/v1/files` and `/v1/batches`.

- `POST /v1/files` (multipart: `file`, `purpose=batch`), `GET /v1/files/{id}`, `GET /v1/files/{id}/content`;
- `POST /v1/batches` (`input_file_id`, `endpoint`, `completion_window`, `metadata`), `GET /v1/batches/{id}`,
  `GET /v1/batches?after=&limit=` (newest first), `POST /v1/batches/{id}/cancel`.

Each input line (`{custom_id, method, url, body}`) is answered by the same code as a live chat completion
(`OpenAIDialect`, `answers.answer`), `[[emulator:400]]` included. The output file holds the 200s, in a
shuffled order; the error file the failures (`response.status_code` 400/500 with an error body), and, for a
batch cancelled or expired before the end, a `batch_cancelled` / `batch_expired` line for each request that
never ran. A batch in which nothing succeeded completes with `output_file_id: null`. A file that breaks the
rules (a line that is not a request, a duplicate custom_id, two models, a url other than the endpoint, a model
`BatchConfig.models` does not list) fails at validation with `errors.data`.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, web

from batchrun.emulator.batchconfig import BatchConfig
from batchrun.emulator.batchjobs import BatchJob, listing, page, shuffled
from batchrun.emulator.batchlines import answer_line, check_file, not_run_line
from batchrun.emulator.dialects import OPENAI
from batchrun.emulator.msgbatches import MessageBatches
from batchrun.emulator.replies import ERROR_401, error_body

__all__ = [
    "ENDPOINTS",
    "MAX_FILE_BYTES",
    "BatchAPIs",
    "FileStore",
    "OpenAIBatches",
    "add_batch_apis",
]

ENDPOINTS = ("/v1/chat/completions", "/v1/chat/ds-test")
"""The endpoints a batch may name: chat completions, and DashScope's free test endpoint."""

MAX_FILE_BYTES = 500 * 1000 * 1000
"""DashScope's file limit (OpenAI's is 200 MB): bigger uploads get a 413."""

_WINDOW = re.compile(r"^([1-9][0-9]{0,3})h$")


def _json(status: int, data: Any) -> web.Response:
    return web.Response(status=status, body=json.dumps(data).encode(), content_type="application/json")


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> web.Response:
    body = error_body(message, "invalid_request_error" if status < 500 else "server_error", param, code)
    return web.Response(status=status, body=body, content_type="application/json")


@dataclass(slots=True)
class StoredFile:
    """An uploaded or generated file."""

    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int = field(default_factory=lambda: int(time.time()))

    def object(self) -> dict[str, Any]:
        """The File object the API returns."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


class FileStore:
    """The files of one emulator, by id."""

    def __init__(self) -> None:
        """No files yet."""
        self.files: dict[str, StoredFile] = {}
        self._count = 0

    def add(self, filename: str, purpose: str, content: bytes) -> StoredFile:
        """Store a file under a new id."""
        self._count += 1
        stored = StoredFile(f"file-emu-{self._count:06d}", filename, purpose, content)
        self.files[stored.id] = stored
        return stored


@dataclass(slots=True)
class _Batch:
    job: BatchJob
    input_file_id: str
    endpoint: str
    window: str
    metadata: dict[str, str] | None
    model: str | None
    output_file_id: str | None = None
    error_file_id: str | None = None
    settled: bool = False


class OpenAIBatches:
    """The files and batches of one emulator, and their handlers."""

    def __init__(self, config: BatchConfig, seed: int, api_key: str | None) -> None:
        """No files or batches yet."""
        self.config = config
        self.seed = seed
        self.api_key = api_key
        # Unique to this emulator, as a provider's ids are: two runs' in-process emulators (shards of one
        # job, say) must not both name a batch batch_emu_..._000001.
        self._instance = secrets.token_hex(3)
        self.store = FileStore()
        self.batches: dict[str, _Batch] = {}

    def register(self, router: web.UrlDispatcher) -> None:
        """Add the routes."""
        router.add_post("/v1/files", self._upload)
        router.add_get("/v1/files/{id}", self._file)
        router.add_get("/v1/files/{id}/content", self._content)
        router.add_post("/v1/batches", self._create)
        router.add_get("/v1/batches", self._list)
        router.add_get("/v1/batches/{id}", self._retrieve)
        router.add_post("/v1/batches/{id}/cancel", self._cancel)

    def _refused(self, request: web.Request) -> web.Response | None:
        if self.api_key is not None and not OPENAI.authorized(request.headers, self.api_key):
            return web.Response(status=401, body=ERROR_401, content_type="application/json")
        return None

    async def _upload(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        if not request.content_type.startswith("multipart/"):
            return _error(400, "Upload the file as multipart/form-data.", "file")
        reader = await request.multipart()
        purpose, filename, content = None, "upload.jsonl", None
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            chunks, size = [], 0
            while chunk := await part.read_chunk():
                size += len(chunk)
                if size > MAX_FILE_BYTES:
                    return _error(413, f"The file is over {MAX_FILE_BYTES} bytes.", "file")
                chunks.append(chunk)
            if part.name == "purpose":
                purpose = b"".join(chunks).decode("utf-8", "replace")
            elif part.name == "file":
                filename, content = part.filename or filename, b"".join(chunks)
        if content is None:
            return _error(400, "The 'file' field is required.", "file")
        if purpose != "batch":
            return _error(400, f"purpose must be 'batch' here, got {purpose!r}.", "purpose")
        return _json(200, self.store.add(filename, purpose, content).object())

    async def _file(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        stored = self.store.files.get(request.match_info["id"])
        if stored is None:
            return _error(404, f"No such File object: {request.match_info['id']}", "id")
        return _json(200, stored.object())

    async def _content(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        stored = self.store.files.get(request.match_info["id"])
        if stored is None:
            return _error(404, f"No such File object: {request.match_info['id']}", "id")
        return web.Response(body=stored.content, content_type="application/octet-stream")

    async def _create(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _error(400, "The request body is not valid JSON.")
        if not isinstance(body, dict):
            return _error(400, "The request body must be a JSON object.")
        problem = self._create_problem(body)
        if problem is not None:
            return _error(400, problem[1], problem[0])
        config = self.config
        stored = self.store.files[body["input_file_id"]]
        requests, refusal = check_file(stored.content, body["endpoint"], config.models)
        number = len(self.batches) + 1  # the shuffle follows it, so two emulators give the same order
        batch_id = f"batch_emu_{self._instance}_{number:06d}"
        lines = shuffled([answer_line(line, config, self.seed) for line in requests], self.seed, number)
        model = requests[0]["body"]["model"] if requests else None
        metadata = body.get("metadata")
        if metadata is not None and config.metadata_keys is not None:
            metadata = {k: v for k, v in metadata.items() if k in config.metadata_keys}
        job = BatchJob(batch_id, lines, config, refusal)
        batch = _Batch(job, stored.id, body["endpoint"], body["completion_window"], metadata, model)
        self.batches[batch_id] = batch
        return _json(200, self._object(batch, time.monotonic()))

    def _create_problem(self, body: dict[str, Any]) -> tuple[str, str] | None:
        """(param, message) of the first thing wrong with a create request."""
        input_file_id = body.get("input_file_id")
        stored = self.store.files.get(input_file_id) if isinstance(input_file_id, str) else None
        if stored is None:
            return "input_file_id", f"No such File object: {input_file_id!r}"
        if stored.purpose != "batch":
            return "input_file_id", "The input file must be uploaded with purpose 'batch'."
        if body.get("endpoint") not in ENDPOINTS:
            return "endpoint", f"endpoint must be one of {', '.join(ENDPOINTS)}."
        window = body.get("completion_window")
        match = _WINDOW.match(window) if isinstance(window, str) else None
        if match is None or not 24 <= int(match.group(1)) <= 336:
            return "completion_window", "completion_window must be from '24h' to '336h'."
        metadata = body.get("metadata")
        if metadata is not None and not _valid_metadata(metadata):
            return (
                "metadata",
                "metadata: at most 16 string keys (<= 64 chars) with string values (<= 512 chars).",
            )
        return None

    async def _retrieve(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return _error(404, f"No batch found with id '{request.match_info['id']}'.", "batch_id")
        return _json(200, self._object(batch, time.monotonic()))

    async def _list(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            return _error(400, "limit must be an integer.", "limit")
        if not 1 <= limit <= 100:
            return _error(400, "limit must be from 1 to 100.", "limit")
        ids, more = page(self.batches, limit, request.query.get("after"))
        now = time.monotonic()
        return _json(
            200, {"object": "list", **listing([self._object(self.batches[i], now) for i in ids], more)}
        )

    async def _cancel(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return _error(404, f"No batch found with id '{request.match_info['id']}'.", "batch_id")
        now = time.monotonic()
        if not batch.job.cancel(now):
            return _error(400, f"Cannot cancel a batch with status '{batch.job.phase(now)}'.", "batch_id")
        return _json(200, self._object(batch, now))

    def _object(self, batch: _Batch, now: float) -> dict[str, Any]:
        """The Batch object at `now`; its output and error files are written the first time it is done."""
        job, config = batch.job, self.config
        phase = job.phase(now)
        done = job.done(now)
        ok = job.succeeded(done)
        failed = done - ok
        if phase in ("completed", "expired", "cancelled"):
            self._settle(batch, phase, done)
            failed = job.total - ok  # requests that never ran are failures too, in the error file
        started = phase != "validating" and job.started()
        cancelled_at = job.cancel_at - job.created if job.cancel_at is not None else None
        ended = job.moment(job.ended_after())
        errors = None
        if job.refusal is not None and phase == "failed":
            errors = {"object": "list", "data": [{**job.refusal, "param": None}]}
        hours = int(batch.window[:-1])
        return {
            "id": job.id,
            "object": "batch",
            "endpoint": batch.endpoint,
            "model": batch.model,
            "errors": errors,
            "input_file_id": batch.input_file_id,
            "completion_window": batch.window,
            "status": phase,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "created_at": job.created_at,
            "in_progress_at": job.moment(config.validating_s) if started else None,
            "expires_at": job.created_at + hours * 3600,
            "finalizing_at": job.moment(config.validating_s + config.in_progress_s)
            if phase in ("finalizing", "completed")
            else None,
            "completed_at": ended if phase == "completed" else None,
            "failed_at": ended if phase == "failed" else None,
            "expired_at": ended if phase == "expired" else None,
            "cancelling_at": job.moment(cancelled_at) if cancelled_at is not None else None,
            "cancelled_at": ended if phase == "cancelled" else None,
            "request_counts": {"total": job.total, "completed": ok, "failed": failed},
            "metadata": batch.metadata,
        }

    def _settle(self, batch: _Batch, phase: str, done: int) -> None:
        """Write the batch's output and error files, once."""
        if batch.settled:
            return
        batch.settled = True
        job = batch.job
        finished = job.lines[:done]
        output = b"".join(line.data for line in finished if line.ok)
        errors = b"".join(line.data for line in finished if not line.ok)
        if done < job.total:
            code = "batch_cancelled" if phase == "cancelled" else "batch_expired"
            shape = self.config.error_shape
            errors += b"".join(not_run_line(line.custom_id, code, shape) for line in job.lines[done:])
        if output:
            batch.output_file_id = self.store.add(f"{job.id}_output.jsonl", "batch_output", output).id
        if errors:
            batch.error_file_id = self.store.add(f"{job.id}_error.jsonl", "batch_output", errors).id


def _valid_metadata(metadata: Any) -> bool:
    return (
        isinstance(metadata, dict)
        and len(metadata) <= 16
        and all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
            for k, v in metadata.items()
        )
    )


@dataclass(frozen=True, slots=True)
class BatchAPIs:
    """Both Batch APIs of one emulator (tests look inside them)."""

    files: OpenAIBatches
    messages: MessageBatches


def add_batch_apis(
    router: web.UrlDispatcher, config: BatchConfig, seed: int, api_key: str | None
) -> BatchAPIs:
    """Serve both Batch APIs on `router`."""
    apis = BatchAPIs(OpenAIBatches(config, seed, api_key), MessageBatches(config, seed, api_key))
    apis.files.register(router)
    apis.messages.register(router)
    return apis
