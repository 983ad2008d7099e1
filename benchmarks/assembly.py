"""Assembly benchmark: the output's assembly, resume's journal read and the summary over a synthesized run
folder of N rows, without sending a request. Is memory flat and time linear in the row count?

For each N this script writes a run folder as a run would leave it, through `RunStore` itself: the input
parts (an `id` and a 300-character `text` per row) and a journal of N answers, in the order a run with 64
requests in flight journals them (shuffled within windows of 64 rows), 1% of the rows first failing with a
retryable error answered later, completions of `--completion-bytes` on average (half to one and a half
times that), reasoning text in every 10th row. Then, each in a child process of its own:

- `assemble`: `RunStore.assemble()`, the output Parquet;
- `resume`: `finished_ids()` and `spent_usd()`, what a resumed run reads before sending;
- `summary`: `summarize()` of the output;
- `read`: the baseline, one read of the journal in 4 MB blocks counting its lines (the least any reader of
  the journal does), measured in the same run.

Each child prints its own VmHWM as it ends: `ru_maxrss` would not do, as a child started from this process
inherits its peak at `exec` (this process holds the synthesized data's libraries).

    python benchmarks/assembly.py                                # 1,000,000 and 10,000,000 rows
    python benchmarks/assembly.py --rows 100000 --completion-bytes 2048

Linux only (peaks come from `/proc`). Everything happens in a temporary folder, removed at the end unless
`--keep` is given; 10M rows need about 8 GB of disk at the default size.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024
PART_ROWS = 10_000  # rows handed to the store at a time
WINDOW = 64  # requests in flight: answers arrive shuffled within this many rows
STEPS = ("read", "assemble", "resume", "summary")
PEAK = """
with open("/proc/self/status", encoding="ascii") as status:
    print(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
"""

CHILD = {
    "read": """
import sys
lines = 0
with open(sys.argv[1] + ".run/results.jsonl", "rb") as f:
    while block := f.read(4 << 20):
        lines += block.count(b"\\n")
print(lines)
""",
    "assemble": """
import sys
from pathlib import Path
from batchrun.store.runstore import RunStore
store = RunStore(Path(sys.argv[1]))
store.assemble()
print(store.assembly.rows)
""",
    "resume": """
import sys
from pathlib import Path
from batchrun.store.runstore import RunStore
store = RunStore(Path(sys.argv[1]))
print(len(store.finished_ids()), store.spent_usd())
""",
    "summary": """
import sys
from pathlib import Path
from batchrun.report.summary import summarize
print(summarize(Path(sys.argv[1])).rows)
""",
}


@dataclass(frozen=True, slots=True)
class Step:
    """One measured child process."""

    name: str
    wall_s: float
    cpu_s: float
    peak_kib: int
    printed: str


def synthesize(output: Path, rows: int, completion_bytes: int, seed: int = 3) -> None:
    """Write the run folder of `output` as a run of `rows` rows would leave it (see the module's doc)."""
    import polars as pl

    from batchrun.records import Result
    from batchrun.store.runstore import RunStore

    rng = random.Random(seed)
    prose = " ".join(rng.choice(WORDS) for _ in range(200_000))
    store = RunStore(output)
    store.open(fresh=True)
    try:
        for start in range(0, rows, PART_ROWS):
            count = min(PART_ROWS, rows - start)
            ids = [f"{i:032x}" for i in range(start, start + count)]
            texts = [prose[(i * 7919) % 500_000 :][:300] for i in range(start, start + count)]
            frame = pl.DataFrame({"id": [f"r{i:09d}" for i in range(start, start + count)], "text": texts})
            store.write_input(frame.with_columns(pl.Series("custom_id", ids)))
            order = list(range(count))
            for window in range(0, count, WINDOW):
                chunk = order[window : window + WINDOW]
                rng.shuffle(chunk)
                order[window : window + WINDOW] = chunk
            results = []
            for k in order:
                custom_id = ids[k]
                if rng.random() < 0.01:
                    results.append(
                        Result(
                            custom_id, "error", attempts=6, error_type="rate_limited",
                            error="HTTP 429: Too many requests", http_status=429, retryable=True,
                        )
                    )  # fmt: skip
                size = rng.randint(completion_bytes // 2, completion_bytes * 3 // 2)
                at = rng.randrange(0, 1_000_000)
                reasoning = prose[at : at + size // 2] if k % 10 == 0 else None
                results.append(
                    Result(
                        custom_id, "ok", completion=prose[at : at + size], finish_reason="stop",
                        reasoning=reasoning, prompt_tokens=120, completion_tokens=size // 4,
                        cached_tokens=0, reasoning_tokens=len(reasoning or "") // 4,
                        total_tokens=120 + size // 4, cost_usd=0.000144 + size * 1.5e-6, model="qwen3-max",
                        response_id=f"chatcmpl-{custom_id[:24]}", latency_s=0.05 + k % 7 / 100, attempts=1,
                    )
                )  # fmt: skip
            store.write_results(results)
        store.flush_input()
    finally:
        store.close()


WORDS = (
    "the",
    "review",
    "says",
    "battery",
    "life",
    "is",
    "shorter",
    "than",
    "advertised",
    "but",
    "build",
    "quality",
    "solid",
    "zippers",
    "run",
    "smoothly",
    "delivery",
    "quick",
    "customer",
    "service",
    "answered",
    "within",
    "day",
    "manual",
    "useless",
    "color",
    "darker",
    "photos",
    "would",
    "buy",
    "again",
)


def measure(step: str, output: Path) -> Step:
    """Run one step in a child process; its wall time, CPU and peak RSS."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD[step] + PEAK, str(output)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _, status, rusage = os.wait4(proc.pid, 0)
    wall_s = time.monotonic() - started
    out, err = proc.communicate()
    printed, errors = out.decode().split(), err.decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{step} failed:\n{errors[-4000:]}")
    return Step(step, wall_s, rusage.ru_utime + rusage.ru_stime, int(printed[-1]), " ".join(printed[:-1]))


def say(message: str) -> None:
    """A progress line on stderr."""
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def machine() -> str:
    """One line about where this ran."""
    import duckdb
    import polars as pl

    cpus = len(os.sched_getaffinity(0))
    return (
        f"{dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; {platform.system()} {platform.machine()}, "
        f"nproc {cpus}; Python {platform.python_version()}, polars {pl.__version__}, "
        f"duckdb {duckdb.__version__}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Synthesize and measure each row count; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000], help="row counts")
    parser.add_argument("--completion-bytes", type=int, default=200, help="mean completion size (200)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--dir", type=Path, default=None, help="where to make the temporary folder")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="batchrun-assembly-", dir=args.dir))
    say(f"working in {root}")
    table: list[tuple[int, float, float, dict[str, Step]]] = []
    try:
        for rows in args.rows:
            output = root / f"rows-{rows}" / "out.parquet"
            started = time.monotonic()
            synthesize(output, rows, args.completion_bytes)
            journal_mib = (output.parent / "out.parquet.run" / "results.jsonl").stat().st_size / MIB
            took = time.monotonic() - started
            say(f"{rows:,} rows: synthesized in {took:,.0f} s, journal {journal_mib:,.0f} MiB")
            steps = {}
            for step in STEPS:
                done = steps[step] = measure(step, output)
                say(f"{rows:,} rows: {step} {done.wall_s:,.1f} s, {done.peak_kib / 1024:,.0f} MiB")
            table.append((rows, journal_mib, output.stat().st_size / MIB, steps))
            if not args.keep:
                shutil.rmtree(output.parent, ignore_errors=True)
    finally:
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(
        "| rows | journal MiB | output MiB | assemble s (s per 1M rows) | assemble peak MiB "
        "| resume read s / peak MiB | summary s / peak MiB | baseline: read the journal s / peak MiB |"
    )
    print("|" + "---:|" * 8)
    for rows, journal_mib, output_mib, steps in table:
        a, r, s, b = steps["assemble"], steps["resume"], steps["summary"], steps["read"]
        print(
            f"| {rows:,} | {journal_mib:,.0f} | {output_mib:,.0f} "
            f"| {a.wall_s:,.1f} ({a.wall_s / rows * 1e6:,.1f}) "
            f"| {a.peak_kib / 1024:,.0f} | {r.wall_s:,.1f} / {r.peak_kib / 1024:,.0f} "
            f"| {s.wall_s:,.1f} / {s.peak_kib / 1024:,.0f} | {b.wall_s:,.1f} / {b.peak_kib / 1024:,.0f} |"
        )
    low, high = args.completion_bytes // 2, args.completion_bytes * 3 // 2
    cpu = ", ".join(f"{t[3]['assemble'].cpu_s:,.0f}/{t[3]['resume'].cpu_s:,.0f}" for t in table)
    print(f"\ncompletions {low:,}-{high:,} bytes, reasoning in every 10th row, 1% of rows retried")
    print(f"CPU s assemble/resume: {cpu}")
    print(f"machine: {machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
