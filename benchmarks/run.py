"""The performance suite: is batchrun or the provider the bottleneck? Measured side by side, in one run.

For each scenario this starts the lean local server (`fastserver.py`, so the server is not what is measured),
writes a prompt set, then runs

- batchrun end to end: `python -m batchrun run JOB --json` (CLI, real files in and out), and
- where the scenario compares with them, the baselines (`baseline.py`): a bare aiohttp loop sending the
  same requests (the issue's baseline), and a bare loop over batchrun's own HTTP client
  (`batchrun.net.http1`),

each as its own process, reaped with `os.wait4` for its CPU time and peak RSS. It prints one table:

- rows/s: batchrun's rate over its run as its summary reports it (`wall_s`: from opening the journal to
  the last answer journaled: reading, rendering, sending, journaling); a baseline's over its sending alone.
  `e2e s` is batchrun's whole process: interpreter start-up and the output's assembly included.
- CPU s / 1k rows: user + system CPU of the client process per 1,000 rows.
- peak RSS: the client process's high-water mark.
- ratio: batchrun's rows/s over the ideal (in flight / latency) when there is one, and over each baseline's.

    python benchmarks/run.py                  # every scenario, about 6 minutes on 2 cores
    python benchmarks/run.py --quick          # a tenth of the rows, and no million-row run
    python benchmarks/run.py --only instant   # scenarios whose name contains "instant"

Targets (issue 7): instant replies at 64 in flight >= 50% of the baseline; 0.2 s latency at 256 in flight
>= 95% of the ideal 1,280 rows/s; at 1,024 in flight >= 90% of the ideal 5,120 rows/s; 1,000,000 rows finish
with peak RSS < 1 GiB and within 20% of the 100,000-row run's; `batchrun --help` < 0.3 s.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASELINE_CLIENTS = ("aiohttp", "http1")  # the baseline, and batchrun's own HTTP client bare
WORDS = ["battery", "screen", "delivery", "price", "fit", "noise", "quality", "support", "sound", "strap"]


@dataclass(frozen=True)
class Scenario:
    """One measurement: rows through the server at a given latency and concurrency."""

    name: str
    rows: int
    concurrency: int
    latency_s: float
    baseline: bool  # also run the bare loops
    target: str


SCENARIOS = [
    Scenario("instant, 64 in flight", 20_000, 64, 0.0, True, ">= 50% of baseline"),
    Scenario("0.2 s latency, 256 in flight", 8_000, 256, 0.2, True, ">= 95% of ideal"),
    Scenario("0.2 s latency, 1,024 in flight", 20_000, 1024, 0.2, True, ">= 90% of ideal"),
    Scenario("instant, 100,000 rows", 100_000, 256, 0.0, False, "memory: the reference"),
    Scenario("instant, 1,000,000 rows", 1_000_000, 256, 0.0, False, "RSS < 1 GiB, within 20% of 100k"),
]


@dataclass
class Measured:
    """What one client process did."""

    wall_s: float  # the process, start to exit
    cpu_s: float
    peak_rss_mib: float
    stdout: str
    returncode: int


def measure(command: list[str]) -> Measured:
    """Run `command`, wait for it with `os.wait4`, and return its wall time, CPU time and peak RSS."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.DEVNULL, env=child_env())
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        wall_s = time.perf_counter() - started
        out.seek(0)
        stdout = out.read().decode()
    return Measured(
        wall_s, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, stdout, process.returncode
    )


def child_env() -> dict[str, str]:
    """The environment without proxy settings: every request stays on 127.0.0.1."""
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


@contextlib.contextmanager
def server(latency_s: float) -> Iterator[str]:
    """Start the lean server in its own process; yield its base URL."""
    command = [sys.executable, str(HERE / "fastserver.py"), "--port", "0", "--latency", str(latency_s)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=child_env())
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"(http://\S+/v1)", line)
        if not match:
            raise RuntimeError(f"the benchmark server did not start: {line!r}")
        yield match.group(1)
    finally:
        process.terminate()
        process.wait(timeout=10)


def write_prompts(path: Path, rows: int) -> None:
    """`rows` short review-like prompts with an id, as JSONL, written in chunks (a million rows is fine)."""
    with path.open("w", encoding="utf-8") as out:
        for start in range(0, rows, 10_000):
            out.writelines(
                json.dumps(
                    {
                        "id": f"r{i:07d}",
                        "text": f"Review {i}: the {WORDS[i % 10]} was {'great' if i % 3 else 'poor'}, "
                        f"and the {WORDS[(i * 7) % 10]} {'could be better' if i % 5 else 'was fine'}.",
                    }
                )
                + "\n"
                for i in range(start, min(rows, start + 10_000))
            )


