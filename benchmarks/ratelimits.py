"""Rate limits as providers enforce them: does batchrun run at the limit, with few 429s and no lost rows?

Runs `batchrun run` end to end (CLI, real files, the job's defaults but for the limits named) against the
emulator, which enforces its RPM/TPM limit one of four ways (`--limit-window`): a token bucket holding a
second's worth, a sliding one-second window of limit/60 (the strictest reading of DashScope's rule), a fixed
window per clock second, and a fixed clock minute of the whole limit (OpenAI-style). Every window is run
with the rate configured in the job and unknown to it, each with and without rate-limit headers; then a
rate configured 25% above the real limit, tokens per minute as the binding limit (long prompts), and 5% of
replies failing at random.

    python benchmarks/ratelimits.py                 # everything, about 20 minutes
    python benchmarks/ratelimits.py --quick         # fewer rows (the minute windows still take minutes)
    python benchmarks/ratelimits.py --only sliding  # scenarios whose name holds the word

Figures: the achieved rate as a share of the limit (configured: rows over the run's sending time; unknown:
answers in the whole seconds after the first 30 s, or with a minute window, per whole clock minute), the
share of requests answered 429, attempts per row, and whether every row ended ok. The emulator runs in this
process (a thread), batchrun in its own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import polars as pl

from batchrun.emulator import EmulatorConfig, EmulatorServer

LATENCY_S = 0.1
RPM = 3000  # per-second windows: 50 requests a second, a mid-sized DashScope quota
MINUTE_RPM = 1200  # a minute window needs runs of a few minutes to say anything: a slower limit
TPM = 3_000_000  # the tokens scenario: ~1,000-token prompts, so ~50 requests a second
PROMPT_WORDS_LONG = 550
AFTER_S = 30.0  # the unknown-limit target counts from here


@dataclass(frozen=True)
class Scenario:
    """One run: how the emulator enforces its limit, what the job tells batchrun, and the target."""

    name: str
    rows: int
    emulator: dict[str, Any]
    limits: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=lambda: {"max_tokens": 16})
    prompt_words: int = 0  # 0: a short review; else a long prompt of about this many words
    min_share: float | None = None  # of the limit
    max_429: float | None = None  # share of requests
    max_attempts_per_row: float | None = None
    unknown: bool = False  # the share counts after the first AFTER_S seconds
    by_tokens: bool = False  # the share is of the TPM limit


def scenarios() -> list[Scenario]:
    """Every window x {configured, unknown} x {headers, bare 429s}, then the special cases."""
    out: list[Scenario] = []
    for window in ("bucket", "sliding", "second", "minute"):
        rpm = MINUTE_RPM if window == "minute" else RPM
        for headers in (True, False):
            emulator = {"requests_per_minute": rpm, "limit_window": window, "rate_limit_headers": headers}
            label = f"{window}, {'headers' if headers else 'bare 429s'}"
            out.append(
                Scenario(f"{label}, rate configured", 1500, emulator, {"requests_per_minute": rpm},
                         min_share=0.97, max_429=0.01)
            )  # fmt: skip
            # Unknown: long enough that a 30 s learning phase leaves half a minute to measure, and for a
            # minute window, that whole clock minutes lie inside the run.
            rows = 3 * rpm if window == "minute" else rpm
            out.append(
                Scenario(f"{label}, rate unknown", rows, emulator, min_share=0.90, max_attempts_per_row=1.1,
                         unknown=True)
            )  # fmt: skip
    sliding = {"requests_per_minute": RPM, "limit_window": "sliding", "rate_limit_headers": False}
    out.append(
        Scenario("sliding, bare 429s, rate configured 25% above the limit", 1500, sliding,
                 {"requests_per_minute": RPM * 1.25}, min_share=0.90, max_429=0.03)
    )  # fmt: skip
    out.append(
        Scenario("sliding, bare 429s, tokens per minute binding (long prompts)", 1500,
                 {"tokens_per_minute": TPM, "limit_window": "sliding", "rate_limit_headers": False},
                 {"tokens_per_minute": TPM}, params={}, prompt_words=PROMPT_WORDS_LONG,
                 min_share=0.95, max_429=0.01, by_tokens=True)
    )  # fmt: skip
    faults = {f"rate_{fault}": 0.01 for fault in ("500", "502", "503", "drop", "truncate")}
    out.append(Scenario("5% random failures, no limit", 3000, faults))
    return out


def write_inputs(path: Path, rows: int, words: int) -> None:
    """`rows` prompts: short reviews, or long documents of about `words` words."""
    vocab = ["battery", "screen", "delivery", "price", "fit", "noise", "quality", "support"]
    if words:
        texts = [" ".join(vocab[(i + k) % 8] for k in range(words)) + f" #{i}" for i in range(rows)]
    else:
        texts = [f"Review {i}: the {vocab[i % 8]} was {'great' if i % 3 else 'poor'}." for i in range(rows)]
    pl.DataFrame({"id": [f"r{i:07d}" for i in range(rows)], "text": texts}).write_ndjson(path)


def toml_table(values: dict[str, Any]) -> str:
    """TOML lines for a flat table."""
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())


def run_scenario(scenario: Scenario, folder: Path) -> dict[str, str]:
    """Run one scenario; return its table row."""
    slug = re.sub(r"[^a-z0-9]+", "-", scenario.name.lower())
    prompts = folder / f"{slug}.jsonl"
    write_inputs(prompts, scenario.rows, scenario.prompt_words)
    output = folder / f"{slug}.parquet"
    config = EmulatorConfig(latency_s=LATENCY_S, **scenario.emulator)
    with EmulatorServer(config) as server:
        job = folder / f"{slug}.toml"
        job.write_text(
            f'name = "bench"\n[input]\npath = "{prompts}"\nid_column = "id"\n'
            f'[prompt]\ntemplate = "{{text}}"\n'
            f'[provider]\nkind = "openai"\nbase_url = "{server.base_url}"\nmodel = "qwen3-max"\n'
            f"[params]\n{toml_table(scenario.params)}"
            f"[limits]\n{toml_table(scenario.limits)}"
            f'[output]\npath = "{output}"\n'
        )
        done = subprocess.run(
            [sys.executable, "-m", "batchrun", "run", str(job), "--fresh", "--json", "--quiet"],
            capture_output=True,
            text=True,
            check=False,
        )
        emulator = server.emulator
        timeline = Counter(emulator.timeline)
        statuses = Counter(emulator.requests_by_status)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"{scenario.name}: batchrun exited {done.returncode}: {done.stderr[-2000:]}")
    summary = json.loads(done.stdout)
    out = pl.read_parquet(output)
    ok = int((out["status"] == "ok").sum())
    attempts = int(out["attempts"].sum())
    share = achieved_share(scenario, summary, out, timeline)
    refused = statuses[429] / max(1, sum(statuses.values()))
    per_row = attempts / scenario.rows
    met = [
        scenario.min_share is None or (share is not None and share >= scenario.min_share),
        scenario.max_429 is None or refused <= scenario.max_429,
        scenario.max_attempts_per_row is None or per_row <= scenario.max_attempts_per_row,
        ok == scenario.rows,
    ]
    return {
        "scenario": scenario.name,
        "rows": f"{scenario.rows:,}",
        "wall s": f"{summary['wall_s']:.0f}",
        "share of limit": "-" if share is None else f"{share:.1%}",
        "429s": f"{refused:.2%}",
        "attempts/row": f"{per_row:.3f}",
        "all ok": "yes" if ok == scenario.rows else f"no ({scenario.rows - ok} failed)",
        "target": target_text(scenario),
        "met": "yes" if all(met) else "NO",
    }


def achieved_share(
    scenario: Scenario, summary: dict[str, Any], out: pl.DataFrame, timeline: Counter[tuple[int, int]]
) -> float | None:
    """The achieved rate as a share of the limit (see the module docstring); None when not measurable."""
    emulator = scenario.emulator
    if scenario.by_tokens:
        tokens = int(out.filter(pl.col("status") == "ok")["total_tokens"].sum())
        return tokens / summary["wall_s"] / (emulator["tokens_per_minute"] / 60)
    rpm = emulator.get("requests_per_minute")
    if rpm is None:
        return None
    if not scenario.unknown:
        return summary["rows"] / summary["wall_s"] / (rpm / 60)
    ok_by_second = {second: n for (second, status), n in timeline.items() if status == 200}
    if not ok_by_second:
        return 0.0
    first, last = min(ok_by_second), max(ok_by_second)
    if emulator.get("limit_window") == "minute":
        # Only whole clock minutes inside the run: the emulator's minutes turn on the same clock.
        minutes = range(first // 60 + 1, last // 60)
        if not minutes:
            return None
        answered = sum(n for second, n in ok_by_second.items() if second // 60 in minutes)
        return answered / len(minutes) / rpm
    seconds = range(first + int(AFTER_S), last)  # whole seconds only: the last one is cut short
    if not seconds:
        return None
    return sum(ok_by_second.get(s, 0) for s in seconds) / len(seconds) / (rpm / 60)


def target_text(scenario: Scenario) -> str:
    """The scenario's target as the table prints it."""
    parts = []
    if scenario.min_share is not None:
        after = " after 30 s" if scenario.unknown else ""
        parts.append(f">= {scenario.min_share:.0%} of the {'TPM' if scenario.by_tokens else 'limit'}{after}")
    if scenario.max_429 is not None:
        parts.append(f"<= {scenario.max_429:.0%} 429s")
    if scenario.max_attempts_per_row is not None:
        parts.append(f"<= {scenario.max_attempts_per_row} requests/row")
    parts.append("every row ok")
    return ", ".join(parts)


def main() -> None:
    """Run the scenarios and print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a third of the rows")
    parser.add_argument("--only", action="append", default=[], help="run scenarios whose name holds this")
    args = parser.parse_args()
    chosen = [s for s in scenarios() if all(word in s.name for word in args.only)]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"# batchrun rate-limit benchmark, {when}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; emulator latency {LATENCY_S} s, "
          f"limits {RPM} RPM ({MINUTE_RPM} for minute windows), {TPM:,} TPM; "
          f"job defaults otherwise")  # fmt: skip
    columns = [
        "scenario",
        "rows",
        "wall s",
        "share of limit",
        "429s",
        "attempts/row",
        "all ok",
        "target",
        "met",
    ]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns), flush=True)
    with tempfile.TemporaryDirectory(prefix="batchrun-ratelimits-") as tmp:
        for full in chosen:
            scenario = replace(full, rows=full.rows // 3) if args.quick else full
            row = run_scenario(scenario, Path(tmp))
            print("| " + " | ".join(row[c] for c in columns) + " |", flush=True)


if __name__ == "__main__":
    main()
