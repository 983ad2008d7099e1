"""End to end through the `batchrun` command against the emulator on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import polars as pl
import pytest

from batchrun.emulator import EmulatorServer
from tests.conftest import JOBS, SAMPLE_DATA, CliResult

Cli = Callable[..., CliResult]
StartEmulator = Callable[..., EmulatorServer]
WriteJob = Callable[..., Path]

QWEN3_MAX_INPUT, QWEN3_MAX_OUTPUT = 1.2e-6, 6.0e-6  # USD per token, first tier (prices.toml)


def read_output(job: Path) -> pl.DataFrame:
    """The output Parquet of a test job (its [output] path is out/test.parquet beside the job file)."""
    return pl.read_parquet(job.parent / "out" / "test.parquet")


def test_output_rows_match_input_rows(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """Every input row comes back once, in input order, with its columns intact and every contract column."""
    server = emulator()
    result = cli("run", write_job(server.base_url))
    assert result.exit_code == 0, result.stderr
    out = read_output(reviews.parent / "job.toml")
    source = pl.read_ndjson(reviews)
    assert out.select(source.columns).equals(source)
    assert out["status"].to_list() == ["ok"] * source.height
    assert out["custom_id"].n_unique() == source.height
    assert out["completion"].null_count() == 0
    assert out.columns[source.width :] == [
        "custom_id", "status", "completion", "finish_reason", "reasoning", "tool_calls", "prompt_tokens",
        "completion_tokens", "cached_tokens", "reasoning_tokens", "total_tokens", "cost_usd", "model",
        "response_id", "latency_s", "attempts", "error_type", "error", "http_status", "cached",
        "completions", "json", "batch_id",
    ]  # fmt: skip
    assert out.schema["prompt_tokens"] == pl.Int64
    assert out.schema["cost_usd"] == pl.Float64
    assert "40 ok, 0 failed" in result.stdout


def test_usage_and_cost_match_what_the_server_reported(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """Usage columns hold the server's own counts and cost_usd is the qwen3-max price applied to them."""
    server = emulator()
    job = write_job(server.base_url)
    assert cli("run", job).exit_code == 0
    out = read_output(job)
    first = pl.read_ndjson(reviews).row(0, named=True)
    body = {
        "model": "qwen3-max",
        "messages": [
            {"role": "system", "content": "You label the sentiment of product reviews."},
            {"role": "user", "content": f"Review: {first['title']}. {first['text']}\nAnswer with one word."},
        ],
        "temperature": 0,
        "max_tokens": 16,
    }
    direct = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=5).json()
    row = out.row(0, named=True)
    assert row["completion"] == direct["choices"][0]["message"]["content"]
    assert row["prompt_tokens"] == direct["usage"]["prompt_tokens"]
    assert row["completion_tokens"] == direct["usage"]["completion_tokens"]
    assert row["model"] == direct["model"]
    assert (out["total_tokens"] == out["prompt_tokens"] + out["completion_tokens"]).all()
    expected = out["prompt_tokens"] * QWEN3_MAX_INPUT + out["completion_tokens"] * QWEN3_MAX_OUTPUT
    assert ((out["cost_usd"] - expected).abs() < 1e-12).all()


