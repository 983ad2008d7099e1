"""The Batch API clients against servers that fail, lose answers, or send odd and hostile things
(`httpx.MockTransport`: no sockets): bounded retries, no second batch for a lost create, ids and URLs
checked, lines matched only to what was sent, and the key never kept in a message."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from batchrun.errors import ErrorClass, ProviderError
from batchrun.providers import make_provider
from batchrun.providers.batchapi import AnthropicBatchAPI, BatchAPI, OpenAIBatchAPI, Part, Retry, Tag
from batchrun.providers.batchapi.base import jsonl_objects, line_error, refusal
from batchrun.providers.batchapi.control import Control
from batchrun.redact import hiding

KEY = "sk-secret-0123456789"
OPENAI_BASE = "https://batch.test/v1"
ANTHROPIC_BASE = "https://claude.test"
FAST = Retry(attempts=3, total_s=10, base_s=0.001, max_s=0.01)
Handler = Callable[[httpx.Request], httpx.Response]


def batch(batch_id: str = "batch_1", status: str = "in_progress", **extra: Any) -> dict[str, Any]:
    """An OpenAI Batch object."""
    return {
        "id": batch_id,
        "object": "batch",
        "status": status,
        "created_at": 1_800_000_000,
        "request_counts": {"total": 2, "completed": 0, "failed": 0},
        **extra,
    }


class Server:
    """A fake endpoint: `routes` maps (method, path) to a handler; every request is recorded."""

    def __init__(self, routes: dict[tuple[str, str], Handler]) -> None:
        self.routes = routes
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        handler = self.routes.get((request.method, request.url.path))
        return handler(request) if handler else httpx.Response(404, json={"error": {"message": "no route"}})

    def count(self, method: str, path: str) -> int:
        return sum(1 for r in self.seen if (r.method, r.url.path) == (method, path))


def run(server: Server, kind: str, work: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run `work(api)` with a client of `kind` on the fake server."""

    async def main() -> Any:
        async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as client:
            base = OPENAI_BASE if kind == "openai" else ANTHROPIC_BASE
            provider = make_provider(kind, base, KEY, {})
            api: BatchAPI
            if kind == "openai":
                api = OpenAIBatchAPI(client, provider, base, KEY, retry=FAST)
            else:
                api = AnthropicBatchAPI(client, provider, base, KEY, retry=FAST)
            return await work(api)

    return anyio.run(main)


def part(tmp_path: Path, n: int = 2) -> Part:
    """A part file (its content does not matter to these servers)."""
    path = tmp_path / "part-00000.jsonl"
    path.write_text("{}\n" * n)
    return Part(0, "m", path, tuple(f"{i:032x}" for i in range(n)), path.stat().st_size)


def test_control_calls_retry_5xx_and_429_within_bounds() -> None:
    """A 503 then a 200 is one answer; a server that keeps failing is tried `attempts` times, then raised."""
    replies = iter(
        [
            httpx.Response(503),
            httpx.Response(429, headers={"retry-after-ms": "1"}),
            httpx.Response(200, json=batch()),
        ]
    )
    flaky = Server({("GET", "/v1/batches/batch_1"): lambda r: next(replies)})
    assert run(flaky, "openai", lambda api: api.retrieve("batch_1")).state == "in_progress"
    assert flaky.count("GET", "/v1/batches/batch_1") == 3

    down = Server({("GET", "/v1/batches/batch_1"): lambda r: httpx.Response(502)})
    with pytest.raises(ProviderError) as info:
        run(down, "openai", lambda api: api.retrieve("batch_1"))
    assert info.value.retryable
    assert down.count("GET", "/v1/batches/batch_1") == FAST.attempts


def test_a_refused_key_stops_at_once_and_is_never_repeated_back(tmp_path: Path) -> None:
    """A 401 is fatal after one request, and the key the server echoes is scrubbed from the message."""
    echo = Server(
        {
            ("POST", "/v1/files"): lambda r: httpx.Response(
                401, json={"error": {"message": f"bad key {KEY}", "code": "invalid_api_key"}}
            )
        }
    )
    with pytest.raises(ProviderError) as info:
        run(echo, "openai", lambda api: api.submit(part(tmp_path), Tag("j", "r", 0, 2)))
    assert info.value.error_class is ErrorClass.FATAL
    assert KEY not in str(info.value)
    assert echo.count("POST", "/v1/files") == 1


