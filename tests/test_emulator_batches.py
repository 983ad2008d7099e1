"""The emulator's Batch APIs over HTTP on 127.0.0.1: phases, shuffled output, error files, expiry, refusals,
cancels, metadata, DashScope's error lines, and answers equal to live replies."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from batchrun.emulator import DIRECTIVE_400, EmulatorServer
from batchrun.emulator.batchconfig import BatchConfig

Start = Callable[..., EmulatorServer]
POLLS = 400  # a bounded wait: 400 x 20 ms; the default batch takes 0.3 s
MODEL = "qwen-max"


def _body(i: int, prompt: str = "Label review") -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": f"{prompt} {i}"}], "max_tokens": 16}


def _lines(n: int, **changes: Any) -> list[dict[str, Any]]:
    lines = [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": _body(i)}
        for i in range(n)
    ]
    for index, body in changes.items():
        lines[int(index[1:])]["body"] = body
    return lines


@pytest.fixture
def http() -> Iterator[Callable[[EmulatorServer], httpx.Client]]:
    """Plain httpx clients on an emulator's OpenAI base URL (closed at the end)."""
    clients: list[httpx.Client] = []

    def make(server: EmulatorServer, base: str | None = None) -> httpx.Client:
        client = httpx.Client(base_url=base or server.base_url, trust_env=False, timeout=10)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def _submit(client: httpx.Client, lines: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    upload = client.post("/files", files={"file": ("in.jsonl", content)}, data={"purpose": "batch"})
    assert upload.status_code == 200, upload.text
    body = {
        "input_file_id": upload.json()["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    created = client.post("/batches", json={**body, **extra})
    assert created.status_code == 200, created.text
    return dict(created.json())


def _follow(client: httpx.Client, path: str, until: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """Poll `path` (bounded) until `until` holds; every object seen, in order."""
    seen = []
    for _ in range(POLLS):
        seen.append(client.get(path).json())
        if until(seen[-1]):
            return seen
        time.sleep(0.02)
    raise AssertionError(f"{path} never got there: {seen[-1]}")


def _done(batch: dict[str, Any]) -> bool:
    return batch["status"] in ("completed", "failed", "expired", "cancelled")


def _file_lines(client: httpx.Client, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.get(f"/files/{file_id}/content").text.splitlines()]


def test_a_batch_goes_through_each_phase_and_answers_every_request(emulator: Start, http: Any) -> None:
    """validating, in_progress (counts rising), finalizing, completed; one output line per request."""
    server = emulator(batch=BatchConfig(validating_s=0.1, in_progress_s=0.4, finalizing_s=0.1))
    client = http(server)
    batch = _submit(client, _lines(20), metadata={"job": "labels"})
    assert batch["status"] == "validating"
    seen = _follow(client, f"/batches/{batch['id']}", _done)
    statuses = [b["status"] for b in seen]
    assert statuses == sorted(statuses, key=["validating", "in_progress", "finalizing", "completed"].index)
    assert {"in_progress", "completed"} <= set(statuses)
    completed = [b["request_counts"]["completed"] for b in seen]
    assert completed == sorted(completed)
    final = seen[-1]
    assert final["request_counts"] == {"total": 20, "completed": 20, "failed": 0}
    assert final["error_file_id"] is None
    assert final["completed_at"] >= final["created_at"]
    output = _file_lines(client, final["output_file_id"])
    assert sorted(line["custom_id"] for line in output) == sorted(f"r{i}" for i in range(20))
    assert [line["custom_id"] for line in output] != [f"r{i}" for i in range(20)]  # shuffled
    assert all(line["response"]["status_code"] == 200 and line["error"] is None for line in output)


def test_batch_answers_equal_live_replies_and_the_order_is_seeded(emulator: Start, http: Any) -> None:
    """A line's body is the live reply to the same request; two emulators give the same order."""
    orders = []
    for _ in range(2):
        server = emulator()
        client = http(server)
        batch = _follow(client, f"/batches/{_submit(client, _lines(12))['id']}", _done)[-1]
        output = _file_lines(client, batch["output_file_id"])
        orders.append([line["custom_id"] for line in output])
        live = client.post("/chat/completions", json=_body(5)).json()
        in_batch = next(line["response"]["body"] for line in output if line["custom_id"] == "r5")
        for reply in (live, in_batch):
            reply.pop("created")
        assert in_batch == live
    assert orders[0] == orders[1]


def test_failed_lines_go_to_the_error_file_and_an_all_failed_batch_has_no_output(
    emulator: Start, http: Any
) -> None:
    """A [[emulator:400]] line is a 400 in the error file; at line_error_rate 1.0 output_file_id is null."""
    server = emulator()
    client = http(server)
    bad = _body(3, f"{DIRECTIVE_400} Label review")
    batch = _follow(client, f"/batches/{_submit(client, _lines(6, r3=bad))['id']}", _done)[-1]
    assert batch["request_counts"] == {"total": 6, "completed": 5, "failed": 1}
    (error,) = _file_lines(client, batch["error_file_id"])
    assert error["custom_id"] == "r3"
    assert error["response"]["status_code"] == 400
    assert error["response"]["body"]["error"]["type"] == "invalid_request_error"

    failing = emulator(batch=BatchConfig(line_error_rate=1.0))
    client = http(failing)
    batch = _follow(client, f"/batches/{_submit(client, _lines(4))['id']}", _done)[-1]
    assert batch["status"] == "completed"
    assert batch["output_file_id"] is None
    assert {line["response"]["status_code"] for line in _file_lines(client, batch["error_file_id"])} == {500}


def test_a_batch_past_its_window_expires_with_partial_results(emulator: Start, http: Any) -> None:
    """Expiry halfway: some answers in the output, a batch_expired line for each of the others."""
    server = emulator(batch=BatchConfig(validating_s=0.0, in_progress_s=0.4, expire_after_s=0.2))
    client = http(server)
    batch = _follow(client, f"/batches/{_submit(client, _lines(40))['id']}", _done)[-1]
    assert batch["status"] == "expired"
    assert batch["expired_at"] is not None
    output = _file_lines(client, batch["output_file_id"])
    errors = _file_lines(client, batch["error_file_id"])
    assert 0 < len(output) < 40
    assert len(output) + len(errors) == 40
    assert {line["error"]["code"] for line in errors} == {"batch_expired"}
    assert all(line["response"] is None for line in errors)
    assert batch["request_counts"] == {"total": 40, "completed": len(output), "failed": len(errors)}


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"r1": {**_body(1), "model": "qwen3-max"}}, "model_not_supported"),
        ({"r2": {"messages": []}}, "invalid_request"),
    ],
)
def test_a_file_that_breaks_the_rules_is_refused_at_validation(
    emulator: Start, http: Any, change: dict[str, Any], code: str
) -> None:
    """A model the region does not batch, or a line without a model: `failed` with errors.data."""
    server = emulator(batch=BatchConfig(models=(MODEL,)))
    client = http(server)
    batch = _follow(client, f"/batches/{_submit(client, _lines(4, **change))['id']}", _done)[-1]
    assert batch["status"] == "failed"
    assert batch["output_file_id"] is None
    assert batch["error_file_id"] is None
    (error,) = batch["errors"]["data"]
    assert error["code"] == code
    assert error["line"] == int(next(iter(change))[1:]) + 1


