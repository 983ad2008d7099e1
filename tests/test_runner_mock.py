"""`run_job` end to end with `httpx.MockTransport`: retries, row errors, stops and resume, without sockets."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import polars as pl
import pytest

from batchrun.engines import run as runner_module
from batchrun.engines.run import run_job
from batchrun.errors import StopRun, UsageError
from batchrun.job.loader import load_job
from batchrun.job.schema import Job
from batchrun.limits.pacing import Limiter
from batchrun.limits.retry import RETRY_AFTER_CAP_S
from batchrun.net.endpoint import read_key
from batchrun.report.summary import Summary

WriteJob = Callable[..., Path]
Outcome = Callable[[httpx.Request, str], httpx.Response]

BASE_URL = "http://llm.test/v1"
ROWS = 40
MAX_REQUESTS = 200  # no test needs more; a runaway retry loop fails instead of spinning
PROMPT_TOKENS, COMPLETION_TOKENS = 20, 2
QWEN3_MAX_COST = PROMPT_TOKENS * 1.2e-6 + COMPLETION_TOKENS * 6.0e-6


def ok(request: httpx.Request, row: str) -> httpx.Response:
    """A 200 chat.completion answering `row`."""
    return httpx.Response(
        200,
        json={
            "id": f"chatcmpl-{row}",
            "object": "chat.completion",
            "created": 1763798400,
            "model": "qwen3-max",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"label-{row}"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": PROMPT_TOKENS,
                "completion_tokens": COMPLETION_TOKENS,
                "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
            },
        },
    )


def status(code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Outcome:
    """An outcome replying `code` with a JSON error body."""
    return lambda request, row: httpx.Response(code, json=body, headers=headers)


def rate_limited(retry_after_ms: str) -> Outcome:
    """A DashScope-style 429 with `retry-after-ms`."""
    body = {"error": {"message": "Requests rate limit exceeded", "code": "Throttling.RateQuota"}}
    return status(429, body, {"retry-after-ms": retry_after_ms})


def truncated(request: httpx.Request, row: str) -> httpx.Response:
    """A 200 whose body was cut short."""
    return httpx.Response(200, content=ok(request, row).content[:70])


def connection_refused(request: httpx.Request, row: str) -> httpx.Response:
    """The connection fails before any reply."""
    raise httpx.ConnectError("[Errno 111] Connection refused", request=request)


SERVER_ERROR = status(500, {"error": {"message": "Internal error", "code": "InternalError"}})
BAD_REQUEST = status(
    400, {"error": {"message": "Range of max_tokens should be [1, 8192]", "code": "InvalidParameter"}}
)
BAD_KEY = status(
    401,
    {
        "error": {
            "message": "Incorrect API key provided.",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
        }
    },
)


class FakeEndpoint:
    """A deterministic OpenAI-compatible endpoint: a scripted reply per row and attempt, then `ok`."""

    def __init__(self, reviews: Path, script: dict[str, list[Outcome]] | None = None) -> None:
        rows = pl.read_ndjson(reviews).select("id", "text").rows()
        self.row_by_text = {text: row_id for row_id, text in rows}
        self.script = script or {}
        self.calls: Counter[str] = Counter()
        self.log: list[tuple[str, float, int]] = []  # (row, arrival time, status or 0) per request
        self.authorization: set[str | None] = set()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert len(self.log) < MAX_REQUESTS, "runaway request loop"
        assert request.method == "POST"
        assert str(request.url) == f"{BASE_URL}/chat/completions"
        self.authorization.add(request.headers.get("authorization"))
        body = json.loads(request.content)
        assert body["model"] == "qwen3-max"
        row = self.row_of(body["messages"][-1]["content"])
        attempt = self.calls[row]
        self.calls[row] += 1
        steps = self.script.get(row, [])
        outcome = steps[attempt] if attempt < len(steps) else ok
        arrived = time.monotonic()
        try:
            response = outcome(request, row)
        except httpx.TransportError:
            self.log.append((row, arrived, 0))
            raise
        self.log.append((row, arrived, response.status_code))
        return response

    def row_of(self, prompt: str) -> str:
        """The input row whose review text is in this prompt."""
        (row,) = [row_id for text, row_id in self.row_by_text.items() if text in prompt]
        return row

    @property
    def total(self) -> int:
        """Requests received."""
        return sum(self.calls.values())


def make_job(write_job: WriteJob, *overrides: str) -> Job:
    """The shared test job (40 reviews, concurrency 8, millisecond backoff) pointed at the fake endpoint."""
    return load_job(write_job(BASE_URL), overrides)


def run(job: Job, endpoint: FakeEndpoint) -> Summary:
    """`run_job` over the fake endpoint."""
    return run_job(job, transport=httpx.MockTransport(endpoint))


def endpoint_rows(reviews: Path) -> list[str]:
    """Every input row id."""
    return pl.read_ndjson(reviews)["id"].to_list()


def output(job: Job) -> dict[str, dict[str, Any]]:
    """The output rows by input id."""
    return {row["id"]: row for row in pl.read_parquet(job.output_path).iter_rows(named=True)}


def test_every_row_ok_with_usage_and_cost(write_job: WriteJob, reviews: Path) -> None:
    """A healthy endpoint gives one ok row per input row with the reply's text, usage and qwen3-max cost."""
    endpoint = FakeEndpoint(reviews)
    job = make_job(write_job)
    summary = run(job, endpoint)
    rows = output(job)
    assert summary.exit_code == 0
    assert summary.ok == ROWS
    assert summary.sent == ROWS
    assert endpoint.total == ROWS
    assert endpoint.authorization == {None}  # no api_key_env: no Authorization header
    assert list(rows) == pl.read_ndjson(reviews)["id"].to_list()
    first = rows["r0001"]
    assert first["status"] == "ok"
    assert first["completion"] == "label-r0001"
    assert first["response_id"] == "chatcmpl-r0001"
    assert first["total_tokens"] == PROMPT_TOKENS + COMPLETION_TOKENS
    assert first["attempts"] == 1
    assert first["cost_usd"] == pytest.approx(QWEN3_MAX_COST)
    assert summary.cost_usd == pytest.approx(ROWS * QWEN3_MAX_COST)