def test_pricing_table_in_the_job_overrides_the_builtin_price(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """`[pricing]` set from the command line replaces the built-in qwen3-max price."""
    server = emulator()
    job = write_job(server.base_url)
    result = cli("run", job, "--set", "pricing.input=2", "--set", "pricing.output=4")
    assert result.exit_code == 0
    out = read_output(job)
    expected = (out["prompt_tokens"] * 2 + out["completion_tokens"] * 4) / 1e6
    assert ((out["cost_usd"] - expected).abs() < 1e-12).all()


def test_unknown_price_gives_null_cost_not_zero(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """A model with no known price gets a null cost_usd and the summary says the cost is unknown."""
    server = emulator()
    job = write_job(server.base_url)
    result = cli("run", job, "--set", "provider.model=my-local-finetune")
    assert result.exit_code == 0
    assert read_output(job)["cost_usd"].null_count() == 40
    assert "cost:    unknown" in result.stdout


def test_429_and_500_are_retried_to_success(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """With a third of replies 429 or 500, every row still ends ok and the retries show in `attempts`."""
    server = emulator(rate_429=0.2, rate_500=0.15, retry_after_s=0.001, seed=7)
    job = write_job(server.base_url)
    result = cli("run", job, "--set", "limits.max_attempts=12")
    assert result.exit_code == 0, result.stderr
    out = read_output(job)
    assert out["status"].to_list() == ["ok"] * 40
    statuses = server.emulator.requests_by_status
    assert statuses[429] > 0
    assert statuses[500] > 0
    assert out["attempts"].sum() == statuses[200] + statuses[429] + statuses[500]
    assert out["attempts"].max() > 1


def test_400_fails_only_its_row_with_the_providers_message(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """A 400 is not retried: that row has status error and the server's message, the others are ok; exit 1."""
    frame = pl.read_ndjson(reviews)
    frame = frame.with_columns(
        pl.when(pl.col("id") == frame["id"][3])
        .then(pl.lit("[[emulator:400]]"))
        .otherwise("text")
        .alias("text")
    )
    frame.write_ndjson(reviews)
    server = emulator()
    job = write_job(server.base_url)
    result = cli("run", job)
    assert result.exit_code == 1
    out = read_output(job)
    bad = out.row(3, named=True)
    assert bad["status"] == "error"
    assert bad["http_status"] == 400
    assert bad["error_type"] == "bad_request"
    assert bad["attempts"] == 1
    assert "[[emulator:400]]" in bad["error"]
    assert out.filter(pl.col("status") == "ok").height == 39
    assert "bad_request: 1" in result.stdout


def test_bad_key_stops_the_job_with_exit_3_naming_the_env_var(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """A 401 stops the whole run (exit 3), names the env var, never prints the key; every row is pending."""
    server = emulator(api_key="the-right-key")
    job = write_job(server.base_url, '\n[provider.headers]\n"x-test" = "1"\n').read_text()
    job_path = reviews.parent / "job.toml"
    job_path.write_text(
        job.replace('model = "qwen3-max"', 'model = "qwen3-max"\napi_key_env = "BATCHRUN_TEST_KEY"')
    )
    result = cli("run", job_path, env={"BATCHRUN_TEST_KEY": "sk-wrong-key-123"})
    assert result.exit_code == 3
    assert "BATCHRUN_TEST_KEY" in result.stderr
    assert "sk-wrong-key-123" not in result.stderr + result.stdout
    out = pl.read_parquet(reviews.parent / "out" / "test.parquet")
    assert out.height == 40
    assert set(out["status"]) <= {"pending", "error"}
    saved = json.loads((reviews.parent / "out" / "test.summary.json").read_text())
    assert (saved["status"], saved["exit_code"], saved["ok"]) == ("stopped", 3, 0)
    assert saved["pending"] + saved["failed"] == 40
    # The stop cancels the rest: no more than the requests already in flight were sent.
    assert server.emulator.requests_by_status[401] <= 8
    good = cli("run", job_path, env={"BATCHRUN_TEST_KEY": "the-right-key"})
    assert good.exit_code == 0


def test_missing_key_env_var_exits_2_before_sending(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job whose key variable is unset exits 2 naming the variable, and sends nothing."""
    monkeypatch.delenv("BATCHRUN_TEST_KEY", raising=False)
    server = emulator()
    job = write_job(server.base_url)
    result = cli("run", job, "--set", "provider.api_key_env=BATCHRUN_TEST_KEY")
    assert result.exit_code == 2
    assert "BATCHRUN_TEST_KEY" in result.stderr
    assert sum(server.emulator.requests_by_status.values()) == 0


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ("\n[limits]\nconcurency = 8\n", "concurency"),
        ('\n[output]\npath = "x.parquet"\nformat = 1\n', "[output] format"),
        ("\n[oops]\nx = 1\n", "oops"),
    ],
)
def test_malformed_job_file_exits_2_naming_the_key(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli, extra: str, named: str
) -> None:
    """An unknown key or section exits 2 with a message naming the job file and the key."""
    server = emulator()
    head = write_job(server.base_url).read_text()
    if extra.startswith("\n[limits]"):
        head = head.replace("[limits]\n", "[limits]\nconcurency = 8\n")
        extra = ""
    elif extra.startswith("\n[output]"):
        head = head.replace('[output]\npath = "out/{job}.parquet"\n', "")
    job = write_job(server.base_url, extra, header=head)
    result = cli("run", job)
    assert result.exit_code == 2
    assert str(job) in result.stderr
    assert named in result.stderr
    assert sum(server.emulator.requests_by_status.values()) == 0


def test_wrong_type_and_bad_toml_exit_2(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """A value of the wrong type names `[section] key`; a TOML syntax error names the file."""
    server = emulator()
    job = write_job(server.base_url)
    wrong = cli("run", job, "--set", "limits.concurrency=many")
    assert wrong.exit_code == 2
    assert "[limits] concurrency" in wrong.stderr
    job.write_text(job.read_text() + "\n[broken\n")
    broken = cli("run", job)
    assert broken.exit_code == 2
    assert f"{job}: not valid TOML" in broken.stderr


def test_missing_template_column_exits_2_before_any_request(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """A placeholder naming a column the input lacks exits 2, naming it and the columns there are."""
    server = emulator()
    job = write_job(server.base_url)
    result = cli("run", job, "--set", "prompt.template=Rate {review_body}")
    assert result.exit_code == 2
    assert "{review_body}" in result.stderr
    assert "title" in result.stderr
    assert sum(server.emulator.requests_by_status.values()) == 0


def test_limit_and_cli_paths_relative_to_the_working_directory(
    emulator: StartEmulator,
    write_job: WriteJob,
    reviews: Path,
    cli: Cli,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--input`/`--output` resolve against the working directory; `--limit N` keeps the first N rows."""
    server = emulator()
    job = write_job(server.base_url)
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    pl.read_parquet(SAMPLE_DATA / "reviews.parquet").write_csv(workdir / "prompts.csv")
    monkeypatch.chdir(workdir)
    result = cli("run", job, "--input", "prompts.csv", "--output", "result.parquet", "--limit", "7")
    assert result.exit_code == 0, result.stderr
    out = pl.read_parquet(workdir / "result.parquet")
    assert out["id"].to_list() == pl.read_csv(workdir / "prompts.csv")["id"].head(7).to_list()


def test_job_file_paths_are_relative_to_the_job_folder(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run from another directory (as cron does), the job still finds its input and writes beside itself."""
    server = emulator()
    job = write_job(server.base_url)
    monkeypatch.chdir("/")
    assert cli("run", job).exit_code == 0
    assert (job.parent / "out" / "test.parquet").is_file()


def test_openai_batch_lines_input(
    emulator: StartEmulator, write_job: WriteJob, batch_lines: Path, cli: Cli
) -> None:
    """OpenAI Batch API lines run as they are: custom_ids kept, in order, with method/url/body columns."""
    server = emulator()
    head = write_job(server.base_url).read_text()
    head = head.replace('path = "reviews.jsonl"\nid_column = "id"', 'path = "batch.jsonl"')
    head = head.split("[prompt]")[0] + "[provider]" + head.split("[provider]")[1]
    job = write_job(server.base_url, header=head)
    result = cli("run", job)
    assert result.exit_code == 0, result.stderr
    out = read_output(job)
    lines = [json.loads(line) for line in batch_lines.read_text().splitlines()]
    assert out["custom_id"].to_list() == [line["custom_id"] for line in lines]
    assert out.columns[:4] == ["custom_id", "method", "url", "body"]
    assert json.loads(out["body"][0]) == lines[0]["body"]
    assert out["status"].to_list() == ["ok"] * len(lines)


def test_rerun_resumes_and_sends_nothing_twice(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """A second run of a finished job sends no request and writes the same output; --fresh sends again."""
    server = emulator()
    job = write_job(server.base_url)
    assert cli("run", job).exit_code == 0
    first = read_output(job)
    again = cli("run", job)
    assert again.exit_code == 0
    assert "40 answered by an earlier run" in again.stdout
    assert server.emulator.requests_by_status[200] == 40
    assert read_output(job).equals(first)
    assert cli("run", job, "--fresh").exit_code == 0
    assert server.emulator.requests_by_status[200] == 80


def test_changed_prompt_resends_only_changed_rows(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """Editing some input rows resends exactly those rows; the rest keep their journaled answers."""
    server = emulator()
    job = write_job(server.base_url)
    assert cli("run", job).exit_code == 0
    frame = pl.read_ndjson(reviews)
    edited = frame.with_columns(
        pl.when(pl.int_range(pl.len()) < 5).then(pl.col("text") + " (edited)").otherwise("text").alias("text")
    )
    edited.write_ndjson(reviews)
    assert cli("run", job).exit_code == 0
    assert server.emulator.requests_by_status[200] == 45
    out = read_output(job)
    assert out["text"].to_list() == edited["text"].to_list()


def test_demo_job_runs_on_the_builtin_emulator(cli: Cli, tmp_path: Path) -> None:
    """jobs/demo.toml runs with no key and no network: 300 rows ok, summary printed."""
    output = tmp_path / "demo.parquet"
    result = cli("run", JOBS / "demo.toml", "--output", output)
    assert result.exit_code == 0, result.stderr
    assert pl.read_parquet(output).height == 300
    assert "300 ok, 0 failed" in result.stdout
    assert "cost:    $" in result.stdout
    assert not list(tmp_path.glob("*.tmp"))


def test_providers_lists_every_seed_preset(cli: Cli) -> None:
    """`batchrun providers` lists each seed provider with its endpoint and key variable."""
    result = cli("providers")
    assert result.exit_code == 0
    for name in (
        "maxtoken",
        "aimlapi",
        "siray",
        "dashscope-intl",
        "dashscope-cn",
        "dashscope-us",
        "emulator",
    ):
        assert name in result.stdout
    assert "https://api.maxtoken.io/v1" in result.stdout
    assert "DASHSCOPE_API_KEY" in result.stdout


def test_estimate_sends_nothing_and_bounds_the_real_run(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """`estimate` sends no request; its input tokens and cost bound the real run's; afterwards 0 to send."""
    server = emulator()
    job = write_job(server.base_url)
    before = cli("estimate", job, "--json")
    assert before.exit_code == 0, before.stderr
    guess = json.loads(before.stdout)
    assert sum(server.emulator.requests_by_status.values()) == 0
    assert (guess["rows"], guess["to_send"], guess["output_tokens"]) == (40, 40, 40 * 16)
    assert guess["output_tokens_is_upper_bound"] is True
    assert "qwen3-max" in guess["price_source"]

    assert cli("run", job).exit_code == 0
    out = read_output(job)
    real_prompt = out["prompt_tokens"].sum()
    assert real_prompt <= guess["input_tokens"] <= 1.5 * real_prompt
    assert out["cost_usd"].sum() <= guess["cost_usd"]
    after = json.loads(cli("estimate", job, "--json").stdout)
    assert (after["to_send"], after["answered_by_earlier_run"], after["cost_usd"]) == (0, 40, 0.0)


def test_run_json_summary_for_scripts(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """`run --json` prints a machine-readable summary with the counts a scheduler alerts on."""
    server = emulator()
    result = cli("run", write_job(server.base_url), "--json")
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert (summary["rows"], summary["ok"], summary["failed"]) == (40, 40, 0)
    assert summary["cost_usd"] > 0
    assert summary["requests_sent"] == 40


def test_every_kind_of_fault_is_retried_to_success(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """502, 503, 529, dropped connections and truncated bodies at random: every row still ends ok."""
    faults = {"rate_502": 0.05, "rate_503": 0.05, "rate_529": 0.05, "rate_drop": 0.05, "rate_truncate": 0.05}
    server = emulator(seed=3, **faults)
    job = write_job(server.base_url)
    result = cli("run", job, "--set", "limits.max_attempts=10")
    assert result.exit_code == 0, result.stderr
    out = read_output(job)
    assert out["status"].to_list() == ["ok"] * 40
    statuses = server.emulator.requests_by_status
    assert sum(statuses[s] for s in (502, 503, 529, 0, -1)) > 0  # faults were injected (0: drop, -1: cut)
    assert out["attempts"].sum() == sum(statuses.values())


def test_a_configured_rate_limit_under_the_providers_sees_no_429(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """Paced at 40 requests/s against a provider allowing 50/s, not one request is refused."""
    server = emulator(requests_per_minute=3000)
    job = write_job(server.base_url)
    result = cli("run", job, "--set", "limits.requests_per_minute=2400")
    assert result.exit_code == 0
    assert server.emulator.requests_by_status[429] == 0
    assert server.emulator.requests_by_status[200] == 40


def test_an_unknown_bare_429_limit_is_found_and_every_row_ends_ok(
    emulator: StartEmulator, write_job: WriteJob, reviews: Path, cli: Cli
) -> None:
    """Against a 50/s limit with bare 429s and no limit configured, the run adapts and every row ends ok."""
    server = emulator(requests_per_minute=3000, rate_limit_headers=False)
    job = write_job(server.base_url)
    result = cli("run", job, "--set", "limits.concurrency=32", "--set", "limits.max_attempts=20")
    assert result.exit_code == 0, result.stderr
    assert server.emulator.requests_by_status[200] == 40