def test_duplicate_custom_ids_and_a_bad_window_are_refused(emulator: Start, http: Any) -> None:
    """A custom_id twice fails validation; a completion_window outside 24h-336h is a 400 at create."""
    client = http(emulator())
    lines = _lines(3)
    lines[2]["custom_id"] = "r0"
    batch = _follow(client, f"/batches/{_submit(client, lines)['id']}", _done)[-1]
    assert batch["errors"]["data"][0]["code"] == "duplicate_custom_id"
    refused = client.post(
        "/batches",
        json={
            "input_file_id": batch["input_file_id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "1h",
        },
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "completion_window"


def test_a_batch_can_stay_in_finalizing(emulator: Start, http: Any) -> None:
    """With a long finalizing_s every request is counted but the batch stays `finalizing`, no file yet."""
    server = emulator(batch=BatchConfig(validating_s=0.0, in_progress_s=0.0, finalizing_s=3600))
    client = http(server)
    batch_id = _submit(client, _lines(3))["id"]
    for _ in range(3):
        batch = client.get(f"/batches/{batch_id}").json()
        assert batch["status"] == "finalizing"
        assert batch["request_counts"]["completed"] == 3
        assert batch["output_file_id"] is None


def test_cancel_stops_the_work_and_marks_what_never_ran(emulator: Start, http: Any) -> None:
    """cancelling then cancelled; unrun requests are batch_cancelled lines; a finished batch cannot be."""
    server = emulator(batch=BatchConfig(validating_s=0.0, in_progress_s=3600, cancelling_s=0.05))
    client = http(server)
    batch_id = _submit(client, _lines(5))["id"]
    cancelling = client.post(f"/batches/{batch_id}/cancel").json()
    assert cancelling["status"] == "cancelling"
    assert cancelling["cancelling_at"] is not None
    batch = _follow(client, f"/batches/{batch_id}", _done)[-1]
    assert batch["status"] == "cancelled"
    assert {line["error"]["code"] for line in _file_lines(client, batch["error_file_id"])} == {
        "batch_cancelled"
    }
    again = client.post(f"/batches/{batch_id}/cancel")  # cancelled already: answered as it is
    assert again.json()["status"] == "cancelled"


def test_a_finished_batch_cannot_be_cancelled(emulator: Start, http: Any) -> None:
    """Cancelling a completed batch is a 400 naming its status."""
    client = http(emulator(batch=BatchConfig(validating_s=0, in_progress_s=0, finalizing_s=0)))
    batch_id = _submit(client, _lines(1))["id"]
    refused = client.post(f"/batches/{batch_id}/cancel")
    assert refused.status_code == 400
    assert "completed" in refused.json()["error"]["message"]


def test_metadata_is_kept_and_the_list_pages_newest_first(emulator: Start, http: Any) -> None:
    """List pages with after/limit, newest first, each batch with its metadata; keys can be filtered."""
    client = http(emulator())
    ids = [_submit(client, _lines(1), metadata={"part": str(i)})["id"] for i in range(3)]
    first = client.get("/batches", params={"limit": 2}).json()
    assert [b["id"] for b in first["data"]] == ids[:0:-1]
    assert first["has_more"] is True
    rest = client.get("/batches", params={"limit": 2, "after": first["last_id"]}).json()
    assert [b["id"] for b in rest["data"]] == ids[:1]
    assert rest["has_more"] is False
    assert [b["metadata"] for b in first["data"] + rest["data"]] == [
        {"part": "2"},
        {"part": "1"},
        {"part": "0"},
    ]

    only_own = http(emulator(batch=BatchConfig(metadata_keys=("ds_name", "ds_description"))))
    kept = _submit(only_own, _lines(1), metadata={"ds_name": "nightly", "part": "0"})
    assert kept["metadata"] == {"ds_name": "nightly"}


def test_dashscope_error_lines_name_error_code_and_error_message(emulator: Start, http: Any) -> None:
    """error_shape dashscope: failed and expired lines carry error.error_code / error.error_message."""
    config = BatchConfig(validating_s=0.0, in_progress_s=0.4, expire_after_s=0.2, error_shape="dashscope")
    client = http(emulator(batch=config))
    bad = _body(0, f"{DIRECTIVE_400} x")
    batch = _follow(client, f"/batches/{_submit(client, _lines(30, r0=bad))['id']}", _done)[-1]
    errors = _file_lines(client, batch["error_file_id"])
    assert all(set(line["error"]) == {"error_code", "error_message"} for line in errors)
    codes = {line["error"]["error_code"] for line in errors}
    assert "batch_expired" in codes


def test_files_are_retrievable_and_unknown_ids_are_404(emulator: Start, http: Any) -> None:
    """GET /files/{id} describes an upload; unknown files and batches are 404s in OpenAI's error shape."""
    client = http(emulator())
    batch = _submit(client, _lines(1))
    described = client.get(f"/files/{batch['input_file_id']}").json()
    assert described["purpose"] == "batch"
    assert described["object"] == "file"
    for path in ("/files/file-nope", "/files/file-nope/content", "/batches/batch_nope"):
        missing = client.get(path)
        assert missing.status_code == 404
        assert missing.json()["error"]["type"] == "invalid_request_error"


def test_batch_routes_want_the_key(emulator: Start, http: Any) -> None:
    """With an api_key set, every batch route answers 401 to a request without it, in its API's shape."""
    server = emulator(api_key="sk-right")
    client = http(server)
    assert client.get("/batches").status_code == 401
    assert client.post("/files", files={"file": ("x", b"{}")}, data={"purpose": "batch"}).status_code == 401
    anthropic = http(server, server.root_url).get("/v1/messages/batches")
    assert anthropic.status_code == 401
    assert anthropic.json()["error"]["type"] == "authentication_error"


def _messages_create(client: httpx.Client, n: int, **change: Any) -> httpx.Response:
    requests = [
        {
            "custom_id": f"q{i}",
            "params": {
                "model": MODEL,
                "max_tokens": 16,
                "messages": [{"role": "user", "content": f"Hi {i}"}],
            },
        }
        for i in range(n)
    ]
    for index, item in change.items():
        requests[int(index[1:])] = item
    return client.post("/v1/messages/batches", json={"requests": requests})


def test_message_batches_count_processing_until_ended_then_give_results(emulator: Start, http: Any) -> None:
    """Anthropic: processing until ended, then succeeded/errored counts and a results JSONL per request."""
    server = emulator(batch=BatchConfig(validating_s=0.05, in_progress_s=0.2))
    client = http(server, server.root_url)
    bad = {"custom_id": "q1", "params": {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}}
    created = _messages_create(client, 6, q1=bad).json()
    assert created["processing_status"] == "in_progress"
    assert created["request_counts"]["processing"] == 6
    assert client.get(f"/v1/messages/batches/{created['id']}/results").status_code == 404
    seen = _follow(
        client, f"/v1/messages/batches/{created['id']}", lambda b: b["processing_status"] == "ended"
    )
    assert all(b["request_counts"]["succeeded"] == 0 for b in seen[:-1])
    ended = seen[-1]
    assert ended["request_counts"] == {
        "processing": 0,
        "succeeded": 5,
        "errored": 1,
        "canceled": 0,
        "expired": 0,
    }
    assert ended["results_url"].endswith(f"/v1/messages/batches/{created['id']}/results")
    results = [json.loads(line) for line in client.get(ended["results_url"]).text.splitlines()]
    by_id = {r["custom_id"]: r["result"] for r in results}
    assert by_id["q1"]["type"] == "errored"
    assert by_id["q1"]["error"]["error"]["type"] == "invalid_request_error"
    assert by_id["q0"]["message"]["content"][0]["type"] == "text"


def test_message_batches_refuse_bad_custom_ids_at_once(emulator: Start, http: Any) -> None:
    """A custom_id outside ^[a-zA-Z0-9_-]{1,64}$, or twice, or a streaming request: a 400 at create."""
    server = emulator()
    client = http(server, server.root_url)
    params = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    for change in (
        {"q0": {"custom_id": "has space", "params": params}},
        {"q0": {"custom_id": "q1", "params": params}},
        {"q0": {"custom_id": "q0", "params": {**params, "stream": True}}},
    ):
        refused = _messages_create(client, 2, **change)
        assert refused.status_code == 400
        assert refused.json()["error"]["type"] == "invalid_request_error"


def test_message_batches_cancel_and_expire_mark_the_unrun_requests(emulator: Start, http: Any) -> None:
    """A cancelled batch ends with `canceled` results, an expired one with `expired` results."""
    for config, kind in (
        (BatchConfig(validating_s=0, in_progress_s=3600, cancelling_s=0.05), "canceled"),
        (BatchConfig(validating_s=0, in_progress_s=3600, expire_after_s=0.05), "expired"),
    ):
        server = emulator(batch=config)
        client = http(server, server.root_url)
        batch_id = _messages_create(client, 3).json()["id"]
        if kind == "canceled":
            assert (
                client.post(f"/v1/messages/batches/{batch_id}/cancel").json()["processing_status"]
                == "canceling"
            )
        ended = _follow(
            client, f"/v1/messages/batches/{batch_id}", lambda b: b["processing_status"] == "ended"
        )[-1]
        assert ended["request_counts"][kind] == 3
        results = client.get(f"/v1/messages/batches/{batch_id}/results").text.splitlines()
        assert {json.loads(line)["result"]["type"] for line in results} == {kind}
        again = client.post(
            f"/v1/messages/batches/{batch_id}/cancel"
        )  # over: cancelled stays, expired refuses
        assert again.status_code == (200 if kind == "canceled" else 400)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("validating_s", -1),
        ("in_progress_s", float("inf")),
        ("line_error_rate", 2),
        ("error_shape", "x"),
        ("models", ["m"]),
    ],
)
def test_batch_config_refuses_bad_values_naming_the_field(field: str, value: Any) -> None:
    """A bad BatchConfig value raises ValueError naming the field."""
    with pytest.raises(ValueError, match=f"BatchConfig.{field}"):
        BatchConfig(**{field: value})


def test_emulate_refuses_a_bad_batch_flag(cli: Any) -> None:
    """`batchrun emulate` with an impossible batch setting exits 2 naming it, before serving."""
    result = cli("emulate", "--port", "0", "--batch-line-errors", "2")
    assert result.exit_code == 2
    assert "line_error_rate" in result.stderr