@pytest.mark.parametrize(
    "failure",
    [rate_limited("5"), truncated, connection_refused],
    ids=["429-retry-after-ms", "truncated-body", "connect-error"],
)
def test_transient_failure_then_success_is_ok_on_attempt_2(
    write_job: WriteJob, reviews: Path, failure: Outcome
) -> None:
    """A 429 with retry-after-ms, a body cut short, or a refused connection is retried once to success."""
    endpoint = FakeEndpoint(reviews, {"r0003": [failure]})
    job = make_job(write_job)
    summary = run(job, endpoint)
    rows = output(job)
    assert rows["r0003"]["status"] == "ok"
    assert rows["r0003"]["attempts"] == 2
    assert rows["r0003"]["completion"] == "label-r0003"
    assert rows["r0003"]["error_type"] is None
    assert endpoint.calls["r0003"] == 2
    assert sorted({row["attempts"] for row_id, row in rows.items() if row_id != "r0003"}) == [1]
    assert summary.ok == ROWS
    assert summary.exit_code == 0
    assert summary.sent == ROWS + 1


def test_429_pauses_every_worker_for_its_retry_after(write_job: WriteJob, reviews: Path) -> None:
    """After a 429 asking for 150 ms, no request of any row is sent until those 150 ms have passed."""
    endpoint = FakeEndpoint(reviews, {"r0001": [rate_limited("150")]})
    job = make_job(write_job)
    run(job, endpoint)
    (at_429,) = [when for _, when, code in endpoint.log if code == 429]
    later = [when - at_429 for _, when, _ in endpoint.log if when > at_429]
    assert later
    assert min(later) >= 0.14
    assert output(job)["r0001"]["attempts"] == 2


