"""Reading prompt sets and rendering rows into requests: templates, messages columns, batch lines."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchrun.errors import InputError
from batchrun.inputs import prompts as inputs
from batchrun.inputs.prompts import PromptSet
from batchrun.inputs.render import BodyEncoder, Template, encode, estimate_tokens
from batchrun.job.loader import load_job
from batchrun.job.schema import Job
from batchrun.records import Request, Result

WriteJob = Callable[..., Path]

URL = "http://127.0.0.1:9/v1"
TEMPLATE = "Review: {title}. {text}"


def make_job(
    write_job: WriteJob,
    input_path: Path,
    *,
    prompt: str = f'template = "{TEMPLATE}"',
    id_column: str | None = "id",
    model: str | None = "qwen3-max",
    overrides: tuple[str, ...] = (),
    name: str = "job.toml",
) -> Job:
    """A job over `input_path` with the given `[prompt]` body, loaded through `load_job`."""
    lines = ['name = "t"', "", "[input]", f'path = "{input_path.name}"']
    if id_column:
        lines.append(f'id_column = "{id_column}"')
    lines += ["", "[prompt]", prompt, "", "[provider]", f'base_url = "{URL}"']
    if model:
        lines.append(f'model = "{model}"')
    lines += ["", "[params]", "temperature = 0", "max_tokens = 16", ""]
    path = write_job(URL, header="\n".join(lines), name=name)
    return load_job(path, overrides, input_path=input_path)


def items(prompts: PromptSet) -> list[Request | Result]:
    """Every work item of a prompt set, in order."""
    return [item for piece in prompts.slices() for item in piece.items]


def frame(prompts: PromptSet) -> pl.DataFrame:
    """The output-side input frame of a prompt set, all slices concatenated."""
    return pl.concat([piece.frame for piece in prompts.slices()])


def requests(prompts: PromptSet) -> list[Request]:
    """The requests of a prompt set; fails if any row became an error result."""
    out = items(prompts)
    assert all(isinstance(item, Request) for item in out)
    return [item for item in out if isinstance(item, Request)]


def test_template_replaces_placeholders_and_unescapes_double_braces() -> None:
    """`{column}` takes the row's value, `{{`/`}}` become literal braces, and a repeat is filled twice."""
    template = Template("Hi {name}! {{literal}} {n}/{name} {{{n}}}")
    assert template.columns == ("name", "n")
    assert template.render({"name": "Ann", "n": 3}) == "Hi Ann! {literal} 3/Ann {3}"


@pytest.mark.parametrize(
    "text",
    [
        'Reply as {"label": "x"}.',
        'Schema: {"a": {"b": 1}, "c": [1, 2]}',
        '{\n  "label": "positive"\n}',
        "a lone } and a lone { stay",
        "format spec {text:>10} is not a placeholder",
    ],
)
def test_json_looking_text_is_left_literal(text: str) -> None:
    """Braced text with quotes, newlines, colons or unbalanced braces is literal, not a placeholder."""
    template = Template(text + " {text}")
    assert template.columns == ("text",)
    assert template.render({"text": "T"}) == text + " T"


def test_estimate_tokens_counts_text_parts_and_images() -> None:
    """The estimate is chars/3.5 plus 4 per message plus 3, with 1,000 chars for a non-text part."""
    assert estimate_tokens([{"role": "user", "content": "x" * 35}]) == 10 + 4 + 3
    parts = [
        {"type": "text", "text": "x" * 7},
        {"type": "image_url", "image_url": {"url": "https://e.x/a.png"}},
    ]
    assert estimate_tokens([{"role": "system", "content": "y" * 14}, {"role": "user", "content": parts}]) == (
        int((14 + 7 + 1000) / 3.5) + 8 + 3
    )
    assert estimate_tokens([]) == 3


