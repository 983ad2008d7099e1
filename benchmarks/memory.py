"""Memory benchmark: does a big prompt set run to the end in flat, bounded memory?

For each row count N this script

1. writes a prompt set of N short review-like texts (100-600 characters, with an `id`) as JSONL,
2. starts `python -m batchrun emulate` (latency 0) as a separate process on a free loopback port,
3. runs `python -m batchrun run JOB --json` against it as a subprocess while polling the child's
   `/proc/<pid>/status` (VmRSS, VmHWM) and counting lines of its journal (`OUT.parquet.run/results.jsonl`)
   every 0.2 s, then reaps it with `os.wait4` for its own `ru_maxrss`,
4. checks the output Parquet (N rows, every status `ok`),

and prints one table line per N: wall time, rows/s, peak RSS, RSS at 25/50/75 % of the rows journaled,
and the peak of the tail after the last row was journaled (closing the journal, assembling the output,
the summary). The ratio of the largest run's peak to the smallest one's says whether memory grows with
the row count.

    python benchmarks/memory.py                       # 100,000 and 1,000,000 rows
    python benchmarks/memory.py --rows 10000          # a quick check
    python benchmarks/memory.py --concurrency 64 --keep

Linux only (it reads `/proc`). Everything happens in a temporary folder, removed at the end unless
`--keep` is given. Proxy variables are dropped from the children's environment: traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

POLL_S = 0.2  # how often the child's memory and the journal are sampled
CHUNK_ROWS = 50_000  # rows generated and written at a time
EMULATOR_START_S = 30.0  # how long the emulator may take to print its address
MIB = 1024  # /proc and ru_maxrss speak KiB
FRACTIONS = (0.25, 0.50, 0.75)
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
SERVING = re.compile(r"serving at (http://\S+/v1)")

# A small grammar of product reviews: an opener, a few remarks, a closer.
PRODUCTS = (
    "Fieldday Rolltop backpack",
    "Summit Pro office chair",
    "Kitchenaid hand mixer",
    "Northwind rain jacket",
    "Lumo desk lamp",
    "Aero 2 running shoes",
    "Brewmaster drip coffee maker",
    "Quietline noise-cancelling headphones",
    "Trailhead 2-person tent",
    "Pixel Slate tablet case",
)
WHO = ("partner", "son", "daughter", "home office", "commute", "camping trips", "mother", "team")
OPENERS = (
    "Bought the {p} for my {w}.",
    "Ordered the {p} after reading a few reviews.",
    "I have used the {p} every day for {n} weeks now.",
    "Got the {p} on sale and had low expectations.",
    "Second {p} I have owned; the first lasted {n} years.",
    "Replaced my old one with the {p} last month.",
)
REMARKS = (
    "The build quality is solid and nothing rattles.",
    "Setup took about ten minutes with the included instructions.",
    "It arrived with a scratch on the side, which was disappointing.",
    "Customer service answered within a day and sent a replacement part.",
    "Battery life is noticeably shorter than advertised.",
    "The color is a bit darker than in the photos, but I like it.",
    "Zippers are chunky and run smoothly.",
    "After two weeks the stitching on one seam started to come loose.",
    "It is lighter than I expected, which makes it easy to carry around.",
    "The manual is useless, so I watched a video instead.",
    "Cleaning it is a pain because of all the small corners.",
    "For the price, I honestly did not expect this level of finish.",
    "It makes a faint buzzing noise on the highest setting.",
    "The packaging was excessive: three boxes for one small item.",
    "My {w} uses it more than I do at this point.",
    "Compared with the previous model, the controls are much clearer.",
    "It wobbles slightly on uneven floors.",
    "The fabric breathes well even on hot days.",
    "Delivery was quick, no complaints there.",
    "I had to return the first one because a button did not work.",
)
CLOSERS = (
    "Would buy again.",
    "Returning it.",
    "Four stars because shipping took forever.",
    "Recommended, with the caveats above.",
    "Not worth the money in my opinion.",
    "Overall a solid purchase.",
    "Mixed feelings, but I am keeping it.",
)


@dataclass(slots=True)
class Sample:
    """One look at the running batchrun process."""

    t: float  # seconds since the run started
    rows_done: int  # lines in the journal
    rss_kib: int
    hwm_kib: int


@dataclass(slots=True)
class RunResult:
    """What one run of N rows measured."""

    rows: int
    exit_code: int
    wall_s: float
    peak_kib: int  # the larger of the last VmHWM seen and ru_maxrss
    hwm_kib: int  # the last VmHWM read from /proc
    maxrss_kib: int  # ru_maxrss from os.wait4
    cpu_s: float
    rss_at: dict[float, int | None]  # VmRSS when the journal first held that share of the rows
    send_peak_kib: int  # VmHWM when the journal was last seen incomplete
    tail_peak_kib: int  # the largest VmRSS sampled once the journal was complete
    tail_s: float | None  # seconds from a complete journal to exit
    emulator_hwm_kib: int
    out_rows: int
    out_ok: int
    journal_mib: float
    output_mib: float
    summary: dict[str, Any] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)

    @property
    def output_ok(self) -> bool:
        """True when the output has every row and every row is ok."""
        return self.exit_code == 0 and self.out_rows == self.rows and self.out_ok == self.rows


# -- the prompt set ----------------------------------------------------------------------------------


def review(rng: random.Random) -> str:
    """One review of 100 to 600 characters."""
    product, who = rng.choice(PRODUCTS), rng.choice(WHO)
    target = rng.randint(100, 600)
    closer = rng.choice(CLOSERS)
    parts = [rng.choice(OPENERS).format(p=product, w=who, n=rng.randint(2, 9))]
    length = len(parts[0]) + 1 + len(closer)
    while True:
        remark = rng.choice(REMARKS).format(w=who)
        if length + 1 + len(remark) > 600 or (length >= target and len(parts) > 1):
            break
        parts.append(remark)
        length += 1 + len(remark)
    parts.append(closer)
    return " ".join(parts)


def write_prompts(path: Path, rows: int, seed: int = 7) -> None:
    """Write `rows` reviews as JSONL (`id`, `stars`, `text`), a chunk at a time."""
    rng = random.Random(seed)
    dumps = json.JSONEncoder(ensure_ascii=False).encode
    with path.open("w", encoding="utf-8") as f:
        for start in range(0, rows, CHUNK_ROWS):
            lines = [
                dumps({"id": f"r{i:08d}", "stars": rng.randint(1, 5), "text": review(rng)})
                for i in range(start, min(rows, start + CHUNK_ROWS))
            ]
            f.write("\n".join(lines) + "\n")


def write_job(path: Path, prompts: Path, output: Path, base_url: str, concurrency: int) -> None:
    """A job over the `text` column against the emulator (JSON strings are valid TOML basic strings)."""
    template = "Review: {text}\nAnswer with one word: positive, negative or mixed."
    path.write_text(
        f"""name = "memory-bench"