def test_other_secrets_of_the_run_are_scrubbed_from_batch_errors_too() -> None:
    """A `base_url` credential or auth header (hidden by the run) echoed in a batch's errors is not kept."""
    password = "pw-0123456789-secret"
    echoed = f"bad request from user:{password}@host"
    with hiding([password]):
        errors = [line_error("x", echoed, KEY), refusal("invalid_request", echoed, KEY)]
    for error in errors:
        assert isinstance(error, ProviderError)
        assert password not in str(error)
        assert "user:***@host" in error.message


def test_a_server_without_the_batch_api_is_named_as_such(tmp_path: Path) -> None:
    """A 404 on /files stops the run (not `model_not_found`), saying the server may not offer batches."""
    server = Server({})
    with pytest.raises(ProviderError) as info:
        run(server, "openai", lambda api: api.submit(part(tmp_path), Tag("j", "r", 0, 2)))
    assert (info.value.error_type, info.value.error_class) == ("not_found", ErrorClass.FATAL)
    assert "does this server offer the Batch API?" in info.value.message


def test_a_create_whose_answer_is_lost_is_found_not_repeated(tmp_path: Path) -> None:
    """The create is made server-side but answered 500: the client lists, finds it by its tag, stops."""
    created: list[dict[str, Any]] = []

    def create(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        created.append(batch(f"batch_{len(created) + 1}", metadata=body["metadata"]))
        return httpx.Response(500, json={"error": {"message": "upstream timeout"}})

    server = Server(
        {
            ("POST", "/v1/files"): lambda r: httpx.Response(200, json={"id": "file-1"}),
            ("POST", "/v1/batches"): create,
            ("GET", "/v1/batches"): lambda r: httpx.Response(
                200, json={"data": created[::-1], "has_more": False}
            ),
        }
    )
    info = run(server, "openai", lambda api: api.submit(part(tmp_path), Tag("job", "run9", 0, 2)))
    assert info.id == "batch_1"
    assert info.tag_key == ("run9", 0)
    assert server.count("POST", "/v1/batches") == 1


@pytest.mark.parametrize(
    ("failure", "lists"),
    [(httpx.Response(429, json={"error": {"message": "slow down"}}), 0), (httpx.ReadTimeout("no answer"), 1)],
)
def test_a_refused_create_is_retried_and_an_unanswered_one_looked_for_first(
    tmp_path: Path, failure: httpx.Response | Exception, lists: int
) -> None:
    """A 429 never made the batch: retried at once; a timeout may have: the list is read before retrying."""
    attempts = iter([failure, httpx.Response(200, json=batch())])

    def create(request: httpx.Request) -> httpx.Response:
        outcome = next(attempts)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    server = Server(
        {
            ("POST", "/v1/files"): lambda r: httpx.Response(200, json={"id": "file-1"}),
            ("POST", "/v1/batches"): create,
            ("GET", "/v1/batches"): lambda r: httpx.Response(200, json={"data": [], "has_more": False}),
        }
    )
    assert run(server, "openai", lambda api: api.submit(part(tmp_path), Tag("j", "r", 0, 2))).id == "batch_1"
    assert server.count("POST", "/v1/batches") == 2
    assert server.count("GET", "/v1/batches") == lists


@pytest.mark.parametrize("bad_id", ["../../files/x", "batch 1", "", None, "a" * 300, "batch?x=1"])
def test_ids_a_server_gives_are_checked_before_any_url_holds_them(bad_id: Any) -> None:
    """A batch id with path or query characters stops the run as `bad_response`; it is never requested."""
    server = Server(
        {
            ("GET", "/v1/batches"): lambda r: httpx.Response(
                200, json={"data": [batch(bad_id)], "has_more": True}
            )
        }
    )
    with pytest.raises(ProviderError) as info:
        run(server, "openai", lambda api: api.page())
    assert (info.value.error_type, info.value.error_class) == ("bad_response", ErrorClass.FATAL)
    assert len(server.seen) == 1


def test_results_url_on_another_host_is_not_followed(tmp_path: Path) -> None:
    """The key is never sent to a host the job did not name: the documented path is used instead."""
    ended = {
        "id": "msgbatch_1",
        "type": "message_batch",
        "processing_status": "ended",
        "created_at": "2026-12-01T00:00:00Z",
        "request_counts": {"processing": 0, "succeeded": 1, "errored": 0, "canceled": 0, "expired": 0},
        "results_url": "https://collector.example/steal",
    }
    line = {"custom_id": "a" * 32, "result": {"type": "expired"}}
    server = Server(
        {
            ("GET", "/v1/messages/batches/msgbatch_1"): lambda r: httpx.Response(200, json=ended),
            ("GET", "/v1/messages/batches/msgbatch_1/results"): lambda r: httpx.Response(
                200, content=json.dumps(line)
            ),
        }
    )

    async def work(api: AnthropicBatchAPI) -> list[Path]:
        return await api.download(await api.retrieve("msgbatch_1"), tmp_path)

    (path,) = run(server, "anthropic", work)
    assert {r.url.host for r in server.seen} == {"claude.test"}
    assert path.name == "msgbatch_1.results.jsonl"


def test_result_lines_are_matched_only_to_what_was_sent(tmp_path: Path) -> None:
    """Foreign, repeated and broken lines are ignored; DashScope's top-level error_code is read; unanswered
    requests are `missing`; error messages lose the key; a 200 that is no reply is a retryable error."""
    ids = [f"{i:032x}" for i in range(6)]
    body = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]
    }
    lines = [
        {"custom_id": ids[0], "response": {"status_code": 200, "body": body}, "error": None},
        {"custom_id": ids[0], "response": {"status_code": 400, "body": {"error": {"message": "dup"}}}},
        {"custom_id": "not-ours", "response": {"status_code": 200, "body": body}},
        {
            "custom_id": ids[1],
            "response": {
                "status_code": 400,
                "body": {"error": {"message": f"echo {KEY}", "code": "InvalidParameter"}},
            },
        },
        {
            "custom_id": ids[2],
            "response": None,
            "error": None,
            "error_code": "batch_expired",
            "error_message": "late",
        },
        {"custom_id": ids[3], "response": {"status_code": 200, "body": {"object": "nothing"}}},
        {
            "custom_id": ids[4],
            "response": None,
            "error": {"code": "DataInspectionFailed", "message": "filtered"},
        },
    ]
    path = tmp_path / "out.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\nnot json at all\n[1, 2]\n")

    async def work(api: OpenAIBatchAPI) -> list[Any]:
        return list(api.read([path], ids))

    results = {r.custom_id: r for r in run(Server({}), "openai", work)}
    assert list(results) == [*ids[:5], ids[5]]
    assert results[ids[0]].reply is not None
    assert results[ids[0]].reply.completion == "ok"
    bad = results[ids[1]].error
    assert bad is not None
    assert (bad.status, bad.error_type) == (400, "bad_request")
    assert KEY not in bad.message
    assert results[ids[2]].unanswered == "expired"
    assert results[ids[3]].error is not None
    assert results[ids[3]].error.retryable
    assert results[ids[4]].error is not None
    assert results[ids[4]].error.error_type == "content_filter"
    assert results[ids[5]].unanswered == "missing"


