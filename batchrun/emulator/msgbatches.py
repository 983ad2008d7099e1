"""Anthropic's Message Batches API: `/v1/messages/batches`.

- `POST /v1/messages/batches` (`{requests: [{custom_id, params}]}`, inline; at most 100,000 requests or
  256 MB; `custom_id` must match `^[a-zA-Z0-9_-]{1,64}$` and be unique, else a 400 at once);
- `GET /v1/messages/batches/{id}`, `GET /v1/messages/batches?limit=&after_id=&before_id=` (newest first),
  `POST /v1/messages/batches/{id}/cancel`, `GET /v1/messages/batches/{id}/results` (JSONL, once ended).

`processing_status` is `in_progress` while the batch validates, works and finalizes (see `BatchConfig`),
`canceling` after a cancel, then `ended`. `request_counts` count every request as `processing` until the end,
as Anthropic's do. Each request is answered by the same code as a live `/v1/messages` call
(`AnthropicDialect`, `answers.answer`): `succeeded` with the message, or `errored` with the error a live call
would get; requests a cancel or the window's end stopped are `canceled` / `expired`.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import secrets
import time
from typing import Any

from aiohttp import web

from batchrun.emulator.answers import answer
from batchrun.emulator.batchconfig import BatchConfig
from batchrun.emulator.batchjobs import BatchJob, Line, draw_error, listing, page, read_body, shuffled
from batchrun.emulator.dialects import ANTHROPIC
from batchrun.emulator.replies import DIRECTIVE_400, BadRequest, wants_400

__all__ = ["MAX_BATCH_BYTES", "MAX_REQUESTS", "MessageBatches"]

MAX_REQUESTS = 100_000
"""Requests per batch, as Anthropic allows."""

MAX_BATCH_BYTES = 256 * 1000 * 1000
"""The largest create request Anthropic takes."""

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
"""What Anthropic accepts as a custom_id."""


def _json(status: int, data: Any) -> web.Response:
    return web.Response(status=status, body=json.dumps(data).encode(), content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return web.Response(
        status=status, body=ANTHROPIC.error(status, message, ""), content_type="application/json"
    )


def _errored(type_: str, message: str) -> dict[str, Any]:
    return {"type": "errored", "error": {"type": "error", "error": {"type": type_, "message": message}}}


def _rfc3339(unix: float) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).isoformat().replace("+00:00", "Z")


def answer_request(item: dict[str, Any], config: BatchConfig, seed: int) -> Line:
    """One batch request answered as a live `/v1/messages` call with the same params would be."""
    custom_id = item["custom_id"]
    raw = json.dumps(item["params"], separators=(",", ":")).encode()
    key = hashlib.sha256(raw).hexdigest()[:32]
    result: dict[str, Any]
    try:
        parsed = ANTHROPIC.parse(raw)
    except BadRequest as exc:
        result = _errored("invalid_request_error", str(exc))
    else:
        if config.models is not None and parsed.model not in config.models:
            result = _errored(
                "invalid_request_error", f"model: {parsed.model!r} is not available for batches"
            )
        elif wants_400(parsed.messages):
            result = _errored(
                "invalid_request_error", f"Rejected by the emulator: {DIRECTIVE_400} in the prompt."
            )
        elif draw_error(seed, key, config.line_error_rate):
            result = _errored("api_error", "Internal server error (emulated).")
        else:
            reply = answer(key, parsed.model, parsed.messages, parsed.limit, parsed.options)
            result = {"type": "succeeded", "message": json.loads(ANTHROPIC.reply(key, parsed, reply))}
    data = json.dumps({"custom_id": custom_id, "result": result}).encode() + b"\n"
    return Line(custom_id, result["type"] == "succeeded", data)


def _requests_problem(body: Any) -> str | None:
    """What is wrong with a create request, as Anthropic's 400 says it; None when it is fine."""
    requests = body.get("requests") if isinstance(body, dict) else None
    if not isinstance(requests, list) or not requests:
        return "requests: Field required (a non-empty list)"
    if len(requests) > MAX_REQUESTS:
        return f"requests: at most {MAX_REQUESTS} requests per batch"
    seen: set[str] = set()
    for i, item in enumerate(requests):
        if not isinstance(item, dict) or not isinstance(item.get("params"), dict):
            return f"requests.{i}: an object with custom_id and params is required"
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
            return f"requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
        if custom_id in seen:
            return f"requests.{i}.custom_id: duplicate custom_id {custom_id!r}"
        if item["params"].get("stream"):
            return f"requests.{i}.params.stream: streaming is not supported in batches"
        seen.add(custom_id)
    return None