def write_job(folder: Path, prompts: Path, base_url: str, concurrency: int) -> Path:
    """A job sending every prompt to the server, limited by concurrency alone."""
    job = folder / "job.toml"
    job.write_text(
        f'name = "bench"\n'
        f'[input]\npath = "{prompts}"\nid_column = "id"\n'
        f'[prompt]\ntemplate = "Label the sentiment of this review: {{text}}"\n'
        f'[provider]\nkind = "openai"\nbase_url = "{base_url}"\napi_key_env = "BENCH_KEY"\n'
        f'model = "qwen3-max"\n'
        f"[params]\nmax_tokens = 4\n"
        # The defaults a user gets (adaptive on, no rate configured): only the concurrency is set, as the
        # baseline's.
        f"[limits]\nconcurrency = {concurrency}\n"
        f'[output]\npath = "{folder / "out.parquet"}"\n'
    )
    return job


def run_scenario(scenario: Scenario, root: Path) -> dict[str, str]:
    """Run one scenario; return its table row."""
    folder = root / re.sub(r"[^a-z0-9]+", "-", scenario.name)
    folder.mkdir()
    prompts = folder / "prompts.jsonl"
    write_prompts(prompts, scenario.rows)
    with server(scenario.latency_s) as base_url:
        baselines: dict[str, Measured] = {}
        for client in BASELINE_CLIENTS if scenario.baseline else ():
            baselines[client] = measure(
                [sys.executable, str(HERE / "baseline.py"), "--url", base_url, "--input", str(prompts),
                 "--concurrency", str(scenario.concurrency), "--client", client]
            )  # fmt: skip
        job = write_job(folder, prompts, base_url, scenario.concurrency)
        os.environ["BENCH_KEY"] = "not-a-secret-benchmark-key"
        run = measure([sys.executable, "-m", "batchrun", "run", str(job), "--fresh", "--json"])
    if run.returncode != 0:
        raise RuntimeError(f"{scenario.name}: batchrun exited {run.returncode}: {run.stdout[-2000:]}")
    summary = json.loads(run.stdout)
    if summary["ok"] != scenario.rows:
        raise RuntimeError(f"{scenario.name}: {summary['ok']} of {scenario.rows} rows ok")
    rate = scenario.rows / summary["wall_s"]
    row = {
        "scenario": scenario.name,
        "rows": f"{scenario.rows:,}",
        "batchrun rows/s": f"{rate:,.0f}",
        "e2e s": f"{run.wall_s:.1f}",
        "CPU s/1k rows": f"{run.cpu_s / scenario.rows * 1000:.2f}",
        "peak RSS MiB": f"{run.peak_rss_mib:,.0f}",
        "target": scenario.target,
    }
    ratios: list[str] = []
    if scenario.latency_s > 0:
        ideal = scenario.concurrency / scenario.latency_s
        ratios.append(f"{rate / ideal:.0%} of ideal {ideal:,.0f}")
    for client, baseline in baselines.items():
        figures = json.loads(baseline.stdout)
        if figures["ok"] != scenario.rows:
            raise RuntimeError(
                f"{scenario.name}: bare {client} got {figures['ok']} of {scenario.rows} rows ok"
            )
        base_rate = scenario.rows / figures["wall_s"]
        cpu = baseline.cpu_s / scenario.rows * 1000
        row[f"bare {client} rows/s"] = f"{base_rate:,.0f} ({cpu:.2f} CPU s/1k)"
        ratios.append(f"{rate / base_rate:.0%} of bare {client}")
    row["ratio"] = "; ".join(ratios) or "-"
    return row


def help_time() -> dict[str, str]:
    """`batchrun --help`: the best of five wall times (start-up cost is what a user feels on every call)."""
    walls = [measure([sys.executable, "-m", "batchrun", "--help"]).wall_s for _ in range(5)]
    return {"scenario": "`batchrun --help`", "e2e s": f"{min(walls):.2f}", "target": "< 0.3 s"}


def machine() -> str:
    """Where and when the figures were taken."""
    import polars

    cores = os.cpu_count()
    return (
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; {platform.system()} {platform.machine()}, "
        f"{cores} cores; "
        f"Python {platform.python_version()}, polars {polars.__version__}"
    )


def main() -> None:
    """Run the chosen scenarios and print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a tenth of the rows; skip the million-row run")
    parser.add_argument("--only", default="", help="run only scenarios whose name contains this text")
    args = parser.parse_args()
    columns = ["scenario", "rows", "batchrun rows/s", "e2e s", "CPU s/1k rows", "peak RSS MiB",
               "bare aiohttp rows/s", "bare http1 rows/s", "ratio", "target"]  # fmt: skip
    print(f"# batchrun benchmarks, {machine()}")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    with tempfile.TemporaryDirectory(prefix="batchrun-bench-") as tmp:
        for full in SCENARIOS:
            if args.only not in full.name or (args.quick and full.rows >= 1_000_000):
                continue
            scenario = Scenario(**{**full.__dict__, "rows": full.rows // 10}) if args.quick else full
            row = run_scenario(scenario, Path(tmp))
            print("| " + " | ".join(row.get(c, "-") for c in columns) + " |", flush=True)
    if args.only in "`batchrun --help`":
        row = help_time()
        print("| " + " | ".join(row.get(c, "-") for c in columns) + " |", flush=True)


if __name__ == "__main__":
    main()
