"""A local OpenAI-compatible chat-completions server: the demo provider, and the target of tests and benches.

Every answer is deterministic. The reply text is a function of the model and the messages only, so a rerun
of the same prompt set gives the same output; injected faults (429, 500) are a function of the seed, the raw
request body and how many times that body was seen, so a retrying client sees the same fault pattern on
every run. Requests are cheap to answer (no logging, stdlib `json`) so benchmarks measure the client.

Endpoints: `POST /v1/chat/completions` (also `/chat/completions`), `GET /v1/models`, `GET /health`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import math
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

__all__ = ["DIRECTIVE_400", "MODELS", "Emulator", "EmulatorConfig", "EmulatorServer", "count_tokens", "serve"]

MODELS = ("qwen3-8b", "qwen3-32b", "qwen3-235b-a22b", "qwen2.5-7b-instruct")
"""The model ids `GET /v1/models` lists; chat completions accept any model name."""

DIRECTIVE_400 = "[[emulator:400]]"
"""Put this in the last user message to get a 400 back: how tests exercise a row that fails for good."""

# The reply vocabulary by part of speech: cycling through `_GRAMMAR` makes word salad read like a sentence
# ("The quiet river keeps our letter while every early team finds the plan."). No "a": it cannot precede a
# vowel.
# fmt: off
_DETERMINERS = ("the", "this", "our", "every", "each", "that", "one")
_ADJECTIVES = ("small", "large", "quiet", "bright", "early", "late", "simple", "careful", "useful", "clear")
_NOUNS = (
    "team", "city", "river", "garden", "window", "letter", "market", "morning", "question", "answer",
    "plan", "report", "system", "road", "house", "friend", "teacher", "book", "idea", "result",
)
_VERBS = ("reads", "builds", "finds", "keeps", "shows", "brings", "takes", "makes", "opens", "follows")
_LINKS = ("and", "but", "while", "because", "so", "until", "after", "before", "when", "although")
# fmt: on
_GRAMMAR = (_DETERMINERS, _ADJECTIVES, _NOUNS, _VERBS, _DETERMINERS, _NOUNS, _LINKS)
_ENDINGS = frozenset(_NOUNS + _VERBS)  # a sentence cut short still ends on one of these
_SLOTS = tuple(_GRAMMAR[i % len(_GRAMMAR)] for i in range(40))  # the word list for each position


def _error(message: str, type_: str, param: str | None = None, code: str | None = None) -> bytes:
    """The JSON body OpenAI sends with every non-200 answer."""
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()


_ERROR_401 = _error("Incorrect API key provided.", "invalid_request_error", code="invalid_api_key")
_ERROR_429 = _error("Rate limit reached for requests (emulated).", "requests", code="rate_limit_exceeded")
_ERROR_500 = _error("The server had an error while processing your request (emulated).", "server_error")
_ERROR_DIRECTIVE = _error(
    f"The request was rejected by the emulator: {DIRECTIVE_400} in the prompt.",
    "invalid_request_error",
    param="messages",
    code="invalid_request",
)


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """How the emulator behaves: added latency, injected faults and an optional API key."""

    latency_s: float = 0.0  # added delay before each answer, errors included
    rate_429: float = 0.0  # share of requests answered 429
    rate_500: float = 0.0  # share of requests answered 500
    retry_after_s: float = 0.05  # advertised on 429s as `retry-after-ms` and `retry-after`
    api_key: str | None = None  # when set, requests must carry `Authorization: Bearer <api_key>`
    seed: int = 0  # seeds the fault choice
    hold_after: int | None = None  # answer this many requests, then hold every later one until stop()

    def __post_init__(self) -> None:
        for name in ("latency_s", "retry_after_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"EmulatorConfig.{name} must be a finite number >= 0, got {value!r}")
        for name in ("rate_429", "rate_500"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 <= value <= 1):
                raise ValueError(f"EmulatorConfig.{name} must be between 0 and 1, got {value!r}")
        # One draw decides both faults, so each rate is its share of all requests and they cannot overlap.
        if self.rate_429 + self.rate_500 > 1:
            raise ValueError(
                f"EmulatorConfig.rate_429 + rate_500 must be at most 1, got {self.rate_429} + {self.rate_500}"
            )
        if self.api_key is not None and not self.api_key:
            raise ValueError("EmulatorConfig.api_key must be None or a non-empty string")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"EmulatorConfig.seed must be an int, got {self.seed!r}")
        if self.hold_after is not None and (not isinstance(self.hold_after, int) or self.hold_after < 0):
            raise ValueError(
                f"EmulatorConfig.hold_after must be None or an int >= 0, got {self.hold_after!r}"
            )


_DEFAULT_CONFIG = EmulatorConfig()  # one shared default is safe: the config is frozen


def count_tokens(text: str) -> int:
    """A cheap deterministic token estimate (about four characters a token), never below 1."""
    return max(1, round(len(text) / 4))


def _content_text(content: object) -> str:
    """The text of a message's `content`: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    return ""


