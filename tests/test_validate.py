"""The whole-input check: every row read and checked before the first request; `[input] on_bad_row`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchrun.emulator import EmulatorServer
from batchrun.errors import InputError
from batchrun.inputs import readers, validate
from batchrun.inputs.prompts import PromptSet
from batchrun.inputs.validate import check_input
from batchrun.job.loader import load_job
from tests.conftest import CliResult

WriteJob = Callable[..., Path]
Cli = Callable[..., CliResult]
StartEmulator = Callable[..., EmulatorServer]

URL = "http://127.0.0.1:9/v1"


def rows(count: int) -> list[dict[str, Any]]:
    """`count` small rows with an id and a text."""
    return [{"id": f"r{i:03d}", "text": f"review {i}"} for i in range(count)]


def write_lines(path: Path, lines: list[str]) -> Path:
    """Write `lines` (each without its line end) to `path`."""
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def job_header(input_name: str, prompt: str = 'template = "Label: {text}"', extra: str = "") -> str:
    """A job over `input_name` with the given `[prompt]` body; `extra` TOML goes under `[input]`."""
    return (
        f'name = "v"\n\n[input]\npath = "{input_name}"\nid_column = "id"\n{extra}\n'
        f'[prompt]\n{prompt}\n\n[provider]\nbase_url = "{{base_url}}"\nmodel = "qwen3-max"\n\n'
        "[params]\nmax_tokens = 16\n\n[limits]\nconcurrency = 4\n\n"
        '[output]\npath = "out/{job}.parquet"\n'
    )


def late_bad_lines(tmp_path: Path) -> Path:
    """25 rows where line 22 does not parse and line 25 has a null text, after a blank line 3."""
    lines = [json.dumps(row) for row in rows(24)]
    lines.insert(2, "")
    lines[21] = '{"id": "r020", "text": '
    lines.append(json.dumps({"id": "r024", "text": None}))
    return write_lines(tmp_path / "in.jsonl", lines)


def test_a_bad_line_past_the_first_slice_stops_the_job_before_any_request(
    emulator: StartEmulator, write_job: WriteJob, tmp_path: Path, cli: Cli
) -> None:
    """Bad lines anywhere exit 2 naming each 1-based line (blank lines counted) and id; nothing is sent."""
    late_bad_lines(tmp_path)
    server = emulator()
    job = write_job(server.base_url, header=job_header("in.jsonl").replace("{base_url}", server.base_url))
    result = cli("run", job)
    assert result.exit_code == 2
    assert "2 of 25 rows cannot be sent" in result.stderr
    assert "line 22: not valid JSON (unexpected end of data" in result.stderr
    assert """line 26 (id "r024"): column 'text' is null""" in result.stderr
    assert 'on_bad_row = "skip"' in result.stderr
    assert "Traceback" not in result.stderr
    assert sum(server.emulator.requests_by_status.values()) == 0
    summary = json.loads((tmp_path / "out" / "v.summary.json").read_text(encoding="utf-8"))
    assert summary["exit_code"] == 2
    assert "line 22" in summary["message"]


def run_late_bad_lines(
    on_bad_row: str, emulator: StartEmulator, write_job: WriteJob, folder: Path, cli: Cli
) -> tuple[EmulatorServer, CliResult]:
    """`batchrun run` over `late_bad_lines` with the given `on_bad_row`, against a fresh emulator."""
    late_bad_lines(folder)
    server = emulator()
    header = job_header("in.jsonl", extra=f'on_bad_row = "{on_bad_row}"')
    header = header.replace("{base_url}", server.base_url)
    return server, cli("run", write_job(server.base_url, header=header))


def test_on_bad_row_skip_leaves_bad_rows_out_of_the_run_and_the_output(
    emulator: StartEmulator, write_job: WriteJob, tmp_path: Path, cli: Cli
) -> None:
    """`on_bad_row = "skip"` sends every good row, warns naming the bad ones, and the output lacks them."""
    server, result = run_late_bad_lines("skip", emulator, write_job, tmp_path, cli)
    assert result.exit_code == 0
    assert "They are left out" in result.stderr
    output = pl.read_parquet(tmp_path / "out" / "v.parquet")
    assert output.height == 23
    assert "r024" not in output["id"].to_list()
    assert set(output["status"]) == {"ok"}
    assert sum(server.emulator.requests_by_status.values()) == 23


def test_on_bad_row_error_writes_error_rows_naming_line_and_id(
    emulator: StartEmulator, write_job: WriteJob, tmp_path: Path, cli: Cli
) -> None:
    """`on_bad_row = "error"` keeps every row; the bad ones are `invalid_input` rows naming line and id."""
    _, result = run_late_bad_lines("error", emulator, write_job, tmp_path, cli)
    assert result.exit_code == 1
    output = pl.read_parquet(tmp_path / "out" / "v.parquet")
    assert output.height == 25
    errors = output.filter(pl.col("status") == "error")
    assert errors["error_type"].to_list() == ["invalid_input", "invalid_input"]
    assert errors["error"][0].startswith("line 22: not valid JSON")
    assert errors["error"][1] == """line 26 (id "r024"): column 'text' is null"""
    assert errors["id"].to_list() == [None, "r024"]  # the line that did not parse has no columns


def test_unreadable_lines_are_each_named(write_job: WriteJob, tmp_path: Path) -> None:
    """Lines that are not JSON, not an object, or not UTF-8 are each found, with the reason."""
    path = tmp_path / "in.jsonl"
    good = [json.dumps(row).encode() for row in rows(6)]
    lines = [good[0], b"[1, 2]", good[1], b'"text"', b'{"id": "r9", "text": "caf\xe9"}', good[2], b"{oops}"]
    path.write_bytes(b"\n".join(lines) + b"\n")
    job = load_job(write_job(URL, header=job_header("in.jsonl")))
    report = check_input(PromptSet(job, slice_rows=3))
    assert (report.rows, report.bad) == (7, 4)
    reasons = [str(bad) for bad in report.examples]
    assert reasons[0] == "line 2: not a JSON object (list); each line must be one object"
    assert reasons[1] == "line 4: not a JSON object (str); each line must be one object"
    assert reasons[2].startswith("line 5: not UTF-8 text (byte")
    assert reasons[3].startswith("line 7: not valid JSON")
    with pytest.raises(InputError, match="4 of 7 rows cannot be sent"):
        report.enforce()


def test_a_column_type_that_changes_late_widens_instead_of_failing(
    write_job: WriteJob, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Text where the first rows had numbers widens the column (from the whole file); no row is bad."""
    monkeypatch.setattr(readers, "INFER_ROWS", 3)
    values: list[Any] = [1, 2, 3, 4, 5, "six", 7]
    write_lines(tmp_path / "in.jsonl", [json.dumps({"id": v, "text": f"t{v}"}) for v in values])
    prompts = PromptSet(load_job(write_job(URL, header=job_header("in.jsonl"))), slice_rows=2)
    report = check_input(prompts)
    assert (report.rows, report.bad) == (7, 0)
    frame = pl.concat([piece.frame for piece in prompts.slices()])
    assert frame["id"].to_list() == ["1", "2", "3", "4", "5", "six", "7"]