def test_anthropic_result_lines_are_classified_by_error_type(tmp_path: Path) -> None:
    """`errored` lines are read by the provider's error reader (billing stops, overloaded retries), no
    HTTP status; an unknown result type is a retryable bad response."""
    ids = ["a" * 32, "b" * 32, "c" * 32]

    def errored(kind: str) -> dict[str, Any]:
        return {"type": "errored", "error": {"type": "error", "error": {"type": kind, "message": kind}}}

    lines = [
        {"custom_id": ids[0], "result": errored("billing_error")},
        {"custom_id": ids[1], "result": errored("overloaded_error")},
        {"custom_id": ids[2], "result": {"type": "surprise"}},
    ]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))

    async def work(api: AnthropicBatchAPI) -> list[Any]:
        return list(api.read([path], ids))

    results = run(Server({}), "anthropic", work)
    kinds = [(r.error.error_type, r.error.error_class, r.error.status) for r in results]
    assert kinds == [
        ("billing", ErrorClass.FATAL, None),
        ("overloaded", ErrorClass.RETRY, None),
        ("bad_response", ErrorClass.RETRY, 200),
    ]


def test_odd_batch_objects_are_read_defensively() -> None:
    """DashScope's 0 timestamps are None; an unknown status is `unknown` (not done); odd counts are 0."""
    odd = batch(
        status="queued",
        created_at=0,
        request_counts={"total": "2", "completed": -1, "failed": True},
        output_file_id="",
    )
    server = Server({("GET", "/v1/batches/batch_1"): lambda r: httpx.Response(200, json=odd)})
    info = run(server, "openai", lambda api: api.retrieve("batch_1"))
    assert (info.state, info.done, info.created_at, info.output_file_id) == ("unknown", False, None, None)
    assert (info.counts.total, info.counts.succeeded, info.counts.failed) == (None, 0, 0)


