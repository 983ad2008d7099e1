"""The emulator's aiohttp application: the chat-completions and messages handlers and their counters."""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
import json
import math
import time
from typing import Any

from aiohttp import web

from batchrun.emulator.answers import answer
from batchrun.emulator.batches import add_batch_apis
from batchrun.emulator.config import DEFAULT_CONFIG, EmulatorConfig
from batchrun.emulator.dialects import ANTHROPIC, OPENAI, Dialect, Parsed
from batchrun.emulator.faults import (
    ERROR_BODIES,
    OUTAGE_BODY,
    Fault,
    FaultPicker,
    drop_connection,
    send_stream,
    send_truncated,
)
from batchrun.emulator.ratelimit import LIMIT_BODIES, RateLimiter
from batchrun.emulator.replies import (
    ERROR_401,
    ERROR_DIRECTIVE,
    MODELS,
    BadRequest,
    completion,
    count_tokens,
    prompt_tokens,
    wants_400,
)

__all__ = ["STATUS_DROPPED", "STATUS_TRUNCATED", "Emulator"]

STATUS_DROPPED = 0
"""The `requests_by_status` key of connections closed without a reply (`rate_drop`)."""

STATUS_TRUNCATED = -1
"""The `requests_by_status` key of 200s whose body was cut short (`rate_truncate`)."""


def _json_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


@functools.lru_cache(maxsize=64)
def _anthropic_error(status: int, openai_body: bytes) -> bytes:
    error = json.loads(openai_body)["error"]
    return ANTHROPIC.error(status, error["message"], error.get("type") or "")


def _in_dialect(dialect: Dialect, status: int, openai_body: bytes) -> bytes:
    """One of the emulator's stock error bodies (written in OpenAI's shape) in the dialect's own shape."""
    return openai_body if dialect is OPENAI else _anthropic_error(status, openai_body)


