"""The Ray engine beside the local one: what it costs or gains in throughput, and whether one limit holds.

Two tables, every figure of a table measured in the same run:

1. Throughput: `batchrun run` against the lean local server (`fastserver.py`, its own process) at 0.2 s
   latency with 1,024 requests in flight, by the local engine and by the Ray engine with 2 workers (512 in
   flight each; the run starts its own local Ray). `steady` is the rate while the run is in full swing:
   the middle 60% of the answers (by the time each was journaled) over the time they took; `bound` is what
   no client can pass, 1,024 in flight over the mean latency the answers measured (the server's 0.2 s plus
   its own and the network's). `sending` is over the whole sending (the run's summary `wall_s`, less the
   Ray start-up the run logs: "Ray: N workers ready in S s"; Ray's shutdown included); `e2e s` is the
   whole command, start-up and the output's assembly included; CPU seconds per 1,000 rows are the
   command's own (the driver: for the local engine, everything), its Ray workers', and those of Ray's
   other processes (GCS, raylet, agents), start-up included; the server's are not counted.
2. One rate limit for the cluster: against the emulator (in this process) enforcing 3,000 requests a minute
   over a sliding one-second window (the strictest reading of DashScope's rule), bare 429s, 0.1 s latency,
   the limit configured in the job: the local engine, then Ray with 2 and 4 workers; then 3,000,000 tokens a
   minute with ~1,000-token prompts (the tokens binding), the same three. The share of the limit is
   the answers per whole second between the first and the last second with answers (start-up left out;
   for tokens, times the mean tokens an answer counted), over limit/60; 429s are the share of all requests
   refused.

    python benchmarks/rayengine.py            # both tables, about 5 minutes on 2 cores
    python benchmarks/rayengine.py --quick    # a fifth of the rows
    python benchmarks/rayengine.py --only limit

Needs Ray: pip install 'batchrun[ray]'.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import polars as pl  # noqa: E402
from ratelimits import PROMPT_WORDS_LONG, TPM, write_inputs  # noqa: E402
from run import child_env, machine, server, write_job, write_prompts  # noqa: E402

from batchrun.emulator import EmulatorConfig, EmulatorServer  # noqa: E402

LATENCY_S = 0.2
IN_FLIGHT = 1024
THROUGHPUT_ROWS = 100_000  # 20 s of sending: long enough for a steady state
STEADY = (0.2, 0.8)  # the share of the answers the steady rate is measured between
RPM = 3000
LIMIT_LATENCY_S = 0.1
LIMIT_ROWS = 1500
READY = re.compile(r"Ray: (\d+) workers ready in ([\d.]+) s")


class CpuWatch:
    """CPU seconds of a process and of every process descended from it (Ray's workers and daemons are the
    driver's descendants), by role, from /proc sampled every 0.2 s while the run lasts (Linux)."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[int, float, str]] = {}  # pid -> (parent, CPU s, command)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._tick = os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> CpuWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while True:
            for folder in Path("/proc").glob("[0-9]*"):
                try:
                    stat = (folder / "stat").read_text()
                    command = (folder / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                fields = stat.rsplit(")", 1)[1].split()
                cpu = (int(fields[11]) + int(fields[12])) / self._tick
                pid = int(folder.name)
                # A process on its way out has no command line left: keep the one it had.
                command = command or self.seen.get(pid, (0, 0.0, ""))[2]
                self.seen[pid] = (int(fields[1]), cpu, command)
            if self._stop.wait(0.2):
                return

    def roles(self, root: int) -> dict[str, float]:
        """CPU seconds of `root` (the driver), its Ray workers, and its other descendants (Ray's daemons)."""
        children: dict[int, list[int]] = {}
        for pid, (parent, _, _) in self.seen.items():
            children.setdefault(parent, []).append(pid)
        roles = {"driver": 0.0, "workers": 0.0, "Ray's daemons": 0.0}
        todo = [root]
        while todo:
            pid = todo.pop()
            todo += children.get(pid, [])
            _, cpu, command = self.seen.get(pid, (0, 0.0, ""))
            role = "driver" if pid == root else "workers" if "WorkerActor" in command else "Ray's daemons"
            roles[role] += cpu
        return roles


def run_batchrun(job: Path, engine: list[str]) -> tuple[dict[str, Any], float, dict[str, float], float]:
    """Run the job; return its summary, the whole command's seconds, its CPU seconds by role, and the Ray
    start-up it logged (0 for the local engine)."""
    started = time.perf_counter()
    with CpuWatch() as watch:
        process = subprocess.Popen(
            [sys.executable, "-m", "batchrun", "run", str(job), "--fresh", "--json", "--quiet", *engine],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env() | {"RAY_USAGE_STATS_ENABLED": "0"},
        )
        stdout, stderr = process.communicate()
    wall = time.perf_counter() - started
    if process.returncode not in (0, 1):
        raise RuntimeError(f"batchrun exited {process.returncode}: {stderr[-2000:]}")
    log = job.with_name("out.log")
    ready = [float(m.group(2)) for m in READY.finditer(log.read_text())] if log.exists() else []
    return json.loads(stdout), wall, watch.roles(process.pid), ready[-1] if ready else 0.0


def ray_flags(workers: int) -> list[str]:
    """The command-line flags that run a job on `workers` Ray workers."""
    return ["--set", 'engine.kind="ray"', "--set", f"engine.workers={workers}"]


def throughput(rows: int, root: Path) -> None:
    """Table 1: local vs Ray with 2 workers."""
    print(f"\n## Throughput: {rows:,} rows, {LATENCY_S} s latency, {IN_FLIGHT:,} in flight\n")
    columns = ["engine", "rows/s steady", "of the bound", "rows/s sending", "Ray start-up s", "e2e s",
               "CPU s / 1k rows: driver", "workers", "Ray's daemons"]  # fmt: skip
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns), flush=True)
    root.mkdir()
    prompts = root / "prompts.jsonl"
    write_prompts(prompts, rows)
    os.environ["BENCH_KEY"] = "not-a-secret-benchmark-key"
    with server(LATENCY_S) as base_url:
        for name, flags in (("local", []), ("ray, 2 workers", ray_flags(2))):
            folder = root / re.sub(r"[^a-z0-9]+", "-", name)
            folder.mkdir()
            job = write_job(folder, prompts, base_url, IN_FLIGHT)
            summary, wall, cpu, ready = run_batchrun(job, flags)
            if summary["ok"] != rows:
                raise RuntimeError(f"{name}: {summary['ok']} of {rows} rows ok")
            rate = rows / (summary["wall_s"] - ready)
            steady, bound = steady_rate(folder / "out.parquet.run" / "results.jsonl")
            per_1k = {role: f"{seconds / rows * 1000:.2f}" for role, seconds in cpu.items()}
            cells = [name, f"{steady:,.0f}", f"{steady / bound:.0%} of {bound:,.0f}", f"{rate:,.0f}",
                     f"{ready:.1f}" if ready else "-", f"{wall:.1f}", per_1k["driver"], per_1k["workers"],
                     per_1k["Ray's daemons"]]  # fmt: skip
            print("| " + " | ".join(cells) + " |", flush=True)