[input]
path = {json.dumps(str(prompts))}
id_column = "id"

[prompt]
system = "You label the sentiment of product reviews."
template = {json.dumps(template)}

[provider]
kind = "openai"
base_url = {json.dumps(base_url)}
model = "qwen3-max"

[params]
temperature = 0
max_tokens = 16

[limits]
concurrency = {concurrency}

[output]
path = {json.dumps(str(output))}
""",
        encoding="utf-8",
    )


# -- processes ---------------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """The environment for the children: ours without proxies, so loopback traffic goes direct."""
    return {k: v for k, v in os.environ.items() if k not in PROXY_VARS}


def proc_memory(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) in KiB from `/proc/<pid>/status`; None once the process is gone or a zombie."""
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    values[key] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        return None
    if "VmRSS" not in values or "VmHWM" not in values:
        return None
    return values["VmRSS"], values["VmHWM"]


def stop(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """Terminate `proc` if it still runs, wait for it, kill it if it will not go."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def emulator(folder: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run `python -m batchrun emulate --port 0` (latency 0); yield its base URL and process.

    The address comes from the line the emulator prints; the process is stopped on the way out, error or
    Ctrl+C included.
    """
    log = folder / "emulator.log"
    cmd = [sys.executable, "-m", "batchrun", "emulate", "--host", "127.0.0.1", "--port", "0"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*cmd, "--latency", "0"], stdout=out, stderr=subprocess.STDOUT, env=child_env(), cwd=folder
        )
    try:
        deadline = time.monotonic() + EMULATOR_START_S
        while True:
            match = SERVING.search(log.read_text(encoding="utf-8", errors="replace"))
            if match:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                text = log.read_text(encoding="utf-8", errors="replace")
                raise RuntimeError(f"the emulator did not start (exit {proc.poll()}):\n{text}")
            time.sleep(0.05)
        yield match.group(1), proc
    finally:
        stop(proc)