def test_template_renders_system_and_user_messages(write_job: WriteJob, reviews: Path) -> None:
    """Each row becomes `{model, messages, **params}` with the system prompt first and the row filled in."""
    job = make_job(write_job, reviews, prompt=f'system = "Be brief."\ntemplate = "{TEMPLATE}"')
    first = pl.read_ndjson(reviews).row(0, named=True)
    request = requests(PromptSet(job))[0]
    assert request.body == {
        "model": "qwen3-max",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"Review: {first['title']}. {first['text']}"},
        ],
        "temperature": 0,
        "max_tokens": 16,
    }
    assert json.loads(request.payload) == request.body
    assert request.est_prompt_tokens == estimate_tokens(request.body["messages"])
    assert request.est_output_tokens == 8  # half of max_tokens


def test_placeholder_naming_a_missing_column_lists_the_columns(write_job: WriteJob, reviews: Path) -> None:
    """A placeholder that is not a column raises InputError naming it and listing the input's columns."""
    job = make_job(write_job, reviews, prompt='template = "{title} {body}"')
    with pytest.raises(InputError) as info:
        PromptSet(job)
    message = str(info.value)
    assert message.startswith(str(reviews))
    assert "{body} is not a column" in message
    assert "columns: id, product, category, stars, title, text, date" in message


def test_missing_id_column_is_named(write_job: WriteJob, reviews: Path) -> None:
    """An `[input] id_column` that is not a column raises InputError naming it."""
    job = make_job(write_job, reviews, id_column="review_id")
    with pytest.raises(InputError, match=r"\[input\] id_column \{review_id\} is not a column"):
        PromptSet(job)


def test_null_in_a_template_column_fails_only_that_row(
    write_job: WriteJob, reviews: Path, tmp_path: Path
) -> None:
    """Rendered, a null in a template column gives an `invalid_input` error Result naming its line and id."""
    path = tmp_path / "nulls.jsonl"
    pl.read_ndjson(reviews).head(3).with_columns(
        pl.when(pl.int_range(pl.len()) == 1).then(None).otherwise(pl.col("title")).alias("title")
    ).write_ndjson(path)
    prompts = PromptSet(make_job(write_job, path))
    out = items(prompts)
    assert [type(item) for item in out] == [Request, Result, Request]
    bad = out[1]
    assert isinstance(bad, Result)
    assert bad.status == "error"
    assert bad.error_type == "invalid_input"
    assert bad.error == """line 2 (id "r0002"): column 'title' is null"""
    assert bad.retryable is False
    assert frame(prompts)["custom_id"].to_list() == [item.custom_id for item in out]


def test_messages_column_from_parquet_strips_null_struct_fields(write_job: WriteJob, tmp_path: Path) -> None:
    """A list-of-structs column becomes messages, fields absent in a row (null) are dropped."""
    path = tmp_path / "chats.parquet"
    message = pl.Struct({"role": pl.String, "content": pl.String, "name": pl.String})
    pl.DataFrame(
        {
            "id": ["a", "b"],
            "messages": [
                [{"role": "user", "content": "hi"}],
                [
                    {"role": "system", "content": "Own system."},
                    {"role": "user", "content": "q", "name": "bob"},
                ],
            ],
        },
        schema={"id": pl.String, "messages": pl.List(message)},
    ).write_parquet(path)
    assert pl.read_parquet(path)["messages"][0].to_list() == [{"role": "user", "content": "hi", "name": None}]
    job = make_job(write_job, path, prompt='system = "Job system."\nmessages_column = "messages"')
    first, second = requests(PromptSet(job))
    assert first.body["messages"] == [
        {"role": "system", "content": "Job system."},
        {"role": "user", "content": "hi"},
    ]
    assert second.body["messages"] == [
        {"role": "system", "content": "Own system."},
        {"role": "user", "content": "q", "name": "bob"},
    ]


