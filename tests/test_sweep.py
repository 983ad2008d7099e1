"""Sweeps: a `[matrix]` runs every row once per combination, in one output, compared in the summary."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from batchrun.emulator import EmulatorServer
from batchrun.errors import JobFileError
from batchrun.job import sweep
from batchrun.job.loader import load_job
from batchrun.job.matrix import combinations, normalize
from batchrun.records import Request
from tests.conftest import CliResult, load_error

Cli = Callable[..., CliResult]
StartEmulator = Callable[..., EmulatorServer]
WriteJob = Callable[..., Path]

URL = "http://127.0.0.1:9/v1"
MODELS_AND_TEMPERATURES = """
[matrix]
model = ["qwen3-max", "qwen-max"]
params.temperature = [0, 0.7]
"""
VARIANTS = [
    "model=qwen3-max,temperature=0",
    "model=qwen3-max,temperature=0.7",
    "model=qwen-max,temperature=0",
    "model=qwen-max,temperature=0.7",
]


def read_output(job: Path) -> pl.DataFrame:
    """The output Parquet of a test job."""
    return pl.read_parquet(job.parent / "out" / "test.parquet")


def test_matrix_keys_are_dotted_names_and_bare_model_means_provider_model() -> None:
    """Nested tables, quoted dotted keys and bare `model` all flatten to the names `--set` uses."""
    flat = normalize({"model": ["a", "b"], "params": {"top_p": [0.5, 1]}, "prompt.system": ["x", "y"]})
    assert flat == {"provider.model": ["a", "b"], "params.top_p": [0.5, 1], "prompt.system": ["x", "y"]}


def test_combinations_are_the_cartesian_product_with_readable_names() -> None:
    """Each combination once, first key varying slowest, named `key=value,...`; long values by position."""
    combos = combinations(
        {"provider.model": ["a", "b"], "prompt.template": ["{text}", "Long " * 10 + "{text}"]}
    )
    assert [c.name for c in combos] == [
        "model=a,template={text}",
        "model=a,template=#2",
        "model=b,template={text}",
        "model=b,template=#2",
    ]
    assert combos[1].values == ("a", "Long " * 10 + "{text}")


@pytest.mark.parametrize(
    ("matrix", "fragment"),
    [
        ("model = 'qwen-max'", "provider.model: expected a list of values"),
        ("model = []", "provider.model: give at least one value"),
        ("model = ['a', 'a']", "provider.model: a value is listed twice"),
        ("limits.concurrency = [1, 2]", "limits.concurrency cannot be swept"),
        ("params.model = ['a']", "params.model cannot be swept"),
        ("model = ['a']\nprovider.model = ['b']", "swept twice"),
        (
            "'params.n' = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n'params.seed' = " + str(list(range(101))),
            "at most 1,000",
        ),
    ],
)
def test_bad_matrix_names_the_file_and_key(write_job: WriteJob, matrix: str, fragment: str) -> None:
    """A malformed `[matrix]` stops the load with an error naming the job file, [matrix] and the key."""
    path = write_job(URL, f"\n[matrix]\n{matrix}\n")
    message = load_error(path)
    assert str(path) in message
    assert "matrix" in message
    assert fragment in message


def test_a_variant_that_does_not_validate_is_named(write_job: WriteJob) -> None:
    """A swept value the job schema refuses names the file, [matrix], the variant and the key at load."""
    path = write_job(URL, "\n[matrix]\nprompt.system = ['Be brief.', ['not', 'text']]\n")
    message = load_error(path)
    assert message.startswith(f"{path}: [matrix] variant system=#2: [prompt] system:")
    assert "valid string" in message


def test_keys_that_do_not_shape_the_request_cannot_be_swept(write_job: WriteJob) -> None:
    """Only the model, params and the prompt's system and template can vary within one run."""
    for key in ("params.stream = [false]", "'prompt.messages_column' = ['m']", "provider.base_url = ['x']"):
        with pytest.raises(JobFileError, match="cannot be swept"):
            load_job(write_job(URL, f"\n[matrix]\n{key}\n"))


def test_a_sweep_over_openai_batch_lines_is_refused(write_job: WriteJob) -> None:
    """Batch lines carry their own custom_id, which cannot tell variants apart: the load says so."""
    header = 'name = "b"\n[input]\npath = "b.jsonl"\n[provider]\nbase_url = "http://127.0.0.1:9/v1"\n'
    path = write_job(URL, "[matrix]\nmodel = ['a', 'b']\n", header=header)
    with pytest.raises(JobFileError, match="a sweep needs \\[prompt\\] template or messages_column"):
        load_job(path)