class MessageBatches:
    """The message batches of one emulator, and their handlers."""

    def __init__(self, config: BatchConfig, seed: int, api_key: str | None) -> None:
        """No batches yet."""
        self.config = config
        self.seed = seed
        self.api_key = api_key
        # Unique to this emulator, as a provider's ids are: two runs' in-process emulators (shards of one
        # job, say) must not both name a batch batch_emu_..._000001.
        self._instance = secrets.token_hex(3)
        self.batches: dict[str, BatchJob] = {}

    def register(self, router: web.UrlDispatcher) -> None:
        """Add the routes."""
        router.add_post("/v1/messages/batches", self._create)
        router.add_get("/v1/messages/batches", self._list)
        router.add_get("/v1/messages/batches/{id}", self._retrieve)
        router.add_get("/v1/messages/batches/{id}/results", self._results)
        router.add_post("/v1/messages/batches/{id}/cancel", self._cancel)

    def _refused(self, request: web.Request) -> web.Response | None:
        if self.api_key is not None and not ANTHROPIC.authorized(request.headers, self.api_key):
            return _error(401, "invalid x-api-key")
        return None

    def _find(self, request: web.Request) -> BatchJob | web.Response:
        job = self.batches.get(request.match_info["id"])
        return (
            job if job is not None else _error(404, f"No message batch with id {request.match_info['id']!r}")
        )

    async def _create(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        raw = await read_body(request, MAX_BATCH_BYTES)
        if raw is None:
            return _error(413, f"The batch is over {MAX_BATCH_BYTES} bytes.")
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(400, "The request body is not valid JSON.")
        problem = _requests_problem(body)
        if problem is not None:
            return _error(400, problem)
        number = len(self.batches) + 1  # the shuffle follows it, so two emulators give the same order
        batch_id = f"msgbatch_emu_{self._instance}_{number:06d}"
        lines = [answer_request(item, self.config, self.seed) for item in body["requests"]]
        job = BatchJob(batch_id, shuffled(lines, self.seed, number), self.config)
        self.batches[batch_id] = job
        return _json(200, self._object(job, time.monotonic(), request))

    async def _retrieve(self, request: web.Request) -> web.Response:
        found = self._find(request)
        return (
            found
            if isinstance(found, web.Response)
            else _json(200, self._object(found, time.monotonic(), request))
        )

    async def _list(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            return _error(400, "limit: Input should be a valid integer")
        if not 1 <= limit <= 1000:
            return _error(400, "limit: Input should be between 1 and 1000")
        query = request.query
        ids, more = page(self.batches, limit, query.get("after_id"), query.get("before_id"))
        now = time.monotonic()
        return _json(200, listing([self._object(self.batches[i], now, request) for i in ids], more))

    async def _cancel(self, request: web.Request) -> web.Response:
        found = self._find(request)
        if isinstance(found, web.Response):
            return found
        now = time.monotonic()
        if not found.cancel(now):
            return _error(400, f"Batch {found.id!r} has ended and cannot be canceled.")
        return _json(200, self._object(found, now, request))

    async def _results(self, request: web.Request) -> web.Response:
        found = self._find(request)
        if isinstance(found, web.Response):
            return found
        now = time.monotonic()
        phase = found.phase(now)
        if _status(phase) != "ended":
            return _error(404, f"Batch {found.id!r} has not ended yet: no results.")
        done = found.done(now)
        kind = "canceled" if phase == "cancelled" else "expired"
        rest = (
            json.dumps({"custom_id": line.custom_id, "result": {"type": kind}}).encode() + b"\n"
            for line in found.lines[done:]
        )
        body = b"".join(line.data for line in found.lines[:done]) + b"".join(rest)
        return web.Response(body=body, content_type="application/x-jsonl")

    def _object(self, job: BatchJob, now: float, request: web.Request) -> dict[str, Any]:
        """The MessageBatch object at `now`."""
        phase = job.phase(now)
        status = _status(phase)
        counts = {"processing": job.total, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        ended_at = results_url = None
        if status == "ended":
            done = job.done(now)
            ok = job.succeeded(done)
            rest = "canceled" if phase == "cancelled" else "expired"
            counts.update(processing=0, succeeded=ok, errored=done - ok)
            counts[rest] = job.total - done
            ended_at = _rfc3339(job.moment(job.ended_after()))
            results_url = f"{request.scheme}://{request.host}/v1/messages/batches/{job.id}/results"
        cancel_at = job.cancel_at
        return {
            "id": job.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": counts,
            "ended_at": ended_at,
            "created_at": _rfc3339(job.created_at),
            "expires_at": _rfc3339(job.created_at + 24 * 3600),
            "archived_at": None,
            "cancel_initiated_at": _rfc3339(job.moment(cancel_at - job.created))
            if cancel_at is not None
            else None,
            "results_url": results_url,
        }


def _status(phase: str) -> str:
    if phase == "cancelling":
        return "canceling"
    return "in_progress" if phase in ("validating", "in_progress", "finalizing") else "ended"