def steady_rate(journal: Path) -> tuple[float, float]:
    """The answers per second in the run's steady state (`STEADY`), and the bound: in flight / latency."""
    answers = pl.read_ndjson(journal).select("finished_at", "latency_s")
    times = answers.get_column("finished_at").sort()
    first, last = (int(share * (len(times) - 1)) for share in STEADY)
    steady = (last - first) / (times[last] - times[first])
    return steady, IN_FLIGHT / float(answers.get_column("latency_s").mean())  # type: ignore[arg-type]


def limit_share(rows: int, root: Path, engine: list[str], name: str, *, tokens: bool) -> list[str]:
    """One run against the sliding window (of requests, or of tokens with long prompts); its table row."""
    folder = root / re.sub(r"[^a-z0-9]+", "-", name.lower())
    folder.mkdir()
    prompts = folder / "prompts.jsonl"
    write_inputs(prompts, rows, PROMPT_WORDS_LONG if tokens else 0)
    limit = {"tokens_per_minute": TPM} if tokens else {"requests_per_minute": RPM}
    config = EmulatorConfig(
        latency_s=LIMIT_LATENCY_S, limit_window="sliding", rate_limit_headers=False, **limit
    )
    with EmulatorServer(config) as emulator_server:
        job = folder / "job.toml"
        ((key, value),) = limit.items()
        job.write_text(
            f'name = "bench"\n[input]\npath = "{prompts}"\nid_column = "id"\n'
            f'[prompt]\ntemplate = "{{text}}"\n'
            f'[provider]\nkind = "openai"\nbase_url = "{emulator_server.base_url}"\nmodel = "qwen3-max"\n'
            f"[params]\n{'' if tokens else 'max_tokens = 16'}\n[limits]\n{key} = {value}\n"
            f'[output]\npath = "{folder / "out.parquet"}"\n'
        )
        summary, _, _, _ = run_batchrun(job, engine)
        emulator = emulator_server.emulator
        statuses = Counter(emulator.requests_by_status)
        ok_by_second = {s: n for (s, status), n in emulator.timeline.items() if status == 200}
    seconds = range(min(ok_by_second) + 1, max(ok_by_second))  # whole seconds only
    per_s = sum(ok_by_second.get(s, 0) for s in seconds) / len(seconds) if seconds else 0.0
    if tokens:  # answers a second, times the tokens an answer counted against the limit
        per_s *= float(pl.read_parquet(folder / "out.parquet")["total_tokens"].mean() or 0)
    share = per_s / (value / 60)
    refused = statuses[429] / max(1, sum(statuses.values()))
    met = share >= 0.95 and refused <= 0.01 and summary["ok"] == rows
    return [name, "TPM" if tokens else "RPM", f"{rows:,}", f"{share:.1%}", f"{refused:.2%}",
            f"{summary['ok']:,}", ">= 95%, <= 1% 429s", "yes" if met else "NO"]  # fmt: skip