def test_cancelling_a_finished_batch_returns_it_as_it_is() -> None:
    """A 400 to a cancel (the batch is over) is answered by retrieving the batch, not by an error."""
    server = Server(
        {
            ("POST", "/v1/batches/batch_1/cancel"): lambda r: httpx.Response(
                400, json={"error": {"message": "completed"}}
            ),
            ("GET", "/v1/batches/batch_1"): lambda r: httpx.Response(200, json=batch(status="completed")),
        }
    )
    assert run(server, "openai", lambda api: api.cancel("batch_1")).state == "completed"


def test_find_reads_the_list_back_to_the_intent_and_no_further() -> None:
    """Pages are read newest first until one ends before `since` (less the clock skew allowance)."""
    since = 1_800_000_000
    pages = {
        None: ([batch("batch_3", created_at=since + 10), batch("batch_2", created_at=since - 4000)], True),
        "batch_2": ([batch("batch_1", created_at=since - 9000)], False),
    }

    def listing(request: httpx.Request) -> httpx.Response:
        data, more = pages[request.url.params.get("after")]
        return httpx.Response(200, json={"data": data, "has_more": more})

    server = Server({("GET", "/v1/batches"): listing})
    assert run(server, "openai", lambda api: api.find([Tag("j", "r", 0, 2)], since)) == {}
    assert server.count("GET", "/v1/batches") == 1


def test_downloads_are_bounded_and_leave_nothing_half_written(tmp_path: Path) -> None:
    """A file over the size cap fails at once (the same file would be as big again), leaving no file."""
    server = Server({("GET", "/v1/files/file-1/content"): lambda r: httpx.Response(200, content=b"x" * 5000)})

    async def work(api: OpenAIBatchAPI) -> Path:
        return await Control(api.control.client, api.provider, KEY, FAST).download(
            f"{OPENAI_BASE}/files/file-1/content", tmp_path / "out.jsonl", max_bytes=1000
        )

    with pytest.raises(ProviderError, match="over 1000 bytes") as info:
        run(server, "openai", work)
    assert info.value.error_class is ErrorClass.FATAL
    assert server.count("GET", "/v1/files/file-1/content") == 1
    assert list(tmp_path.iterdir()) == []


def test_over_long_result_lines_are_skipped(tmp_path: Path) -> None:
    """A line past the cap is skipped whole (its request then reads as missing), the next one read."""
    path = tmp_path / "results.jsonl"
    path.write_text(
        json.dumps({"custom_id": "x", "pad": "y" * 5000}) + "\n" + json.dumps({"custom_id": "z"}) + "\n"
    )
    assert [d["custom_id"] for d in jsonl_objects([path], max_line_bytes=1000)] == ["z"]
    assert Counter(type(d).__name__ for d in jsonl_objects([path])) == {"dict": 2}


@pytest.mark.parametrize(("prompt_tokens", "readable"), [(12, True), (123456789012345678901234567890, False)])
def test_a_line_only_json_can_read_is_judged_as_live(
    tmp_path: Path, prompt_tokens: int, readable: bool
) -> None:
    """A lone surrogate parses, as live; a count past 64 bits is a bad response, as live."""
    custom_id = "d" * 32
    body = (
        '{"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi \\ud83d"}, '
        f'"finish_reason": "stop"}}], "usage": {{"prompt_tokens": {prompt_tokens}}}}}'
    )
    line = f'{{"custom_id": "{custom_id}", "response": {{"status_code": 200, "body": {body}}}}}'
    path = tmp_path / "out.jsonl"
    path.write_text(line + "\n")

    async def work(api: OpenAIBatchAPI) -> list[Any]:
        return list(api.read([path], [custom_id]))

    (result,) = run(Server({}), "openai", work)
    if readable:
        assert result.reply is not None
        assert result.reply.completion == "hi \ud83d"
        assert result.reply.usage.prompt_tokens == 12
    else:
        assert result.reply is None
        assert result.error is not None
        assert result.error.error_type == "bad_response"


def test_an_endless_control_reply_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reply past the control cap is a bad response, read no further than the cap."""
    monkeypatch.setattr("batchrun.providers.batchapi.control.REPLY_BYTES", 1000)
    endless = Server({("GET", "/v1/batches/batch_1"): lambda r: httpx.Response(200, content=b"[" * 5000)})
    with pytest.raises(ProviderError, match="over 1000 bytes") as info:
        run(endless, "openai", lambda api: api.retrieve("batch_1"))
    assert info.value.error_type == "bad_response"