def test_messages_column_of_json_text(write_job: WriteJob, tmp_path: Path) -> None:
    """A JSON-text messages column is parsed; bad JSON or an empty list fails only that row."""
    path = tmp_path / "chats.jsonl"
    rows = [
        {
            "id": "a",
            "msgs": json.dumps([{"role": "developer", "content": "Dev."}, {"role": "user", "content": "x"}]),
        },
        {"id": "b", "msgs": '[{"role": "user", "content": "cut'},
        {"id": "c", "msgs": "[]"},
        {"id": "d", "msgs": json.dumps([{"role": "user", "content": [{"type": "text", "text": "y"}]}])},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    job = make_job(write_job, path, prompt='system = "Job system."\nmessages_column = "msgs"')
    out = items(PromptSet(job))
    assert isinstance(out[0], Request)
    assert out[0].body["messages"] == [
        {"role": "developer", "content": "Dev."},
        {"role": "user", "content": "x"},
    ]
    for bad in out[1:3]:
        assert isinstance(bad, Result)
        assert bad.error_type == "invalid_input"
    assert "column 'msgs' is not valid JSON" in str(out[1].error if isinstance(out[1], Result) else "")
    assert "non-empty list of messages" in str(out[2].error if isinstance(out[2], Result) else "")
    assert isinstance(out[3], Request)
    assert out[3].body["messages"] == [
        {"role": "system", "content": "Job system."},
        {"role": "user", "content": [{"type": "text", "text": "y"}]},
    ]


def test_custom_id_is_stable_and_unique(write_job: WriteJob, reviews: Path) -> None:
    """Two PromptSets over the same job give the same custom_ids, and no two rows share one."""
    job = make_job(write_job, reviews)
    once = [r.custom_id for r in requests(PromptSet(job))]
    again = [r.custom_id for r in requests(PromptSet(job))]
    assert once == again
    assert len(set(once)) == len(once) == 40


@pytest.mark.parametrize(
    ("prompt", "overrides"),
    [
        ('template = "Title: {title}. {text}"', ()),
        (f'template = "{TEMPLATE}"', ("params.temperature=0.5",)),
        (f'template = "{TEMPLATE}"', ("provider.model=qwen-max",)),
        (f'system = "New system."\ntemplate = "{TEMPLATE}"', ()),
    ],
)
def test_custom_id_changes_with_the_request(
    write_job: WriteJob, reviews: Path, prompt: str, overrides: tuple[str, ...]
) -> None:
    """Changing the template, system prompt, params or model gives every row a new custom_id."""
    before = [r.custom_id for r in requests(PromptSet(make_job(write_job, reviews)))]
    changed = make_job(write_job, reviews, prompt=prompt, overrides=overrides, name="changed.toml")
    after = [r.custom_id for r in requests(PromptSet(changed))]
    assert not set(before) & set(after)


def test_custom_id_follows_the_id_column_when_rows_move(
    write_job: WriteJob, reviews: Path, tmp_path: Path
) -> None:
    """With an id_column, a row keeps its custom_id when the file's row order changes."""
    moved = tmp_path / "moved.jsonl"
    pl.read_ndjson(reviews).reverse().write_ndjson(moved)
    original = frame(PromptSet(make_job(write_job, reviews))).select("id", "custom_id")
    reordered = frame(PromptSet(make_job(write_job, moved, name="moved.toml"))).select("id", "custom_id")
    assert reordered.sort("id").equals(original.sort("id"))


def test_batch_lines_keep_custom_id_and_job_model_and_params_win(
    write_job: WriteJob, batch_lines: Path
) -> None:
    """Batch lines keep their custom_id and body, with the job's model and `[params]` over the body's."""
    job = make_job(
        write_job,
        batch_lines,
        prompt="",
        id_column=None,
        model="qwen-max",
        overrides=("params.temperature=0.3",),
    )
    prompts = PromptSet(job)
    out = requests(prompts)
    source = [json.loads(line) for line in batch_lines.read_text(encoding="utf-8").splitlines()]
    assert [r.custom_id for r in out] == [line["custom_id"] for line in source]
    second = out[1]
    assert second.body["model"] == "qwen-max"
    assert second.body["temperature"] == 0.3  # the line says 0
    assert second.body["max_tokens"] == 16  # the job's [params] max_tokens over the line's 8
    assert second.body["messages"] == source[1]["body"]["messages"]
    assert json.loads(second.payload) == second.body
    out_frame = frame(prompts)
    assert out_frame.columns == ["custom_id", "method", "url", "body"]
    assert out_frame["custom_id"].to_list()[:2] == ["r0001", "r0002"]


def test_bad_batch_lines_fail_alone(write_job: WriteJob, tmp_path: Path) -> None:
    """A malformed, incomplete, non-POST or model-less batch line fails alone as invalid_input."""
    good = {
        "custom_id": "ok-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "qwen3-max", "messages": [{"role": "user", "content": "hi"}]},
    }
    lines = [
        json.dumps(good),
        '{"custom_id": "cut", "method": "PO',
        json.dumps({"custom_id": "nobody", "method": "POST", "url": "/v1/chat/completions"}),
        json.dumps({**good, "custom_id": "get", "method": "GET"}),
        json.dumps({**good, "custom_id": "emb", "url": "/v1/embeddings"}),
        json.dumps(
            {**good, "custom_id": "nomodel", "body": {"messages": [{"role": "user", "content": "x"}]}}
        ),
        json.dumps({**good, "custom_id": "ok-2"}),
    ]
    path = tmp_path / "batch.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    prompts = PromptSet(make_job(write_job, path, prompt="", id_column=None, model=None))
    out = items(prompts)
    assert [type(item) for item in out] == [Request, Result, Result, Result, Result, Result, Request]
    errors = [item for item in out if isinstance(item, Result)]
    assert all(e.error_type == "invalid_input" for e in errors)
    assert errors[0].error is not None
    assert errors[0].error.startswith("line 2: not valid JSON")
    assert "needs the keys custom_id, method, url, body" in str(errors[1].error)
    assert "only POST /v1/chat/completions" in str(errors[2].error)
    assert "only POST /v1/chat/completions" in str(errors[3].error)
    assert "body has no model" in str(errors[4].error)
    assert [item.custom_id for item in out][-1] == "ok-2"
    out_frame = frame(prompts)
    assert out_frame["custom_id"].to_list() == [item.custom_id for item in out]
    assert out_frame["body"][1] == lines[1]


def test_batch_lines_need_a_jsonl_file(write_job: WriteJob, reviews: Path, tmp_path: Path) -> None:
    """Without template or messages_column a non-JSONL input is refused before anything is read."""
    path = tmp_path / "reviews.csv"
    pl.read_ndjson(reviews).write_csv(path)
    with pytest.raises(InputError, match=r"must be OpenAI Batch API lines in a \.jsonl file"):
        PromptSet(make_job(write_job, path, prompt="", id_column=None))


def test_unknown_suffix_and_missing_file_are_input_errors(write_job: WriteJob, tmp_path: Path) -> None:
    """An input with an unknown suffix, or no input file at all, raises InputError naming the path."""
    text = tmp_path / "reviews.txt"
    text.write_text("hello\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"unknown input format '\.txt'"):
        PromptSet(make_job(write_job, text))
    with pytest.raises(InputError, match="no such input file"):
        PromptSet(make_job(write_job, tmp_path / "absent.jsonl"))


def test_input_column_named_like_an_output_column_is_renamed(write_job: WriteJob, tmp_path: Path) -> None:
    """Input columns called `status` or `error` come out as `input_status`/`input_error`, still usable."""
    path = tmp_path / "clash.jsonl"
    pl.DataFrame(
        {"id": ["a", "b"], "status": ["new", "old"], "error": ["", "x"], "text": ["t1", "t2"]}
    ).write_ndjson(path)
    prompts = PromptSet(make_job(write_job, path, prompt='template = "{status}: {text}"'))
    out_frame = frame(prompts)
    assert out_frame.columns == ["id", "input_status", "input_error", "text", "custom_id"]
    assert out_frame["input_status"].to_list() == ["new", "old"]
    assert [r.body["messages"][-1]["content"] for r in requests(prompts)] == ["new: t1", "old: t2"]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_csv_parquet_and_jsonl_render_the_same_requests(
    write_job: WriteJob, reviews: Path, tmp_path: Path, suffix: str
) -> None:
    """The same rows as JSONL, CSV or Parquet give the same requests and custom_ids."""
    source = pl.read_ndjson(reviews)
    path = tmp_path / f"copy{suffix}"
    if suffix == ".csv":
        source.write_csv(path)
    elif suffix == ".parquet":
        source.write_parquet(path)
    else:
        source.write_ndjson(path)
    expected = requests(PromptSet(make_job(write_job, reviews)))
    got = requests(PromptSet(make_job(write_job, path, name="copy.toml")))
    assert [r.custom_id for r in got] == [r.custom_id for r in expected]
    assert [r.body for r in got] == [r.body for r in expected]
    assert (
        frame(PromptSet(make_job(write_job, path, name="copy.toml")))["id"].to_list()
        == source["id"].to_list()
    )


def test_limit_reads_only_the_first_rows(write_job: WriteJob, reviews: Path) -> None:
    """`limit` keeps the first N rows, with the custom_ids those rows have without a limit."""
    job = make_job(write_job, reviews)
    full = [r.custom_id for r in requests(PromptSet(job))]
    limited = PromptSet(job, limit=5)
    assert [r.custom_id for r in requests(limited)] == full[:5]
    assert frame(limited).height == 5


def test_small_slices_keep_order_and_row_numbers(write_job: WriteJob, reviews: Path) -> None:
    """Reading in slices of 7 rows gives the same rows, order and row-number custom_ids as one slice."""
    job = make_job(write_job, reviews, id_column=None)
    whole = PromptSet(job)
    sliced = PromptSet(job, slice_rows=7)
    pieces = list(sliced.slices())
    assert [piece.frame.height for piece in pieces] == [7, 7, 7, 7, 7, 5]
    assert pl.concat([p.frame for p in pieces]).equals(frame(whole))
    assert [i.custom_id for p in pieces for i in p.items] == [r.custom_id for r in requests(whole)]


def test_rows_are_rendered_a_short_piece_at_a_time_and_the_first_read_is_short(
    write_job: WriteJob, reviews: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pieces of at most RENDER_ROWS rows; the first read stops at RENDER_ROWS, or at the concurrency when
    that is more (the first wave of requests is not kept waiting for a second read); order is kept."""
    monkeypatch.setattr(inputs, "RENDER_ROWS", 10)
    job = make_job(write_job, reviews, id_column=None, overrides=("limits.concurrency=4",))
    prompts = PromptSet(job, slice_rows=15)
    assert [batch.frame.height for batch in prompts.batches()] == [10, 15, 15]
    pieces = list(prompts.slices())
    assert [piece.frame.height for piece in pieces] == [10, 10, 5, 10, 5]
    whole = PromptSet(job, slice_rows=1_000)
    assert [i.custom_id for p in pieces for i in p.items] == [r.custom_id for r in requests(whole)]
    wide = make_job(write_job, reviews, id_column=None, overrides=("limits.concurrency=12",))
    assert [batch.frame.height for batch in PromptSet(wide, slice_rows=15).batches()] == [12, 15, 13]


def test_slices_number_rows_across_slices_in_error_messages(
    write_job: WriteJob, reviews: Path, tmp_path: Path
) -> None:
    """An error row in a later slice names its 1-based line in the whole file and its id, not its slice's."""
    path = tmp_path / "late_null.jsonl"
    frame_ = pl.read_ndjson(reviews).head(10)
    frame_.with_columns(
        pl.when(pl.col("id") == frame_["id"][8]).then(None).otherwise("text").alias("text")
    ).write_ndjson(path)
    out = items(PromptSet(make_job(write_job, path), slice_rows=4))
    errors: list[Any] = [item for item in out if isinstance(item, Result)]
    assert len(errors) == 1
    assert errors[0].error == f"line 9 (id {json.dumps(frame_['id'][8])}): column 'text' is null"
    assert out.index(errors[0]) == 8


def test_batch_line_asking_for_stream_is_sent_streaming(write_job: WriteJob, tmp_path: Path) -> None:
    """A batch line whose body sets `stream: true` is a request that keeps it (its reply is read as SSE)."""
    line = {
        "custom_id": "s-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "qwen3-max", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
    }
    path = tmp_path / "stream.jsonl"
    path.write_text(json.dumps(line) + "\n", encoding="utf-8")
    (item,) = items(PromptSet(make_job(write_job, path, prompt="", id_column=None, model=None)))
    assert isinstance(item, Request)
    assert item.body["stream"] is True


def test_blank_lines_in_a_batch_file_are_skipped(write_job: WriteJob, batch_lines: Path) -> None:
    """Blank lines between batch lines are no requests and no rows: the others come through in order."""
    lines = batch_lines.read_text(encoding="utf-8").splitlines()
    batch_lines.write_text("\n".join([lines[0], "", "   ", *lines[1:3], ""]) + "\n", encoding="utf-8")
    job = make_job(write_job, batch_lines, prompt="", id_column=None)
    out = items(PromptSet(job))
    assert [item.custom_id for item in out] == [json.loads(line)["custom_id"] for line in lines[:3]]
    assert all(isinstance(item, Request) for item in out)


def test_count_rows_counts_jsonl_lines_without_parsing_them(write_job: WriteJob, tmp_path: Path) -> None:
    """The progress total: non-blank lines of a JSONL file, capped by --limit; a Parquet file's rows."""
    path = tmp_path / "rows.jsonl"
    rows = [{"id": f"r{i}", "title": "t", "text": f"text {i}"} for i in range(12)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + "\n  \n")
    assert PromptSet(make_job(write_job, path)).count_rows() == 12
    assert PromptSet(make_job(write_job, path), limit=5).count_rows() == 5
    pl.read_ndjson(path).write_parquet(tmp_path / "rows.parquet")
    assert PromptSet(make_job(write_job, tmp_path / "rows.parquet")).count_rows() == 12


def test_csv_keeps_na_strings_and_names_repeated_headers_as_polars_does(
    write_job: WriteJob, tmp_path: Path
) -> None:
    """Only an empty CSV field is null ("NA" is text, Namibia's code); a repeated header gets a suffix."""
    path = tmp_path / "rows.csv"
    path.write_text('id,title,text,text\nr1,NA,null,x\nr2,,"",y\n')
    piece = next(PromptSet(make_job(write_job, path)).slices())
    assert piece.frame.columns[:4] == ["id", "title", "text", "text_duplicated_0"]
    assert piece.frame["title"].to_list() == ["NA", None]
    assert piece.frame["text"].to_list() == ["null", ""]


def test_a_slice_of_blank_lines_does_not_end_a_jsonl_input(write_job: WriteJob, tmp_path: Path) -> None:
    path = tmp_path / "gaps.jsonl"
    row = '{{"id": "{}", "title": "t", "text": "x"}}\n'
    path.write_text(row.format("a") + "\n\n  \n\n" + row.format("b"))
    prompts = PromptSet(make_job(write_job, path), slice_rows=2)
    assert [piece.frame["id"].to_list() for piece in prompts.slices()] == [["a"], ["b"]]
    assert prompts.count_rows() == 2


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"temperature": 1e-05, "top_p": 0.95, "max_tokens": 2**40, "stop": ["\n", "é"], "seed": None},
        {"model": "override-first-key", "temperature": 0.7},  # a key that moves: no splicing
    ],
)
def test_the_body_encoder_gives_the_bytes_encode_gives(params: dict[str, Any]) -> None:
    """Splicing the constant parts around each row's messages yields exactly `encode(body)`."""
    bodies = BodyEncoder("qwen3-max", params)
    messages = [
        {"role": "system", "content": 'Label "it".\n\t\\ \u2028 😀 \x00'},
        {"role": "user", "content": "Ünïcödé review: 5/5"},
    ]
    assert bodies.encode(messages, strings_only=True) == encode(bodies.body(messages))
    parts = [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "x", "weight": 1e-07}]}]
    assert bodies.encode(parts, strings_only=False) == encode(bodies.body(parts))