class Emulator:
    """Holds the config, the aiohttp Application and the counters.

    `answered[key]` counts the complete 200 answers per request key (the first 32 hex chars of the sha256 of
    the raw request body); `requests_by_status[status]` counts the chat-completion replies per HTTP status,
    with dropped connections under `STATUS_DROPPED` (0) and truncated 200s under `STATUS_TRUNCATED` (-1);
    `throttled` counts the 429s of the RPM/TPM limits by limit ("requests", "tokens"); `timeline[(second,
    status)]` counts replies per whole second of `time.monotonic()` and status (a run's rate in any window,
    for benchmarks; it holds one entry per second and status). All are only written on the loop that serves
    `app`.

    The order a request goes through: `hold_after`; the outage window (503 after the latency); the API key
    and the body (401 or 400 after the latency); the rate limits (429 at once); the latency; then the
    `DIRECTIVE_400` check, and one seeded draw for an injected fault. Only requests past the rate limits
    count as attempts for that draw, so throttling, which depends on timing, never shifts the fault pattern.

    A request's cost under the TPM limit is its prompt tokens plus its `max_tokens` (or
    `max_completion_tokens`) when it sets one, as OpenAI reserves it up front; otherwise its prompt tokens
    plus the completion tokens of its reply.
    """

    def __init__(self, config: EmulatorConfig = DEFAULT_CONFIG) -> None:
        """Build the application; nothing listens until it is run (see `EmulatorServer` and `serve`)."""
        self.config = config
        self.answered: collections.Counter[str] = collections.Counter()
        self.requests_by_status: collections.Counter[int] = collections.Counter()
        self.throttled: collections.Counter[str] = collections.Counter()
        self.timeline: collections.Counter[tuple[int, int]] = collections.Counter()
        self._attempts: collections.Counter[str] = collections.Counter()
        self._admitted = 0  # requests let through, for `hold_after`
        self._retry_headers: dict[str, str] | None = None  # for injected 429s, whose wait is configured
        if config.rate_limit_headers:
            ms = round(config.retry_after_s * 1000, 3)  # rounded so 0.07 s reads "70.0", not "70.000...01"
            self._retry_headers = {
                "retry-after-ms": repr(ms),
                "retry-after": str(max(1, math.ceil(ms / 1000))),
            }
        self._faults = FaultPicker(config)
        self._started_at = time.monotonic()  # replaced when the app starts serving
        self._limiter: RateLimiter | None = None
        self._outage: tuple[float, float] | None = None  # (start, end), monotonic; set at startup
        self.app = web.Application()
        self.app.on_startup.append(self._on_startup)
        self.app.router.add_post("/v1/chat/completions", self._chat_completions)
        self.app.router.add_post("/chat/completions", self._chat_completions)
        self.app.router.add_post("/v1/messages", self._messages)
        self.app.router.add_get("/v1/models", self._models)
        self.app.router.add_get("/health", self._health)
        self.batches = add_batch_apis(self.app.router, config.batch, config.seed, config.api_key)

    @property
    def started_at(self) -> float:
        """`time.monotonic()` when the app started serving: with the counters, a benchmark's rates."""
        return self._started_at

    async def _on_startup(self, app: web.Application) -> None:
        # The clocks start when serving does, not when the object was built: an outage "after 10 s" and a
        # full bucket mean the same whatever the test or benchmark did in between.
        config = self.config
        now = self._started_at = time.monotonic()
        if config.requests_per_minute is not None or config.tokens_per_minute is not None:
            self._limiter = RateLimiter(
                config.requests_per_minute,
                config.tokens_per_minute,
                config.rate_limit_headers,
                now,
                config.limit_window,
            )
        if config.outage_after_s is not None and config.outage_s > 0:
            start = now + config.outage_after_s
            self._outage = (start, start + config.outage_s)

    def _count(self, response: web.Response) -> web.Response:
        self._tally(response.status)
        return response

    def _tally(self, status: int) -> None:
        self.requests_by_status[status] += 1
        self.timeline[(int(time.monotonic()), status)] += 1

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, OPENAI)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, ANTHROPIC)

    async def _serve(self, request: web.Request, dialect: Dialect) -> web.StreamResponse:
        raw = await request.read()
        config = self.config
        if config.hold_after is not None:
            if self._admitted >= config.hold_after:
                # A server that stops answering mid-run: tests kill or interrupt a client against it
                # knowing exactly which requests were answered.
                await asyncio.get_running_loop().create_future()
            self._admitted += 1
        if self._outage is not None and self._outage[0] <= time.monotonic() < self._outage[1]:
            if config.latency_s > 0:
                await asyncio.sleep(config.latency_s)
            return self._count(_json_response(503, _in_dialect(dialect, 503, OUTAGE_BODY)))

        checked = self._check(raw, request.headers, dialect)
        if isinstance(checked, web.Response):
            if config.latency_s > 0:
                await asyncio.sleep(config.latency_s)
            return self._count(checked)
        messages = checked.messages
        limit = checked.limit

        headers: dict[str, str] | None = None
        if self._limiter is not None:
            cost = self._token_cost(checked.model, messages, limit) if self._limiter.counts_tokens else 0
            verdict = self._limiter.admit(cost, time.monotonic())
            headers = verdict.headers
            if verdict.refused is not None:
                # At once: a provider's gateway refuses before any model work, so no latency.
                self.throttled[verdict.refused] += 1
                body = _in_dialect(dialect, 429, LIMIT_BODIES[verdict.refused])
                return self._count(_json_response(429, body, headers))

        if config.latency_s > 0:
            await asyncio.sleep(config.latency_s)
        key = hashlib.sha256(raw).hexdigest()[:32]
        self._attempts[key] += 1
        if wants_400(messages):
            return self._count(_json_response(400, _in_dialect(dialect, 400, ERROR_DIRECTIVE), headers))

        fault = self._faults.pick(key, self._attempts[key]) if self._faults.active else None
        if fault is Fault.SLOW:
            await asyncio.sleep(config.slow_s)  # then answered like any other request
        elif fault is Fault.DROP:
            self.requests_by_status[STATUS_DROPPED] += 1
            return drop_connection(request)
        elif fault is not None and fault is not Fault.TRUNCATE:
            status, error = ERROR_BODIES[fault]
            if fault is Fault.E429 and self._retry_headers is not None:
                headers = {**headers, **self._retry_headers} if headers else self._retry_headers
            return self._count(_json_response(status, _in_dialect(dialect, status, error), headers))

        reply = answer(key, checked.model, messages, limit, checked.options)
        if fault is Fault.TRUNCATE:
            self.requests_by_status[STATUS_TRUNCATED] += 1
            if checked.stream:
                return await send_stream(request, dialect.events(key, checked, reply), headers, cut=True)
            return await send_truncated(request, dialect.reply(key, checked, reply), headers)
        self.answered[key] += 1
        if checked.stream:
            self._tally(200)
            return await send_stream(request, dialect.events(key, checked, reply), headers)
        return self._count(_json_response(200, dialect.reply(key, checked, reply), headers))

    def _check(self, raw: bytes, headers: Any, dialect: Dialect) -> web.Response | Parsed:
        """The 401 or 400 a request gets, or the request parsed."""
        api_key = self.config.api_key
        if api_key is not None and not dialect.authorized(headers, api_key):
            return _json_response(401, _in_dialect(dialect, 401, ERROR_401))
        try:
            return dialect.parse(raw)
        except BadRequest as exc:
            return _json_response(400, dialect.error(400, str(exc), "invalid_request_error", exc.param))

    @staticmethod
    def _token_cost(model: str, messages: list[Any], limit: int | None) -> int:
        """What a request costs under the TPM limit (see the class docstring)."""
        if limit is not None:
            return prompt_tokens(messages) + limit
        return prompt_tokens(messages) + count_tokens(completion(model, messages, None)[0])

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 1735689600, "owned_by": "emulator"} for m in MODELS]
        return _json_response(200, json.dumps({"object": "list", "data": data}).encode())

    async def _health(self, request: web.Request) -> web.Response:
        return _json_response(200, b'{"status": "ok"}')