def test_401_stops_the_run_naming_the_env_var(
    write_job: WriteJob, reviews: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 401 raises StopRun naming the key's env var (never the key), after at most a round of requests."""
    monkeypatch.setenv("BATCHRUN_TEST_KEY", "sk-wrong-123")
    endpoint = FakeEndpoint(reviews, {row: [BAD_KEY] for row in endpoint_rows(reviews)})
    job = make_job(write_job, "provider.api_key_env=BATCHRUN_TEST_KEY")
    with pytest.raises(StopRun) as info:
        run(job, endpoint)
    message = str(info.value)
    assert "HTTP 401 (invalid_api_key)" in message
    assert "BATCHRUN_TEST_KEY" in message
    assert "sk-wrong-123" not in message
    assert info.value.exit_code == 3
    assert endpoint.authorization == {"Bearer sk-wrong-123"}
    assert endpoint.total <= job.limits.concurrency
    # The output of the stopped run holds every row; none was answered.
    statuses = pl.read_parquet(job.output_path)["status"]
    assert statuses.len() == 40
    assert "ok" not in statuses
    summary = info.value.summary
    assert summary is not None
    assert summary.pending == 40 - summary.failed >= 40 - job.limits.concurrency


def test_the_first_requests_go_out_while_the_rest_are_still_being_queued(
    write_job: WriteJob, reviews: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The producer lets the workers run every FEED_TURN requests, so connections open (and requests go
    out) while a wave is queued, not after all of it is (a 1,024-request wave went out 0.2 s late)."""
    monkeypatch.setattr(runner_module, "FEED_TURN", 5)
    queued: list[object] = []
    real_send = runner_module.send

    async def counting_send(stream: Any, item: Any) -> None:
        queued.append(item)
        await real_send(stream, item)

    monkeypatch.setattr(runner_module, "send", counting_send)
    seen_at_first_request: list[int] = []
    endpoint = FakeEndpoint(reviews)

    def handler(request: httpx.Request) -> httpx.Response:
        seen_at_first_request.append(len(queued))
        return endpoint(request)

    job = make_job(write_job, "limits.concurrency=40")
    summary = run_job(job, transport=httpx.MockTransport(handler))
    assert summary.ok == ROWS
    assert len(queued) == ROWS
    # Within a turn or two of 5 (a request's own path yields once); without the turns, all 40 (they fit
    # the stream's buffer).
    assert seen_at_first_request[0] <= 10


def test_missing_key_env_var_raises_before_sending(
    write_job: WriteJob, reviews: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job whose key variable is unset raises UsageError naming it, and sends nothing."""
    monkeypatch.delenv("BATCHRUN_TEST_KEY", raising=False)
    endpoint = FakeEndpoint(reviews)
    job = make_job(write_job, "provider.api_key_env=BATCHRUN_TEST_KEY")
    with pytest.raises(UsageError, match="BATCHRUN_TEST_KEY is not set"):
        run(job, endpoint)
    assert endpoint.total == 0
    assert not job.output_path.exists()


def test_a_key_with_a_line_end_is_trimmed_and_one_with_a_break_inside_is_refused(
    write_job: WriteJob, reviews: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key ending in CRLF is sent without it; a break inside it stops the run naming the variable, not
    the key, before anything is sent."""
    job = make_job(write_job, "provider.api_key_env=BATCHRUN_TEST_KEY")
    monkeypatch.setenv("BATCHRUN_TEST_KEY", "sk-live-1\r\n")
    endpoint = FakeEndpoint(reviews)
    run(job, endpoint)
    assert endpoint.authorization == {"Bearer sk-live-1"}
    monkeypatch.setenv("BATCHRUN_TEST_KEY", "sk-live-1\nX-Evil: 1")
    broken = FakeEndpoint(reviews)
    with pytest.raises(UsageError, match="the key in BATCHRUN_TEST_KEY holds a control character") as info:
        run(job, broken)
    assert "sk-live" not in str(info.value)
    assert broken.total == 0
    # The emulator's --api-key-env and the log's redaction read the key the same way.
    monkeypatch.setenv("BATCHRUN_TEST_KEY", " \t\r\n")
    assert read_key("BATCHRUN_TEST_KEY") is None
    monkeypatch.setenv("BATCHRUN_TEST_KEY", "sk-live-1\r\n")
    assert read_key("BATCHRUN_TEST_KEY") == "sk-live-1"


def test_400_fails_only_its_row_without_retry(write_job: WriteJob, reviews: Path) -> None:
    """A 400 fails that row once (attempts 1, http_status 400, the provider's message); the run exits 1."""
    endpoint = FakeEndpoint(reviews, {"r0004": [BAD_REQUEST, BAD_REQUEST]})
    job = make_job(write_job)
    summary = run(job, endpoint)
    bad = output(job)["r0004"]
    assert bad["status"] == "error"
    assert bad["attempts"] == 1
    assert bad["http_status"] == 400
    assert bad["error_type"] == "bad_request"
    assert bad["error"] == "Range of max_tokens should be [1, 8192]"
    assert bad["completion"] is None
    assert bad["cost_usd"] is None
    assert endpoint.calls["r0004"] == 1
    assert summary.failed == 1
    assert summary.ok == ROWS - 1
    assert summary.errors == {"bad_request": 1}
    assert summary.exit_code == 1


def test_rows_out_of_retries_are_the_only_ones_resent(write_job: WriteJob, reviews: Path) -> None:
    """Rows that got 500 on every attempt end as errors; a rerun sends only them, not ok or 400 rows."""
    always_500 = [SERVER_ERROR] * 10
    endpoint = FakeEndpoint(reviews, {"r0002": always_500, "r0007": always_500, "r0004": [BAD_REQUEST]})
    job = make_job(write_job, "limits.max_attempts=3")
    first = run(job, endpoint)
    rows = output(job)
    for row_id in ("r0002", "r0007"):
        assert rows[row_id]["status"] == "error"
        assert rows[row_id]["error_type"] == "server_error"
        assert rows[row_id]["attempts"] == 3
        assert rows[row_id]["http_status"] == 500
        assert endpoint.calls[row_id] == 3
    assert first.failed == 3
    assert first.errors == {"server_error": 2, "bad_request": 1}

    healthy = FakeEndpoint(reviews)
    second = run(job, healthy)
    rows = output(job)
    assert healthy.calls == Counter({"r0002": 1, "r0007": 1})
    assert rows["r0002"]["status"] == "ok"
    assert rows["r0007"]["attempts"] == 1
    assert rows["r0004"]["status"] == "error"
    assert second.sent == 2
    assert second.reused == ROWS - 2
    assert second.ok == ROWS - 1
    assert second.errors == {"bad_request": 1}
    assert len(rows) == ROWS


def journal(job: Job) -> list[dict[str, Any]]:
    """The results a run journaled, oldest first."""
    path = job.output_path.with_name(job.output_path.name + ".run") / "results.jsonl"
    return (
        [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []
    )


def test_answers_arriving_with_a_fatal_reply_are_journaled(write_job: WriteJob, reviews: Path) -> None:
    """200s that reach batchrun together with an unpaid-account 400 are journaled before the run stops."""
    endpoint = FakeEndpoint(reviews)
    arrived: list[str] = []
    answered: list[str] = []
    all_in_flight = anyio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        row = endpoint.row_of(json.loads(request.content)["messages"][-1]["content"])
        arrived.append(row)
        assert len(arrived) <= 8, "only the first round of requests is answered"
        if len(arrived) < 8:
            with anyio.move_on_after(2):  # bounded: the eighth request releases everyone
                await all_in_flight.wait()
            answered.append(row)
            return ok(request, row)
        all_in_flight.set()
        return httpx.Response(
            400, json={"code": "Arrearage", "message": "Access denied: account in arrears."}
        )

    job = make_job(write_job, "limits.timeout_s=5", "limits.adaptive=false")  # eight in flight at once
    with pytest.raises(StopRun, match="Arrearage"):
        run_job(job, transport=httpx.MockTransport(handler))
    assert len(answered) == 7
    journaled_ok = sorted(r["custom_id"] for r in journal(job) if r["status"] == "ok")
    assert len(journaled_ok) == len(answered)


def test_malformed_200_is_retried_not_a_crash(write_job: WriteJob, reviews: Path) -> None:
    """A 200 whose first choice is null is retried like any unusable reply, and the row ends ok."""
    malformed: Outcome = lambda request, row: httpx.Response(200, json={"id": "x", "choices": [None]})  # noqa: E731
    endpoint = FakeEndpoint(reviews, {"r0003": [malformed]})
    job = make_job(write_job)
    summary = run(job, endpoint)
    assert output(job)["r0003"]["attempts"] == 2
    assert summary.ok == ROWS


def test_run_wide_pause_after_a_429_is_capped_like_the_retry_wait(
    write_job: WriteJob, reviews: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 429 with `retry-after: 3600` pauses the whole run no longer than the capped retry wait."""
    pauses: list[float] = []
    cool_down = Limiter.cool_down

    def recording_cool_down(self: Any, seconds: float) -> None:
        cool_down(self, seconds)
        pauses.append(self._cool_until - time.monotonic())

    monkeypatch.setattr(Limiter, "cool_down", recording_cool_down)
    slow_down = status(429, {"error": {"message": "Too many requests"}}, {"retry-after": "3600"})
    endpoint = FakeEndpoint(reviews, {"r0001": [slow_down]})
    job = make_job(write_job, "limits.max_attempts=1")  # one row, one attempt: nothing waits on the pause
    summary = run_job(job, limit=1, transport=httpx.MockTransport(endpoint))
    assert summary.errors == {"rate_limited": 1}
    assert len(pauses) == 1
    assert 0 < pauses[0] <= max(job.limits.backoff_max_s, RETRY_AFTER_CAP_S)
