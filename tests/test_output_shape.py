"""Output columns beyond the text: the `json` column (JSON mode), `completions` (n > 1), content parts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from batchrun.engines.run import run_job
from batchrun.engines.structured import as_json, wants_json
from batchrun.job.loader import load_job
from tests.test_runner_mock import (
    COMPLETION_TOKENS,
    PROMPT_TOKENS,
    QWEN3_MAX_COST,
    ROWS,
    FakeEndpoint,
    Outcome,
    WriteJob,
    make_job,
    output,
    run,
    status,
)

JSON_MODE = 'params.response_format={type="json_object"}'


def answer(*texts: str | None) -> Outcome:
    """An outcome replying with one choice per text (n = len(texts))."""

    def reply(request: httpx.Request, row: str) -> httpx.Response:
        choices = [
            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            for i, text in enumerate(texts)
        ]
        usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS}
        body = {"id": f"chatcmpl-{row}", "model": "qwen3-max", "choices": choices, "usage": usage}
        return httpx.Response(200, json=body)

    return reply


def json_endpoint(reviews: Path, script: dict[str, list[Outcome]]) -> FakeEndpoint:
    """A fake endpoint answering `{"label": "<row>"}` by default, and `script` for the rows it names."""
    endpoint = FakeEndpoint(reviews, script)
    default = {row: [answer(json.dumps({"label": row}))] * 3 for row in endpoint.row_by_text.values()}
    endpoint.script = {**default, **script}
    return endpoint


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1, "b": [true, null]}', '{"a":1,"b":[true,null]}'),
        ('```json\n{"a": "é"}\n```', '{"a":"é"}'),
        ("```\n[1, 2]\n```", "[1,2]"),
        ("not json", None),
        ('{"a": 1', None),
        (None, None),
    ],
)
def test_as_json_reads_plain_and_fenced_json(text: str | None, expected: str | None) -> None:
    """A completion parses as JSON (with or without a Markdown fence) into compact text, else None."""
    assert as_json(text) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"response_format": {"type": "json_object"}}, True),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, True),
        ({"response_format": {"type": "text"}}, False),
        ({}, False),
    ],
)
def test_wants_json_follows_response_format(body: dict[str, Any], expected: bool) -> None:
    """Only `json_object` and `json_schema` response formats turn JSON mode on."""
    assert wants_json(body) is expected


def test_json_column_and_invalid_json_rows(write_job: WriteJob, reviews: Path) -> None:
    """JSON mode fills `json`; a completion that does not parse is an `invalid_json` row keeping its text."""
    endpoint = json_endpoint(reviews, {"r0002": [answer("Sure! positive")], "r0003": [answer(None)]})
    job = make_job(write_job, JSON_MODE)
    summary = run(job, endpoint)
    rows = output(job)
    assert rows["r0001"]["status"] == "ok"
    assert rows["r0001"]["json"] == '{"label":"r0001"}'
    assert rows["r0002"]["status"] == "error"
    assert rows["r0002"]["error_type"] == "invalid_json"
    assert "does not parse" in rows["r0002"]["error"]
    assert rows["r0002"]["completion"] == "Sure! positive"
    assert rows["r0002"]["json"] is None
    assert rows["r0002"]["cost_usd"] == pytest.approx(QWEN3_MAX_COST)  # paid for, so counted
    assert rows["r0002"]["attempts"] == 1  # no retry unless the job asks for it
    assert rows["r0003"]["error_type"] == "invalid_json"
    assert summary.exit_code == 1
    assert summary.ok == ROWS - 2
    decoded = pl.read_parquet(job.output_path).get_column("json").str.json_decode()
    assert decoded.drop_nulls().len() == ROWS - 2


def test_retry_invalid_json_sends_again_and_counts_both_costs(write_job: WriteJob, reviews: Path) -> None:
    """`retry_invalid_json` resends a non-JSON answer; the row's cost includes the discarded answer."""
    endpoint = json_endpoint(reviews, {"r0002": [answer("oops"), answer('{"label": "late"}')]})
    job = make_job(write_job, JSON_MODE, "limits.retry_invalid_json=true")
    summary = run(job, endpoint)
    rows = output(job)
    assert rows["r0002"]["status"] == "ok"
    assert rows["r0002"]["json"] == '{"label":"late"}'
    assert rows["r0002"]["attempts"] == 2
    assert rows["r0002"]["cost_usd"] == pytest.approx(2 * QWEN3_MAX_COST)
    assert endpoint.calls["r0002"] == 2
    assert summary.exit_code == 0