class JournalCounter:
    """Counts the journal's lines incrementally: only the bytes appended since the last look are read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.lines = 0

    def poll(self) -> int:
        """The number of complete lines now in the journal."""
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                while block := f.read(1 << 20):
                    self.lines += block.count(b"\n")
                    self.offset += len(block)
        except FileNotFoundError:
            pass
        return self.lines


# -- one run -----------------------------------------------------------------------------------------


def watch(
    proc: subprocess.Popen[bytes], journal: JournalCounter, emu_pid: int, timeout_s: float
) -> tuple[list[Sample], int, int, Any, int]:
    """Sample `proc` until it exits; return the samples, last VmHWM, exit code, rusage, emulator VmHWM.

    The child is reaped here with `os.wait4`, whose rusage is that one process's own, whatever else this
    script has started.
    """
    started = time.monotonic()
    samples: list[Sample] = []
    hwm = emu_hwm = 0
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return samples, hwm, proc.returncode, rusage, emu_hwm
        memory = proc_memory(proc.pid)
        rows_done = journal.poll()
        if memory is not None:
            hwm = max(hwm, memory[1])
            samples.append(Sample(time.monotonic() - started, rows_done, memory[0], memory[1]))
        emu = proc_memory(emu_pid)
        if emu is not None:
            emu_hwm = max(emu_hwm, emu[1])
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"batchrun did not finish within {timeout_s:.0f} s ({rows_done:,} rows done)")
        time.sleep(POLL_S)


def run_one(rows: int, concurrency: int, root: Path, timeout_s: float) -> RunResult:
    """Generate N rows, run batchrun over them against a fresh emulator, and measure it."""
    folder = root / f"rows-{rows}"
    folder.mkdir()
    prompts, output, job = folder / "prompts.jsonl", folder / "out.parquet", folder / "job.toml"
    t0 = time.monotonic()
    write_prompts(prompts, rows)
    size = prompts.stat().st_size / MIB / MIB
    say(f"{rows:,} rows: wrote {prompts} ({size:,.0f} MiB) in {time.monotonic() - t0:.1f} s")

    with emulator(folder) as (base_url, emu):
        write_job(job, prompts, output, base_url, concurrency)
        journal = JournalCounter(output.with_name(output.name + ".run") / "results.jsonl")
        cmd = [sys.executable, "-m", "batchrun", "run", str(job), "--json"]
        say(f"{rows:,} rows: emulator at {base_url}; running {' '.join(cmd[1:])}")
        with (folder / "stdout.json").open("wb") as out, (folder / "stderr.log").open("wb") as err:
            started = time.monotonic()
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=child_env(), cwd=folder)
        try:
            samples, hwm, code, rusage, emu_hwm = watch(proc, journal, emu.pid, timeout_s)
        finally:
            stop(proc, grace_s=40.0)  # batchrun drains for up to 30 s on SIGTERM
        wall_s = time.monotonic() - started
    journal.poll()

    if code not in (0, 1):
        err_text = (folder / "stderr.log").read_text(encoding="utf-8", errors="replace")
        raise RuntimeError(f"batchrun exited {code}:\n{err_text[-4000:]}")
    out_rows, out_ok = check_output(output)
    return RunResult(
        rows=rows,
        exit_code=code,
        wall_s=wall_s,
        peak_kib=max(hwm, rusage.ru_maxrss),
        hwm_kib=hwm,
        maxrss_kib=rusage.ru_maxrss,
        cpu_s=rusage.ru_utime + rusage.ru_stime,
        rss_at=rss_at(samples, rows),
        send_peak_kib=max((s.hwm_kib for s in samples if s.rows_done < rows), default=0),
        tail_peak_kib=max((s.rss_kib for s in samples if s.rows_done >= rows), default=0),
        tail_s=tail_seconds(samples, rows, wall_s),
        emulator_hwm_kib=emu_hwm,
        out_rows=out_rows,
        out_ok=out_ok,
        journal_mib=journal.offset / MIB / MIB,
        output_mib=output.stat().st_size / MIB / MIB if output.exists() else 0.0,
        summary=json.loads((folder / "stdout.json").read_text(encoding="utf-8") or "{}"),
        samples=samples,
    )


def rss_at(samples: Sequence[Sample], rows: int) -> dict[float, int | None]:
    """VmRSS at the first sample where the journal held at least each share of the rows."""
    found: dict[float, int | None] = {}
    for fraction in FRACTIONS:
        found[fraction] = next((s.rss_kib for s in samples if s.rows_done >= fraction * rows), None)
    return found


def tail_seconds(samples: Sequence[Sample], rows: int, wall_s: float) -> float | None:
    """Seconds from the first sample with a complete journal to the child's exit."""
    first = next((s.t for s in samples if s.rows_done >= rows), None)
    return None if first is None else wall_s - first