def _reply_text(model: str, messages: list[Any]) -> str:
    """The answer to a conversation: a sentence of 3 to 40 words, fixed by a hash of model and messages."""
    # Canonical JSON so key order and whitespace in the request do not change the answer; sampling
    # parameters (temperature, max_tokens, ...) are left out on purpose.
    canonical = json.dumps({"model": model, "messages": messages}, sort_keys=True, separators=(",", ":"))
    # One byte of hash per choice (the length, then each word), 64 bytes from two chained sha256: a seeded
    # `random.Random` costs several times more, and the slight modulo bias does not matter here.
    digest = hashlib.sha256(canonical.encode()).digest()
    digest += hashlib.sha256(digest).digest()
    length = 3 + digest[0] % 38
    words = [slot[byte % len(slot)] for slot, byte in zip(_SLOTS[:length], digest[1:], strict=False)]
    while words[-1] not in _ENDINGS:  # stops by the third word at the latest, a noun
        words.pop()
    return " ".join(words).capitalize() + "."


class _BadRequest(Exception):
    """A request body that cannot be answered; becomes a 400 naming the offending parameter."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _parse(raw: bytes) -> tuple[dict[str, Any], int | None]:
    """Parse and check a chat-completions body; return it and its completion-token limit, if any."""
    try:
        body = json.loads(raw)
    except ValueError:  # also bad UTF-8
        raise _BadRequest("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise _BadRequest("The request body must be a JSON object.")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _BadRequest("'model' is required and must be a non-empty string.", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' is required and must be a non-empty list.", "messages")
    for i, message in enumerate(messages):
        # Checked here so that the answering code can index messages without guarding every step.
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _BadRequest(f"'messages[{i}]' must be an object with a string 'role'.", f"messages[{i}]")
        if not isinstance(message.get("content"), str | list | None):
            raise _BadRequest(
                f"'messages[{i}].content' must be a string or a list of parts.", f"messages[{i}]"
            )
    if body.get("stream") is True:
        raise _BadRequest("streaming is not supported by the emulator yet", "stream")
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise _BadRequest(f"'{name}' must be an integer >= 1, got {value!r}.", name)
    # The newer name wins when both are sent; valid limits are >= 1, so `or` only skips absent ones.
    return body, body.get("max_completion_tokens") or body.get("max_tokens")


def _json_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


class Emulator:
    """Holds the config, the aiohttp Application and the counters.

    `answered[key]` counts the 200 answers per request key (the first 32 hex chars of the sha256 of the raw
    request body); `requests_by_status[status]` counts the chat-completion replies per HTTP status. Both are
    only written on the loop that serves `app`.
    """

    def __init__(self, config: EmulatorConfig = _DEFAULT_CONFIG) -> None:
        """Build the application; nothing listens until it is run (see `EmulatorServer` and `serve`)."""
        self.config = config
        self.answered: collections.Counter[str] = collections.Counter()
        self.requests_by_status: collections.Counter[int] = collections.Counter()
        self._attempts: collections.Counter[str] = collections.Counter()
        self._admitted = 0  # requests let through, for `hold_after`
        self._expected_auth = None if config.api_key is None else f"Bearer {config.api_key}"
        ms = round(config.retry_after_s * 1000, 3)  # rounded so 0.07 s reads "70.0", not "70.00000000000001"
        self._retry_headers = {"retry-after-ms": repr(ms), "retry-after": str(max(1, math.ceil(ms / 1000)))}
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self._chat_completions)
        self.app.router.add_post("/chat/completions", self._chat_completions)
        self.app.router.add_get("/v1/models", self._models)
        self.app.router.add_get("/health", self._health)

    async def _chat_completions(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if self.config.hold_after is not None:
            if self._admitted >= self.config.hold_after:
                # A server that stops answering mid-run: tests kill or interrupt a client against it
                # knowing exactly which requests were answered.
                await asyncio.get_running_loop().create_future()
            self._admitted += 1
        if self.config.latency_s > 0:
            await asyncio.sleep(self.config.latency_s)
        response = self._answer(raw, request.headers.get("Authorization"))
        self.requests_by_status[response.status] += 1
        return response

    def _answer(self, raw: bytes, authorization: str | None) -> web.Response:
        """The reply to one chat-completions request; synchronous, so it needs no locking."""
        if self._expected_auth is not None and authorization != self._expected_auth:
            return _json_response(401, _ERROR_401)
        try:
            body, limit = _parse(raw)
        except _BadRequest as exc:
            return _json_response(400, _error(str(exc), "invalid_request_error", exc.param))

        key = hashlib.sha256(raw).hexdigest()[:32]
        self._attempts[key] += 1
        messages: list[Any] = body["messages"]
        last_user = next((m for m in reversed(messages) if m["role"] == "user"), None)
        if last_user is not None and DIRECTIVE_400 in _content_text(last_user.get("content")):
            return _json_response(400, _ERROR_DIRECTIVE)

        config = self.config
        if config.rate_429 or config.rate_500:
            draw = random.Random(f"{config.seed}:{key}:{self._attempts[key]}").random()
            if draw < config.rate_429:
                return _json_response(429, _ERROR_429, self._retry_headers)
            if draw < config.rate_429 + config.rate_500:
                return _json_response(500, _ERROR_500)

        model: str = body["model"]
        text = _reply_text(model, messages)
        finish_reason = "stop"
        if limit is not None and count_tokens(text) > limit:
            # Four characters a token, so this cut keeps the estimate at or below the limit.
            text = text[: limit * 4].rstrip()
            finish_reason = "length"
        prompt_tokens = sum(count_tokens(_content_text(m.get("content"))) + 4 for m in messages) + 3
        completion_tokens = count_tokens(text)
        self.answered[key] += 1
        reply = {
            "id": f"chatcmpl-emu-{key[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "emulator",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
        }
        return _json_response(200, json.dumps(reply).encode())

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 1735689600, "owned_by": "emulator"} for m in MODELS]
        return _json_response(200, json.dumps({"object": "list", "data": data}).encode())

    async def _health(self, request: web.Request) -> web.Response:
        return _json_response(200, b'{"status": "ok"}')


def _base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/v1" if ":" in host else f"http://{host}:{port}/v1"


async def _start_site(emulator: Emulator, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start listening; return the runner and the port actually bound (port 0 picks a free one)."""
    # No access log: a log line per request would cost more than answering it. A short shutdown timeout
    # so stopping does not wait a minute for requests still sleeping out their latency.
    runner = web.AppRunner(emulator.app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, int(runner.addresses[0][1])


class EmulatorServer:
    """Runs an Emulator in a background daemon thread with its own asyncio loop.

    It listens on 127.0.0.1 by default, on a free port (port 0); use it as a context manager in tests.
    """

    def __init__(
        self, config: EmulatorConfig = _DEFAULT_CONFIG, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        """Prepare the server; `start` (or `with`) makes it listen."""
        self.emulator = Emulator(config)
        self._host = host
        self._port = port
        self._base_url: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._stopped = False

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, e.g. `http://127.0.0.1:43121/v1`; valid once `start` has returned."""
        if self._base_url is None:
            raise RuntimeError("EmulatorServer.base_url is only known after start()")
        return self._base_url

    def start(self, timeout: float = 10.0) -> str:
        """Start serving in a daemon thread, wait until it listens, and return the base URL."""
        if self._thread is not None:
            # The aiohttp app is frozen once served, so a stopped (or failed) server stays stopped.
            if self._stopped or self._base_url is None:
                raise RuntimeError("an EmulatorServer cannot be restarted; create a new one")
            return self._base_url
        self._thread = threading.Thread(target=self._run, name="batchrun-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"the emulator did not start listening within {timeout} s")
        if self._startup_error is not None:
            self._thread.join(timeout)
            raise self._startup_error
        return self.base_url

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            try:
                self._runner, port = loop.run_until_complete(
                    _start_site(self.emulator, self._host, self._port)
                )
            except BaseException as exc:  # handed to start(), which raises it in the caller's thread
                self._startup_error = exc
                return
            self._base_url = _base_url(self._host, port)
            self._ready.set()
            loop.run_forever()
            # Whatever the runner's cleanup left (e.g. a handler still sleeping) is cancelled here, so
            # closing the loop does not warn about pending tasks.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:  # gather() of nothing would look for a current loop, and this thread has none
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            self._ready.set()  # never leave start() waiting, whatever happened
            loop.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop listening, close open connections and join the thread; calling it again does nothing."""
        loop, runner, thread = self._loop, self._runner, self._thread
        self._runner = None
        if runner is None or loop is None or thread is None:
            return
        self._stopped = True
        try:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)

    def __enter__(self) -> EmulatorServer:
        """Start the server; the value is the server itself (its URL is `base_url`)."""
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Stop the server."""
        self.stop()


def serve(config: EmulatorConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Blocking: serve until Ctrl+C (for `batchrun emulate`), printing one line with the base URL."""
    emulator = Emulator(config)

    async def main() -> None:
        runner, bound = await _start_site(emulator, host, port)
        try:
            print(f"batchrun emulator serving at {_base_url(host, bound)} (Ctrl+C to stop)", flush=True)
            await asyncio.Event().wait()  # forever; Ctrl+C cancels this task
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl+C is how this command ends, not an error
        asyncio.run(main())