def test_retry_invalid_json_gives_up_after_max_attempts(write_job: WriteJob, reviews: Path) -> None:
    """Past `max_attempts` the last non-JSON answer is kept as an `invalid_json` row."""
    endpoint = json_endpoint(reviews, {"r0002": [answer("no")] * 3})
    job = make_job(write_job, JSON_MODE, "limits.retry_invalid_json=true", "limits.max_attempts=3")
    run(job, endpoint)
    rows = output(job)
    assert rows["r0002"]["error_type"] == "invalid_json"
    assert rows["r0002"]["completion"] == "no"
    assert rows["r0002"]["attempts"] == 3
    assert endpoint.calls["r0002"] == 3


def test_a_row_that_fails_after_a_discarded_answer_still_counts_its_cost(
    write_job: WriteJob, reviews: Path
) -> None:
    """Non-JSON answer (paid), then a 400: the error row's cost is what was paid, so budgets see it."""
    bad_request = status(400, {"error": {"message": "bad", "type": "invalid_request_error"}})
    endpoint = json_endpoint(reviews, {"r0002": [answer("oops"), bad_request]})
    job = make_job(write_job, JSON_MODE, "limits.retry_invalid_json=true")
    summary = run(job, endpoint)
    rows = output(job)
    assert rows["r0002"]["status"] == "error"
    assert rows["r0002"]["http_status"] == 400
    assert rows["r0002"]["cost_usd"] == pytest.approx(QWEN3_MAX_COST)
    assert summary.cost_usd == pytest.approx(ROWS * QWEN3_MAX_COST)


def test_n_choices_fill_the_completions_list(write_job: WriteJob, reviews: Path) -> None:
    """With several choices, `completions` lists them all and `completion` is the first; else it is null."""
    endpoint = FakeEndpoint(reviews, {"r0001": [answer("one", "two", None)]})
    job = make_job(write_job, "params.n=3")
    run(job, endpoint)
    frame = pl.read_parquet(job.output_path)
    rows = output(job)
    assert frame.schema["completions"] == pl.List(pl.String)
    assert rows["r0001"]["completions"] == ["one", "two", None]
    assert rows["r0001"]["completion"] == "one"
    assert rows["r0002"]["completions"] is None
    assert rows["r0002"]["completion"] == "label-r0002"


def test_new_columns_survive_resume_and_the_cache(write_job: WriteJob, reviews: Path) -> None:
    """`completions` and `json` round-trip through the journal on resume and through the response cache."""
    script = {"r0001": [answer('{"x": 1}', '{"x": 2}')] * 2}
    cache = f'cache.path="{reviews.parent / "cache"}"'
    job = make_job(write_job, JSON_MODE, "cache.enabled=true", cache)
    run(job, json_endpoint(reviews, script))
    first = output(job)
    endpoint = json_endpoint(reviews, script)
    resumed = run(job, endpoint)  # every row is in the journal: nothing is sent
    assert endpoint.total == 0
    assert resumed.exit_code == 0
    assert output(job) == first
    assert first["r0001"]["completions"] == ['{"x": 1}', '{"x": 2}']
    assert first["r0001"]["json"] == '{"x":1}'
    other = load_job(
        job.source or "",
        [JSON_MODE, "cache.enabled=true", cache, f"output.path={reviews.parent / 'other.parquet'}"],
    )
    cached_endpoint = json_endpoint(reviews, script)
    run(other, cached_endpoint)  # a new output file: answers come from the cache
    again = output(other)
    assert cached_endpoint.total == 0
    assert again["r0001"]["completions"] == first["r0001"]["completions"]
    assert again["r0001"]["json"] == first["r0001"]["json"]


def test_content_parts_are_passed_through_unchanged(write_job: WriteJob, tmp_path: Path) -> None:
    """A messages_column row with text and image_url parts reaches the API exactly as it was in the input."""
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": "https://example.test/cat.png", "detail": "low"}},
            ],
        }
    ]
    (tmp_path / "parts.jsonl").write_text(json.dumps({"id": "p1", "messages": messages}) + "\n")
    seen: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert len(seen) < 5, "runaway request loop"
        seen.append(json.loads(request.content)["messages"])
        return answer("a cat")(request, "p1")

    header = """\
        name = "parts"
        [input]
        path = "parts.jsonl"
        id_column = "id"
        [prompt]
        messages_column = "messages"
        [provider]
        base_url = "http://llm.test/v1"
        model = "qwen3-max"
        """
    job = load_job(write_job("", header=header))
    summary = run_job(job, transport=httpx.MockTransport(handler))
    assert summary.exit_code == 0
    assert seen == [messages]