def check_output(output: Path) -> tuple[int, int]:
    """(rows, rows with status ok) in the output Parquet, read lazily."""
    import polars as pl

    if not output.exists():
        return 0, 0
    rows, ok = pl.scan_parquet(output).select(pl.len(), (pl.col("status") == "ok").sum()).collect().row(0)
    return int(rows), int(ok or 0)


# -- the report --------------------------------------------------------------------------------------


def say(message: str) -> None:
    """A progress line on stderr."""
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def mib(kib: int | None) -> str:
    """KiB as whole MiB, or '-'."""
    return "-" if kib is None else f"{kib / MIB:,.0f}"


def machine() -> str:
    """One line about where this ran."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            total_kib = int(f.readline().split()[1])
        memory = f", {total_kib / MIB / MIB:.1f} GiB RAM"
    except (OSError, ValueError, IndexError):
        memory = ""
    try:
        import polars as pl

        polars = f", polars {pl.__version__}"
    except ImportError:
        polars = ""
    return (
        f"{dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; {platform.system()} {platform.release()} "
        f"{platform.machine()}, nproc {cpus}{memory}; Python {platform.python_version()}{polars}"
    )


def report(results: Sequence[RunResult], concurrency: int) -> str:
    """The results table, the peak ratio and the machine, as Markdown."""
    head = (
        "| rows | wall s | rows/s | peak RSS MiB | RSS MiB at 25/50/75% | peak while sending MiB "
        "| tail peak MiB (s) | output OK |"
    )
    lines = [head, "|" + "---:|" * 7 + ":---|"]
    for r in results:
        at = "/".join(mib(r.rss_at[f]) for f in FRACTIONS)
        tail = f"{mib(r.tail_peak_kib)} ({r.tail_s:.1f})" if r.tail_s is not None else "-"
        ok = "yes" if r.output_ok else f"NO ({r.out_ok:,}/{r.out_rows:,} ok, exit {r.exit_code})"
        lines.append(
            f"| {r.rows:,} | {r.wall_s:,.1f} | {r.rows / r.wall_s:,.0f} | {mib(r.peak_kib)} | {at} "
            f"| {mib(r.send_peak_kib)} | {tail} | {ok} |"
        )
    lines.append("")
    if len(results) >= 2:
        small, big = min(results, key=lambda r: r.rows), max(results, key=lambda r: r.rows)
        ratio = big.peak_kib / small.peak_kib
        lines.append(
            f"peak RSS ratio {big.rows:,} / {small.rows:,} rows: {ratio:.2f} "
            f"({mib(big.peak_kib)} / {mib(small.peak_kib)} MiB)"
        )
    for r in results:
        lines.append(
            f"{r.rows:,} rows: VmHWM {mib(r.hwm_kib)} MiB, ru_maxrss {mib(r.maxrss_kib)} MiB, "
            f"CPU {r.cpu_s:,.0f} s, batchrun's own wall {r.summary.get('wall_s', 0):,.1f} s, "
            f"journal {r.journal_mib:,.0f} MiB, output {r.output_mib:,.0f} MiB, "
            f"emulator VmHWM {mib(r.emulator_hwm_kib)} MiB"
        )
    lines.append(f"concurrency {concurrency}, emulator latency 0, poll every {POLL_S} s")
    lines.append(f"machine: {machine()}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000], help="row counts")
    parser.add_argument("--concurrency", type=int, default=256, help="[limits] concurrency (256)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--dir", type=Path, default=None, help="where to make the temporary folder")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per run (3600)")
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.rows):
        parser.error("--rows must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark for every row count; print the table; 0 when every output is complete and ok."""
    args = parse_args(argv)
    if not Path("/proc/self/status").exists():
        print("memory.py needs Linux's /proc", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="batchrun-memory-", dir=args.dir))
    say(f"working in {root}")
    results: list[RunResult] = []
    try:
        for rows in args.rows:
            result = run_one(rows, args.concurrency, root, args.timeout)
            results.append(result)
            say(
                f"{rows:,} rows: {result.wall_s:,.1f} s, peak RSS {mib(result.peak_kib)} MiB, "
                f"output {'ok' if result.output_ok else 'NOT ok'}"
            )
            with (root / "samples.jsonl").open("a", encoding="utf-8") as f:
                for s in result.samples:
                    f.write(json.dumps({"rows": rows, **asdict(s)}) + "\n")
    except KeyboardInterrupt:
        say("interrupted")
        return 128 + signal.SIGINT
    finally:
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(report(results, args.concurrency))
    return 0 if all(r.output_ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