def limits(rows: int, root: Path) -> None:
    """Table 2: one sliding-window limit, the local engine and Ray with 2 and 4 workers."""
    print(
        f"\n## One limit over a sliding 1 s window: {RPM:,} RPM, or {TPM:,} TPM with ~1,000-token prompts; "
        f"bare 429s, {LIMIT_LATENCY_S} s latency\n"
    )
    columns = ["engine", "limit", "rows", "share of the limit", "429s", "rows ok", "target", "met"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns), flush=True)
    root.mkdir()
    engines = (("local", []), ("ray, 2 workers", ray_flags(2)), ("ray, 4 workers", ray_flags(4)))
    for tokens in (False, True):
        for name, flags in engines:
            row = limit_share(rows, root, flags, f"{name} {'TPM' if tokens else 'RPM'}", tokens=tokens)
            row[0] = name
            print("| " + " | ".join(row) + " |", flush=True)


def main() -> None:
    """Run the chosen tables."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a fifth of the rows")
    parser.add_argument("--only", choices=["throughput", "limit"], help="one table")
    parser.add_argument("--rows", type=int, default=THROUGHPUT_ROWS, help="rows of the throughput table")
    args = parser.parse_args()
    try:
        import ray  # noqa: F401
    except ImportError:
        sys.exit("benchmarks/rayengine.py needs Ray: pip install 'batchrun[ray]'")
    print(f"# batchrun: the Ray engine beside the local one, {machine()}")
    scale = 5 if args.quick else 1
    with tempfile.TemporaryDirectory(prefix="batchrun-ray-bench-") as tmp:
        if args.only in (None, "throughput"):
            throughput(args.rows // scale, Path(tmp) / "throughput")
        if args.only in (None, "limit"):
            limits(LIMIT_ROWS // scale, Path(tmp) / "limits")


if __name__ == "__main__":
    main()
