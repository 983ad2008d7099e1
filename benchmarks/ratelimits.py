"""Rate limits and faults: does batchrun run at the provider's limit, with few 429s and no lost rows?

Runs `batchrun run` end to end (CLI, real files) against the emulator in a separate process, one scenario
at a time, and prints for each: the achieved rate as a share of the emulator's limit, the share of
requests answered 429, attempts per row, and whether every row ended ok.

    python benchmarks/ratelimits.py            # all scenarios, about four minutes
    python benchmarks/ratelimits.py --quick    # a quarter of the rows, to try it out

Targets (issue 4): limit configured: >= 97% of the RPM and <= 1% 429s; limit unknown to batchrun: >= 90% of
the RPM within the first minute; 5% of replies failing at random: every row ends ok.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

RPM = 3000  # the emulator's limit: 50 requests/s, like a mid-sized DashScope quota
LATENCY_S = 0.05


@dataclass(frozen=True)
class Scenario:
    """One run: how the emulator behaves and what the job tells batchrun."""

    name: str
    rows: int
    emulator_args: list[str]
    job_limits: dict[str, object] = field(default_factory=dict)
    target: str = ""


SCENARIOS = [
    Scenario(
        "limit configured (headers)",
        1500,
        ["--rpm", str(RPM)],
        {"requests_per_minute": RPM, "concurrency": 64},
        ">= 97% of RPM, <= 1% 429s",
    ),
    Scenario(
        "limit configured, bare 429s",
        1500,
        ["--rpm", str(RPM), "--no-rate-limit-headers"],
        {"requests_per_minute": RPM, "concurrency": 64},
        ">= 97% of RPM, <= 1% 429s",
    ),
    Scenario(
        "limit unknown, bare 429s",
        RPM,
        ["--rpm", str(RPM), "--no-rate-limit-headers"],
        {"concurrency": 64},
        ">= 90% of RPM in the first minute",
    ),
    Scenario(
        "limit unknown, with headers",
        RPM,
        ["--rpm", str(RPM)],
        {"concurrency": 64},
        ">= 90% of RPM in the first minute",
    ),
    Scenario(
        "5% random failures, no limit",
        3000,
        [arg for fault in ("500", "502", "503", "drop", "truncate") for arg in (f"--rate-{fault}", "0.01")],
        {"concurrency": 64},
        "every row ok",
    ),
]


@contextlib.contextmanager
def emulator(args: list[str]) -> Iterator[str]:
    """Start `batchrun emulate` on a free port in its own process; yield its base URL."""
    command = [sys.executable, "-m", "batchrun", "emulate", "--port", "0", "--latency", str(LATENCY_S), *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"(http://\S+/v1)", line)
        if not match:
            raise RuntimeError(f"the emulator did not start: {line!r}")
        yield match.group(1)
    finally:
        process.terminate()
        process.wait(timeout=10)


def write_inputs(folder: Path, rows: int) -> Path:
    """A prompt set of `rows` short reviews."""
    path = folder / f"prompts-{rows}.jsonl"
    words = ["battery", "screen", "delivery", "price", "fit", "noise", "quality", "support"]
    pl.DataFrame(
        {
            "id": [f"r{i:07d}" for i in range(rows)],
            "text": [
                f"Review {i}: the {words[i % 8]} was {'great' if i % 3 else 'poor'}." for i in range(rows)
            ],
        }
    ).write_ndjson(path)
    return path


def run_scenario(scenario: Scenario, folder: Path) -> dict[str, object]:
    """Run one scenario; return its figures."""
    prompts = write_inputs(folder, scenario.rows)
    output = folder / f"{re.sub(r'[^a-z0-9]+', '-', scenario.name)}.parquet"
    with emulator(scenario.emulator_args) as base_url:
        limits = "\n".join(f"{key} = {json.dumps(value)}" for key, value in scenario.job_limits.items())
        job = folder / "job.toml"
        job.write_text(
            f'name = "bench"\n[input]\npath = "{prompts}"\nid_column = "id"\n'
            f'[prompt]\ntemplate = "{{text}}"\n'
            f'[provider]\nbase_url = "{base_url}"\nmodel = "qwen3-max"\n'
            f"[params]\nmax_tokens = 16\n"
            f"[limits]\nmax_attempts = 20\nbackoff_max_s = 5\n{limits}\n"
            f'[output]\npath = "{output}"\n'
        )
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "batchrun", "run", str(job), "--fresh", "--json"],
            capture_output=True,
            text=True,
            check=False,
        )
        wall_s = time.monotonic() - started
    if done.returncode not in (0, 1):
        raise RuntimeError(f"{scenario.name}: batchrun exited {done.returncode}: {done.stderr[-2000:]}")
    summary = json.loads(done.stdout)
    out = pl.read_parquet(output)
    attempts = int(out["attempts"].sum())
    ok = int((out["status"] == "ok").sum())
    rate = summary["rows"] / summary["wall_s"]
    return {
        "scenario": scenario.name,
        "rows": scenario.rows,
        "wall_s": round(wall_s, 1),
        "rows_per_s": round(rate, 1),
        "share_of_limit": f"{rate / (RPM / 60):.1%}" if "--rpm" in scenario.emulator_args else "-",
        # Every failed attempt in the limit scenarios is a 429: nothing else is injected there.
        "share_429": f"{(attempts - ok) / attempts:.2%}" if "--rpm" in scenario.emulator_args else "-",
        "attempts_per_row": round(attempts / scenario.rows, 3),
        "all_ok": ok == scenario.rows,
        "target": scenario.target,
    }


def main() -> None:
    """Run the scenarios and print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a quarter of the rows")
    args = parser.parse_args()
    print(f"# batchrun rate-limit benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; emulator limit {RPM} RPM, latency {LATENCY_S} s")  # fmt: skip
    columns = ["scenario", "rows", "wall_s", "rows_per_s", "share_of_limit", "share_429", "attempts_per_row",
               "all_ok", "target"]  # fmt: skip
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    with tempfile.TemporaryDirectory(prefix="batchrun-ratelimits-") as tmp:
        for full in SCENARIOS:
            scenario = Scenario(**{**full.__dict__, "rows": full.rows // 4}) if args.quick else full
            figures = run_scenario(scenario, Path(tmp))
            print("| " + " | ".join(str(figures[c]) for c in columns) + " |", flush=True)


if __name__ == "__main__":
    main()