def test_the_model_may_come_from_the_matrix_alone(write_job: WriteJob) -> None:
    """A job whose [provider] names no model is valid when the matrix sweeps the model."""
    header = 'name = "m"\n[input]\npath = "in.jsonl"\n[prompt]\ntemplate = "{text}"\n'
    path = write_job(URL, header=header + f'[provider]\nbase_url = "{URL}"\n[matrix]\nmodel = ["a", "b"]\n')
    job = load_job(path)
    assert [v.job.provider.model for v in sweep.variants(job)] == ["a", "b"]


def test_sweep_runs_every_row_once_per_variant_grouped_by_variant(
    emulator: StartEmulator,
    write_job: WriteJob,
    reviews: Path,
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """40 rows x 4 variants: each variant's rows together in input order, variant and sweep columns set."""
    monkeypatch.setattr(sweep, "SLICE_ROWS", 28)  # 7 rows a slice per variant: several slices interleave
    monkeypatch.setattr(sweep, "MIN_SLICE_ROWS", 1)
    server = emulator()
    job = write_job(server.base_url, MODELS_AND_TEMPERATURES)
    result = cli("run", job)
    assert result.exit_code == 0, result.stderr
    out = read_output(job)
    source = pl.read_ndjson(reviews)
    assert out.height == 4 * source.height
    assert out["variant"].to_list() == [v for v in VARIANTS for _ in range(source.height)]
    assert out["id"].to_list() == source["id"].to_list() * 4
    assert out["sweep_model"].to_list() == ["qwen3-max"] * 80 + ["qwen-max"] * 80
    assert out.schema["sweep_temperature"] == pl.Float64
    assert out["sweep_temperature"].unique().sort().to_list() == [0.0, 0.7]
    assert out["model"].to_list() == out["sweep_model"].to_list()  # the model the emulator reported
    assert out["custom_id"].n_unique() == out.height
    added = out.columns[source.width : source.width + 4]
    assert added == ["variant", "sweep_model", "sweep_temperature", "custom_id"]
    assert (out["status"] == "ok").all()
    assert server.emulator.requests_by_status[200] == 160
    for name in VARIANTS:
        assert name in result.stdout


def test_adding_a_matrix_value_sends_only_the_new_variant(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """Resume holds per variant: a rerun with one more model sends that model's rows and nothing else."""
    server = emulator()
    job = write_job(server.base_url, '\n[matrix]\nmodel = ["qwen3-max"]\n')
    assert cli("run", job).exit_code == 0
    first = read_output(job)
    write_job(server.base_url, '\n[matrix]\nmodel = ["qwen3-max", "qwen-max"]\n')
    result = cli("run", job, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["rows"], summary["requests_sent"], summary["rows_reused"]) == (80, 40, 40)
    assert server.emulator.requests_by_status[200] == 80
    second = read_output(job)
    assert second.head(40).select("custom_id", "completion").equals(first.select("custom_id", "completion"))


def test_json_summary_compares_variants(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """`run --json` holds one entry per variant, with its ok rate, tokens, cost and latency percentiles."""
    server = emulator()
    job = write_job(server.base_url, '\n[matrix]\nmodel = ["qwen3-max", "qwen-max"]\n')
    summary = json.loads(cli("run", job, "--json").stdout)
    out = read_output(job)
    entries = summary["variants"]
    assert [e["variant"] for e in entries] == ["model=qwen3-max", "model=qwen-max"]
    for entry in entries:
        rows = out.filter(pl.col("variant") == entry["variant"])
        assert (entry["rows"], entry["ok"], entry["ok_rate"]) == (40, 40, 1.0)
        assert entry["prompt_tokens"] == rows["prompt_tokens"].sum()
        assert entry["completion_tokens"] == rows["completion_tokens"].sum()
        assert entry["cost_usd"] == pytest.approx(rows["cost_usd"].sum())
        latency = rows["latency_s"]
        assert entry["latency_p50_s"] == pytest.approx(latency.quantile(0.5, "linear"), abs=5e-4)
        assert entry["latency_p95_s"] == pytest.approx(latency.quantile(0.95, "linear"), abs=5e-4)
        assert 0 < entry["latency_p50_s"] <= entry["latency_p95_s"]
    assert entries[0]["cost_usd"] != entries[1]["cost_usd"]  # qwen-max and qwen3-max have their own prices
    assert sum(e["prompt_tokens"] for e in entries) == summary["prompt_tokens"]


def test_a_job_without_matrix_has_no_variant_columns_or_table(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """Without [matrix] the output and the summary are as before: no variant column, no variants table."""
    server = emulator()
    job = write_job(server.base_url)
    result = cli("run", job, "--json")
    assert "variants" not in json.loads(result.stdout)
    assert "variant" not in read_output(job).columns


def test_input_columns_named_like_sweep_columns_are_renamed(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """An input column called `variant` is kept as `input_variant`, as other clashing names are."""
    pl.read_ndjson(reviews).with_columns(variant=pl.lit("mine")).write_ndjson(reviews)
    server = emulator()
    job = write_job(server.base_url, '\n[matrix]\nmodel = ["qwen3-max", "qwen-max"]\n')
    assert cli("run", job).exit_code == 0
    out = read_output(job)
    assert out["input_variant"].unique().to_list() == ["mine"]
    assert out["variant"].unique(maintain_order=True).to_list() == ["model=qwen3-max", "model=qwen-max"]


def test_template_sweep_checks_each_templates_columns(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """A swept template naming a missing column exits 2 before any request, naming the column."""
    server = emulator()
    job = write_job(server.base_url, "\n[matrix]\nprompt.template = ['{text}', '{nope}']\n")
    result = cli("run", job)
    assert result.exit_code == 2
    assert "{nope}" in result.stderr
    assert sum(server.emulator.requests_by_status.values()) == 0


def test_estimate_counts_rows_times_variants(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """`estimate` counts every input row once per variant and prices each variant's model."""
    server = emulator()
    job = write_job(server.base_url, MODELS_AND_TEMPERATURES)
    guess = json.loads(cli("estimate", job, "--json").stdout)
    assert (guess["rows"], guess["to_send"], guess["variants"]) == (160, 160, 4)
    assert "qwen-max" in guess["price_source"]
    assert "qwen3-max" in guess["price_source"]
    assert "40 input rows x 4 variants" in cli("estimate", job).stdout


def test_a_budget_needs_a_price_for_every_swept_model(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """max_cost_usd with a swept model that has no known price exits 2 naming that model, sending nothing."""
    server = emulator()
    job = write_job(server.base_url, '\n[matrix]\nmodel = ["qwen3-max", "my-finetune"]\n')
    job.write_text(job.read_text().replace("[limits]\n", "[limits]\nmax_cost_usd = 1.0\n"))
    result = cli("run", job)
    assert result.exit_code == 2
    assert "'my-finetune'" in result.stderr
    assert sum(server.emulator.requests_by_status.values()) == 0


def test_variants_take_turns_slice_by_slice(
    write_job: WriteJob, reviews: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The input is read once; each slice goes out once per variant before the next slice is read."""
    monkeypatch.setattr(sweep, "SLICE_ROWS", 30)  # 15 rows a slice for 2 variants: slices of 15, 15, 10
    monkeypatch.setattr(sweep, "MIN_SLICE_ROWS", 1)
    job = load_job(write_job(URL, '\n[matrix]\nmodel = ["qwen3-max", "qwen-max"]\n'))
    pieces = list(sweep.prompt_set(job).slices())
    ids = pl.read_ndjson(reviews)["id"].to_list()
    assert [(p.part, p.frame["id"][0], p.frame.height) for p in pieces] == [
        ("v0000-", ids[0], 15),
        ("v0001-", ids[0], 15),
        ("v0000-", ids[15], 15),
        ("v0001-", ids[15], 15),
        ("v0000-", ids[30], 10),
        ("v0001-", ids[30], 10),
    ]
    models = {p.part: {item.body["model"] for item in p.items if isinstance(item, Request)} for p in pieces}
    assert models == {"v0000-": {"qwen3-max"}, "v0001-": {"qwen-max"}}


def test_variant_in_the_output_path_writes_one_plain_output_per_variant(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """`{variant}` splits the sweep: a file, a journal and a summary per variant, run one after another."""
    server = emulator()
    job = write_job(server.base_url, '\n[matrix]\nmodel = ["qwen3-max", "alibaba/qwen-max"]\n')
    folder = job.parent / "split"
    result = cli("run", job, "--json", "--set", f'output.path="{folder}/{{variant}}.parquet"')
    assert result.exit_code == 0, result.stderr
    files = [folder / "model=qwen3-max.parquet", folder / "model=alibaba_qwen-max.parquet"]
    assert [s["output"] for s in json.loads(result.stdout)] == [str(path) for path in files]
    source = pl.read_ndjson(reviews)
    for path in files:
        out = pl.read_parquet(path)
        assert out["id"].to_list() == source["id"].to_list()
        assert (out["status"] == "ok").all()
        assert "variant" not in out.columns  # the file name says which variant it holds
        assert json.loads(path.with_name(path.stem + ".summary.json").read_text())["ok"] == source.height
        assert path.with_suffix(".log").is_file()
    assert server.emulator.requests_by_status[200] == 2 * source.height