def test_a_csv_whose_types_change_late_widens_too(
    write_job: WriteJob, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CSV column of numbers that turns to text past the inferred rows is read as text, not an error."""
    monkeypatch.setattr(readers, "INFER_ROWS", 2)
    (tmp_path / "in.csv").write_text("id,text\n1,a\n2,b\n3,c\nx4,d\n", encoding="utf-8")
    prompts = PromptSet(load_job(write_job(URL, header=job_header("in.csv"))))
    assert check_input(prompts).bad == 0
    assert pl.concat([p.frame for p in prompts.slices()])["id"].to_list() == ["1", "2", "3", "x4"]


def test_a_csv_row_that_is_not_utf8_is_named_by_row_and_column(
    emulator: StartEmulator, write_job: WriteJob, tmp_path: Path, cli: Cli
) -> None:
    """A non-UTF-8 CSV exits 2 naming the row and column to fix, in one message, no traceback."""
    data = "id,text\n" + "".join(f"r{i},review {i}\n" for i in range(30))
    (tmp_path / "in.csv").write_bytes(data.encode() + "r30,caf\xe9\n".encode("latin-1"))
    server = emulator()
    header = job_header("in.csv").replace("{base_url}", server.base_url)
    result = cli("run", write_job(server.base_url, header=header))
    assert result.exit_code == 2
    assert "row 31, column 'text' is not UTF-8 text: save the file as UTF-8" in result.stderr
    assert "Traceback" not in result.stderr
    assert sum(server.emulator.requests_by_status.values()) == 0


def test_a_csv_row_with_too_many_fields_is_named(write_job: WriteJob, tmp_path: Path) -> None:
    """A CSV row with more fields than the header is an InputError naming the row."""
    (tmp_path / "in.csv").write_text("id,text\nr1,a\nr2,b,extra\n", encoding="utf-8")
    prompts = PromptSet(load_job(write_job(URL, header=job_header("in.csv"))))
    with pytest.raises(InputError, match="row 2 has 3 fields where the header has 2"):
        check_input(prompts)


def deep_messages(depth: int) -> str:
    """A messages list whose one message's text part nests `depth` lists deep, as JSON text."""
    return '[{"role": "user", "content": [{"type": "text", "text": ' + "[" * depth + "]" * depth + "}]}]"


@pytest.mark.parametrize(
    ("cell", "reason"),
    [
        (deep_messages(100_000), "column 'msgs' is not valid JSON (depth limit exceeded)"),
        (deep_messages(300), "column 'msgs'[0].content[0].text[0][0]"),
        ('[{"role": "user", "content": NaN}]', "column 'msgs' is not valid JSON"),
        ('["just a string"]', "column 'msgs'[0] is 'just a string': a message is an object"),
        ('[{"content": "who am I"}]', "column 'msgs'[0] has no role"),
        ('{"role": "user"}', "column 'msgs' must hold a non-empty list of messages"),
    ],
)
def test_messages_a_provider_cannot_take_are_bad_rows(
    write_job: WriteJob, tmp_path: Path, cell: str, reason: str
) -> None:
    """A messages cell nested 100,000 deep, with NaN, or with a message that is not an object is bad."""
    cells = ['[{"role": "user", "content": "fine"}]', cell]
    write_lines(tmp_path / "in.jsonl", [json.dumps({"id": f"m{i}", "msgs": c}) for i, c in enumerate(cells)])
    job = load_job(write_job(URL, header=job_header("in.jsonl", prompt='messages_column = "msgs"')))
    report = check_input(PromptSet(job))
    assert report.bad == 1
    assert str(report.examples[0]).startswith('line 2 (id "m1"): ')
    assert reason in str(report.examples[0])


def batch_line(custom_id: str, **body: Any) -> str:
    """One OpenAI Batch API line with the given body fields over a one-message body."""
    full = {"model": "qwen3-max", "messages": [{"role": "user", "content": "hi"}], **body}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": full})


@pytest.mark.parametrize(
    ("kind", "line", "reason"),
    [
        (
            "openai",
            batch_line("b", max_tokens=[1]),
            "max_tokens must be a whole number of 1 or more, not [1]",
        ),
        ("openai", batch_line("b").replace('"hi"}]', '"hi"}], "max_tokens": 1e999'), "number is infinity"),
        ("openai", batch_line("b", temperature="warm"), "temperature must be a number"),
        ("openai", batch_line("b", messages=["hi"]), "body.messages[0] is 'hi': a message is an object"),
        ("anthropic", batch_line("b", messages=["hi"]), "body.messages[0] is 'hi'"),
        ("anthropic", batch_line("b"), "max_tokens is required"),
        ("anthropic", batch_line("b", max_tokens=8, seed=1), "seed is not part of the Messages API"),
    ],
)
def test_batch_lines_a_provider_cannot_take_are_bad_rows(
    write_job: WriteJob, tmp_path: Path, kind: str, line: str, reason: str
) -> None:
    """Batch lines with values a provider cannot take are bad rows naming the line and custom_id."""
    write_lines(tmp_path / "in.jsonl", [batch_line("a", max_tokens=8), line])
    header = (
        'name = "b"\n[input]\npath = "in.jsonl"\n[provider]\n'
        f'kind = "{kind}"\nbase_url = "{URL}"\n[output]\npath = "out/b.parquet"\n'
    )
    report = check_input(PromptSet(load_job(write_job(URL, header=header))))
    assert report.bad == 1
    where = "line 2: " if "infinity" in reason else 'line 2 (custom_id "b"): '  # a line orjson cannot read
    assert str(report.examples[0]).startswith(where)
    assert reason in str(report.examples[0])


def test_the_report_names_the_first_rows_and_counts_the_rest(
    write_job: WriteJob, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message names at most MAX_EXAMPLES bad rows and says how many more there are."""
    monkeypatch.setattr(validate, "MAX_EXAMPLES", 2)
    write_lines(tmp_path / "in.jsonl", [json.dumps({"id": f"r{i}", "text": None}) for i in range(5)])
    report = check_input(PromptSet(load_job(write_job(URL, header=job_header("in.jsonl")))))
    assert len(report.examples) == 2
    assert report.describe().splitlines()[-1] == "  ... and 3 more"


def test_check_counts_rows_for_progress_after_skipping(write_job: WriteJob, tmp_path: Path) -> None:
    """After the check, the prompt set's row count is known without another read (skipped rows excluded)."""
    late_bad_lines(tmp_path)
    job = load_job(write_job(URL, header=job_header("in.jsonl")), ["input.on_bad_row=skip"])
    prompts = PromptSet(job)
    check_input(prompts).enforce()
    assert prompts.count_rows() == 23
    assert sum(len(piece.items) for piece in prompts.slices()) == 23


def test_estimate_stops_on_bad_rows_as_run_does(write_job: WriteJob, tmp_path: Path, cli: Cli) -> None:
    """`batchrun estimate` runs the same check: a bad row exits 2 naming it."""
    late_bad_lines(tmp_path)
    result = cli("estimate", write_job(URL, header=job_header("in.jsonl")))
    assert result.exit_code == 2
    assert "line 22: not valid JSON" in result.stderr


def test_an_input_with_no_json_object_says_so(write_job: WriteJob, tmp_path: Path) -> None:
    """A JSONL file none of whose lines is an object is refused naming that, not with an empty column list."""
    write_lines(tmp_path / "in.jsonl", ["[1]", "", "not json"])
    with pytest.raises(InputError, match=r"no line of the input is a JSON object"):
        PromptSet(load_job(write_job(URL, header=job_header("in.jsonl"))))
