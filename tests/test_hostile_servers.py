"""batchrun against servers it did not write (tests/hostile.py): what each odd or hostile reply comes to.

Each server answers a handful of rows; every run is bounded by the server's request cap, small
`max_attempts` and short timeouts.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchrun.engines.run import run_job
from batchrun.errors import StopRun
from batchrun.job.loader import load_job
from batchrun.job.schema import Job
from batchrun.net import endpoint
from batchrun.report.summary import Summary
from tests.hostile import (
    Seen,
    completion,
    endless,
    events,
    gzipped,
    reply,
    serving,
)

WriteJob = Callable[..., Path]
ROWS = 4
FAST = ("limits.timeout_s=5", "limits.connect_timeout_s=2")


def make_job(write_job: WriteJob, base_url: str, *overrides: str, extra: str = "") -> Job:
    """The shared test job (millisecond backoff, short timeouts) pointed at `base_url`."""
    return load_job(write_job(base_url, extra), (*FAST, *overrides))


def run(job: Job, rows: int = ROWS) -> Summary:
    """`run_job` over the first `rows` rows."""
    return run_job(job, limit=rows)


def output(job: Job) -> list[dict[str, Any]]:
    """The output rows in input order."""
    return pl.read_parquet(job.output_path).to_dicts()


def stop_message(job: Job, rows: int = ROWS) -> str:
    """The message of the StopRun that running `job` raises."""
    with pytest.raises(StopRun) as info:
        run(job, rows)
    return str(info.value)


# A 200 that is not an answer


def test_a_200_without_choices_fails_its_row_after_two_attempts_and_never_pauses_the_run(
    write_job: WriteJob, reviews: Path
) -> None:
    """A JSON 200 without `choices` is `bad_response` after exactly 2 attempts, quoting the body."""
    with serving(lambda seen: reply({"object": "chat.completion", "note": "no choices here"})) as server:
        job = make_job(write_job, server.base_url)
        summary = run(job)
    assert summary.errors == {"bad_response": ROWS}
    assert len(server.requests) == 2 * ROWS  # no breaker, no probing: the server answered
    row = output(job)[0]
    assert (row["attempts"], row["http_status"]) == (2, 200)
    assert "no choices" in row["error"]


def test_an_html_page_from_an_endpoint_that_never_answered_stops_the_run_with_the_v1_hint(
    write_job: WriteJob, reviews: Path
) -> None:
    """HTML 200s from the start (base_url without /v1 on a web site) stop the run naming the URL and /v1."""
    page = reply("<!doctype html><html><title>Welcome</title></html>", content_type="text/html")
    with serving(lambda seen: page) as server:
        job = make_job(write_job, server.base_url.removesuffix("/v1"))
        message = stop_message(job)
    assert "HTML page" in message
    assert server.base_url.removesuffix("/v1") + "/chat/completions" in message
    assert "/v1" in message.split("\n")[1]
    assert len(server.requests) <= job.limits.concurrency


def test_an_html_page_after_answers_is_one_rows_bad_response(write_job: WriteJob, reviews: Path) -> None:
    """Once the endpoint has answered, an HTML 200 (a gateway's error page) fails only its row."""
    page = reply("<html>upstream hiccup</html>", content_type="text/html")
    third = pl.read_ndjson(reviews)["text"][2]

    def handler(seen: Seen) -> bytes:
        return page if third in seen.json["messages"][-1]["content"] else ok()

    with serving(handler) as server:
        job = make_job(write_job, server.base_url, "limits.concurrency=1")
        summary = run(job)
    assert summary.errors == {"bad_response": 1}
    assert "upstream hiccup" in output(job)[2]["error"]


def ok() -> bytes:
    """A plain answer."""
    return reply(completion())


def test_a_3xx_stops_the_run_naming_where_it_points(write_job: WriteJob, reviews: Path) -> None:
    """A redirect is not followed (a POST would be resent) but stops the run with its Location."""
    moved = reply("", "Location: https://api.example.test/v1/chat/completions", status="301 Moved")
    with serving(lambda seen: moved) as server:
        job = make_job(write_job, server.base_url)
        message = stop_message(job)
    assert "redirect to https://api.example.test/v1/chat/completions" in message
    assert len(server.requests) <= job.limits.concurrency


def test_a_404_on_the_path_stops_the_run_with_the_v1_hint(write_job: WriteJob, reviews: Path) -> None:
    """A 404 with no provider code (a web server's page) says nothing answers there, and names /v1."""
    with serving(lambda seen: reply("404 page not found", status="404 Not Found")) as server:
        job = make_job(write_job, server.base_url.removesuffix("/v1"))
        message = stop_message(job)
    assert "nothing answers at" in message
    assert "/v1" in message


def test_a_404_with_a_model_code_still_names_the_model(write_job: WriteJob, reviews: Path) -> None:
    """A 404 whose body carries `model_not_found` stops the run pointing at [provider] model."""
    body = {"error": {"message": "The model does not exist", "code": "model_not_found"}}
    with serving(lambda seen: reply(body, status="404 Not Found")) as server:
        message = stop_message(make_job(write_job, server.base_url))
    assert "[provider] model" in message


def test_a_port_nobody_listens_on_stops_the_run_naming_the_url(
    write_job: WriteJob, reviews: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused connections from an endpoint that never answered stop the run (not an outage) with the URL."""
    with serving(lambda seen: ok()) as server:
        url = server.base_url  # the port is free again once the server stops
    monkeypatch.setattr(endpoint, "NEVER_ANSWERED_S", 0.2)
    job = make_job(write_job, url, "limits.max_attempts=50")  # no row runs out: the grace ends it
    message = stop_message(job)
    assert f"no answer from {url}/chat/completions (" in message
    assert "ConnectionRefused" in message or "Connect call failed" in message
    assert "base_url" in message


def test_a_port_nobody_listens_on_stops_when_a_row_runs_out_of_tries(
    write_job: WriteJob, reviews: Path
) -> None:
    """A row out of tries against an endpoint that never answered stops the run instead of failing it."""
    with serving(lambda seen: ok()) as server:
        url = server.base_url
    job = make_job(write_job, url, "limits.max_attempts=2", "limits.concurrency=1")  # 2 failures: no breaker
    assert "no answer from" in stop_message(job)


# Lenient where real servers differ


def test_a_non_streamed_choice_under_delta_is_an_answer(write_job: WriteJob, reviews: Path) -> None:
    """siray's schema puts a non-streamed choice's message under `delta`: it is read as the message."""
    body = completion()
    body["choices"][0]["delta"] = body["choices"][0].pop("message")
    with serving(lambda seen: reply(body)) as server:
        job = make_job(write_job, server.base_url)
        summary = run(job)
    assert summary.ok == ROWS
    assert output(job)[0]["completion"] == "positive"


def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
    """One `chat.completion.chunk`."""
    return json.dumps(
        {"id": "c1", "model": "qwen3-max", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    )


def test_a_stream_ending_after_its_finish_reason_without_done_is_an_answer(
    write_job: WriteJob, reviews: Path
) -> None:
    """A stream that ends after the finish_reason and usage chunks but without `[DONE]` is whole."""
    usage = json.dumps({"id": "c1", "choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 2}})
    stream = events(chunk({"content": "posi"}), chunk({"content": "tive"}, "stop"), usage)
    with serving(lambda seen: stream) as server:
        job = make_job(write_job, server.base_url, "params.stream=true")
        summary = run(job)
    assert summary.ok == ROWS
    assert (output(job)[0]["completion"], output(job)[0]["completion_tokens"]) == ("positive", 2)


def test_an_event_stream_served_as_json_is_read(write_job: WriteJob, reviews: Path) -> None:
    """A streamed reply labelled `application/json` is still read as server-sent events."""
    stream = events(chunk({"content": "positive"}, "stop"), "[DONE]", content_type="application/json")
    with serving(lambda seen: stream) as server:
        job = make_job(write_job, server.base_url, "params.stream=true")
        assert run(job).ok == ROWS


# Size: a gzip bomb and a body that never ends


@pytest.mark.parametrize("stream", [False, True])
def test_a_gzip_bomb_fails_as_bad_response_at_the_cap(
    write_job: WriteJob, reviews: Path, stream: bool
) -> None:
    """10 KiB of gzip inflating to 16 MiB, past a 1 MiB cap, is a `bad_response` (whole or streamed)."""
    bomb = gzipped(b"\0" * (16 * 2**20), "Content-Type: text/event-stream" if stream else "X-Bomb: 1")
    with serving(lambda seen: bomb) as server:
        job = make_job(
            write_job, server.base_url, "limits.max_reply_mib=1", f"params.stream={str(stream).lower()}"
        )
        summary = run(job, 2)
    assert summary.errors == {"bad_response": 2}
    assert "max_reply_mib" in output(job)[0]["error"]


@pytest.mark.parametrize("stream", [False, True])
def test_an_endless_body_fails_as_bad_response_at_the_cap(
    write_job: WriteJob, reviews: Path, stream: bool
) -> None:
    """A 200 whose body never ends stops at the cap (1 MiB here), not at `timeout_s`."""
    with serving(lambda seen: endless) as server:
        job = make_job(
            write_job, server.base_url, "limits.max_reply_mib=1", f"params.stream={str(stream).lower()}"
        )
        summary = run(job, 1)
    assert summary.errors == {"bad_response": 1}
    assert output(job)[0]["attempts"] == 2


# Content filtering and money


def test_finish_reason_content_filter_is_an_error_row(write_job: WriteJob, reviews: Path) -> None:
    """An answer stopped by the content filter is `content_filter`, its usage and cost kept, not resent."""
    with serving(lambda seen: reply(completion("", finish_reason="content_filter"))) as server:
        job = make_job(write_job, server.base_url)
        summary = run(job)
        assert summary.errors == {"content_filter": ROWS}
        row = output(job)[0]
        assert (row["status"], row["attempts"], row["completion_tokens"]) == ("error", 1, 2)
        assert row["cost_usd"] > 0
        run(job)
    assert len(server.requests) == ROWS  # the rerun resends nothing


def test_a_503_saying_content_policy_is_content_filter(write_job: WriteJob, reviews: Path) -> None:
    """maxtoken's "Content policy violation" under 503 fails its row once, and never feeds the breaker."""
    body = {"error": {"message": "Content policy violation", "type": "server_error"}}
    with serving(lambda seen: reply(body, status="503 Service Unavailable")) as server:
        job = make_job(write_job, server.base_url)
        summary = run(job)
    assert summary.errors == {"content_filter": ROWS}
    assert len(server.requests) == ROWS


def test_a_403_saying_insufficient_balance_stops_as_billing(write_job: WriteJob, reviews: Path) -> None:
    """A 403 "insufficient balance" names the account's balance, not the key."""
    body = {"error": {"message": "Insufficient balance, please top up", "code": "403"}}
    with serving(lambda seen: reply(body, status="403 Forbidden")) as server:
        message = stop_message(make_job(write_job, server.base_url))
    assert "no balance" in message
    assert "Check the key" not in message


PRICED = ("pricing.input=1.2", "pricing.output=6.0")


def test_replies_without_usage_are_charged_at_the_worst_case_for_the_budget(
    write_job: WriteJob, reviews: Path
) -> None:
    """With no usage in any reply, `max_cost_usd` still stops the run, and a rerun counts what was sent."""
    with serving(lambda seen: reply(completion(usage=None))) as server:
        # Each request's worst case is about 40 prompt tokens + 16 output = $0.00015; a cap of 4 of them.
        job = make_job(
            write_job, server.base_url, *PRICED, "limits.max_cost_usd=0.0006", "limits.concurrency=1"
        )
        with pytest.raises(StopRun, match="Budget reached"):
            run(job, 40)
        sent = len(server.requests)
        assert 1 <= sent <= 5
        with pytest.raises(StopRun, match="Budget reached"):
            run(job, 40)
        assert len(server.requests) == sent  # the rerun counts what the first run was charged
    assert all(row["cost_usd"] is None for row in output_rows_journaled(job))


def output_rows_journaled(job: Job) -> list[dict[str, Any]]:
    """The journal's lines."""
    path = job.output_path.with_name(job.output_path.name + ".run") / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize(
    "usage", [{"prompt_tokens": -2e14, "completion_tokens": 1}, {"prompt_tokens": 10**12}]
)
def test_negative_or_absurd_usage_is_bad_response(
    write_job: WriteJob, reviews: Path, usage: dict[str, Any]
) -> None:
    """A negative or absurd token count is not believed: the row is `bad_response`, no negative cost."""
    with serving(lambda seen: reply(completion(usage=usage))) as server:
        job = make_job(write_job, server.base_url, *PRICED)
        summary = run(job)
    assert summary.errors == {"bad_response": ROWS}
    assert not summary.cost_usd
    assert "not believed" in output(job)[0]["error"]


# TLS


@pytest.fixture(scope="module")
def tls_ca() -> Any:
    """A certificate authority no system trusts, with a certificate for 127.0.0.1."""
    trustme = pytest.importorskip("trustme")
    return trustme.CA()


def tls_server_context(ca: Any) -> ssl.SSLContext:
    """A server context presenting `ca`'s certificate for 127.0.0.1."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


@pytest.mark.parametrize("stream", [False, True])
def test_a_certificate_that_does_not_verify_stops_the_run_at_once(
    write_job: WriteJob, reviews: Path, tls_ca: Any, stream: bool
) -> None:
    """A self-signed certificate stops the run with the TLS cause (lean client and aiohttp alike)."""
    with serving(lambda seen: ok(), tls=tls_server_context(tls_ca)) as server:
        job = make_job(write_job, server.base_url, f"params.stream={str(stream).lower()}")
        message = stop_message(job)
        assert not server.requests  # no request got past the handshake
    assert "TLS with" in message
    assert "certificate" in message.split("TLS with")[1]
    assert "SSL_CERT_FILE" in message


def test_a_private_ca_named_by_ssl_cert_file_is_trusted(
    write_job: WriteJob, reviews: Path, tls_ca: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop message's advice works: with SSL_CERT_FILE naming the CA, the same server answers."""
    ca_file = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    with serving(lambda seen: ok(), tls=tls_server_context(tls_ca)) as server:
        assert run(make_job(write_job, server.base_url)).ok == ROWS


# Secrets a server echoes back


KEY = "sk-echo-0123456789abcdef"
PASSWORD = "hunter2-pass-word"


def echo(seen: Seen) -> bytes:
    """Echo the Authorization header back: in a 400's body for one row, in the completion for the others."""
    authorization = seen.header("authorization")
    if "Disappointed" in seen.body.decode():
        return reply(
            {"error": {"message": f"bad header {authorization!r}", "code": "InvalidParameter"}},
            status="400 Bad Request",
        )
    body = completion(f"you sent {authorization}")
    body["model"], body["id"] = KEY, f"id-{KEY}"
    return reply(body)


def everything_written(folder: Path) -> str:
    """Every file under `folder`, as text (Parquet and JSON lines alike)."""
    texts = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            texts.append(path.read_bytes().decode("utf-8", "replace"))
            if path.suffix == ".parquet":
                texts.append(str(pl.read_parquet(path).to_dicts()))
    return "\n".join(texts)


def test_a_key_echoed_back_reaches_no_file_and_no_screen(
    write_job: WriteJob, reviews: Path, cli: Callable[..., Any], tmp_path: Path
) -> None:
    """A key the server echoes (error body, completion, model, id) is `***` in every output, log, report."""
    with serving(echo) as server:
        job = write_job(server.base_url, '\n[provider.headers]\n"x-test" = "1"\n')
        job.write_text(
            job.read_text().replace('model = "qwen3-max"', 'model = "qwen3-max"\napi_key_env = "ECHO_KEY"')
        )
        result = cli("run", job, "--limit", "6", env={"ECHO_KEY": KEY})
        report = cli(
            "report", tmp_path / "out" / "test.parquet", "--html", tmp_path / "out" / "r.html", "--json"
        )
    assert result.exit_code == 1
    assert server.requests[0].header("authorization") == f"Bearer {KEY}"  # the key was really sent
    written = everything_written(tmp_path / "out")
    assert "you sent Bearer ***" in written
    assert "bad header" in written
    assert KEY not in written
    assert KEY not in result.stdout + result.stderr + report.stdout + report.stderr
    assert "Traceback" not in result.stderr + report.stderr


def test_credentials_in_base_url_reach_no_file_and_no_screen(
    write_job: WriteJob, reviews: Path, cli: Callable[..., Any], tmp_path: Path
) -> None:
    """A password in base_url is `***` in the stop message, the summary and the log."""
    refused = reply(
        {"error": {"message": "Incorrect API key", "code": "invalid_api_key"}}, status="401 Unauthorized"
    )
    with serving(lambda seen: refused) as server:
        url = server.base_url.replace("http://", f"http://user:{PASSWORD}@")
        result = cli("run", write_job(url))
    assert result.exit_code == 3
    assert "http://***@127.0.0.1" in result.stderr
    assert "Traceback" not in result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    assert PASSWORD not in everything_written(tmp_path / "out")
