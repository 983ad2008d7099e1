"""Memory benchmark: does a big prompt set run to the end in flat, bounded memory, sending and assembling?

For each row count N this script

1. writes a prompt set of N short review-like texts (100-600 characters, with an `id`) as JSONL,
2. starts the lean local server (`fastserver.py`, latency 0) with replies of realistic size: a completion of
   `--completion-bytes` (2,048 by default), the full usage object with its `*_details`, and reasoning text
   (half the completion's size) in every `--reasoning-every`th reply (10),
3. runs `python -m batchrun run JOB --json` against it as a subprocess, sampling the child's
   `/proc/<pid>/status` and counting its journal's lines every 0.2 s. The moment the journal holds every
   row, sending is over: the child's VmHWM then is the peak while sending, and it is reset (`clear_refs`),
   so the `ru_maxrss` that `os.wait4` reaps is the peak of the assembly (output and summary) alone,
4. checks the output Parquet (N rows, every status `ok`);

and, with `--resume` (on by default), runs the same job again from scratch, kills it (SIGKILL) once half the
rows are journaled, and resumes it: the resumed run's peaks and the end-to-end time of both are printed too.
A line per run gives wall time, rows/s, the sending and assembly peaks, the assembly's time, the journal's
and output's sizes.

    python benchmarks/memory.py                                   # 100,000 and 1,000,000 rows, 2 KB replies
    python benchmarks/memory.py --rows 10000 --no-resume          # a quick check
    python benchmarks/memory.py --completion-bytes 0              # the short replies of earlier benchmarks

Linux only (it reads and writes `/proc`). Everything happens in a temporary folder, removed at the end unless
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
POLL_S = 0.2  # how often the child's memory and the journal are sampled
CHUNK_ROWS = 50_000  # rows generated and written at a time
SERVER_START_S = 30.0  # how long the server may take to print its address
MIB = 1024  # /proc and ru_maxrss speak KiB
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
LISTENING = re.compile(r"listening on (http://\S+/v1)")

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
class Phase:
    """One batchrun process: how long it ran and its memory while sending and while assembling."""

    exit_code: int
    wall_s: float
    cpu_s: float
    send_peak_kib: int  # VmHWM when the journal first held every row (or at the kill)
    assembly_peak_kib: int | None  # ru_maxrss after VmHWM was reset at that moment; None: killed first
    assembly_s: float | None  # from a complete journal to exit
    server_hwm_kib: int


@dataclass(slots=True)
class RunResult:
    """What one scenario of N rows measured: a fresh run, or a run killed halfway and resumed."""

    rows: int
    scenario: str  # "fresh" or "resumed"
    phases: list[Phase]
    out_rows: int
    out_ok: int
    journal_mib: float
    output_mib: float
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def last(self) -> Phase:
        """The run that finished."""
        return self.phases[-1]

    @property
    def wall_s(self) -> float:
        """End to end: every process's wall time added up."""
        return sum(p.wall_s for p in self.phases)

    @property
    def output_ok(self) -> bool:
        """True when the output has every row and every row is ok."""
        return self.last.exit_code == 0 and self.out_rows == self.rows and self.out_ok == self.rows


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
    """A job over the `text` column against the local server (JSON strings are valid TOML basic strings)."""
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


def reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM (and so the ru_maxrss it exits with) to its current RSS."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return True


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
def server(folder: Path, completion_bytes: int, reasoning_every: int) -> Iterator[tuple[str, int]]:
    """Run `fastserver.py` (latency 0) with replies of the given size; yield its base URL and pid."""
    log = folder / "server.log"
    cmd = [sys.executable, str(HERE / "fastserver.py"), "--port", "0"]
    cmd += ["--completion-bytes", str(completion_bytes), "--reasoning-every", str(reasoning_every)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env(), cwd=folder)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while not (match := LISTENING.search(log.read_text(encoding="utf-8", errors="replace"))):
            if proc.poll() is not None or time.monotonic() > deadline:
                text = log.read_text(encoding="utf-8", errors="replace")
                raise RuntimeError(f"the server did not start (exit {proc.poll()}):\n{text}")
            time.sleep(0.05)
        yield match.group(1), proc.pid
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
    cmd: list[str],
    folder: Path,
    journal: JournalCounter,
    lines: int,
    server_pid: int,
    timeout_s: float,
    *,
    kill: bool = False,
) -> Phase:
    """Run `cmd` and sample it until it exits (or, with `kill`, SIGKILL it once the journal has `lines`).

    Once the journal holds `lines` lines sending is over: VmHWM then is the sending peak, and it is reset,
    so the ru_maxrss the child is reaped with (`os.wait4`, that one process's own) is the assembly's peak.
    """
    with (folder / "stdout.json").open("wb") as out, (folder / "stderr.log").open("ab") as err:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=child_env(), cwd=folder)
    hwm = server_hwm = 0
    sent_at: float | None = None
    reset = False
    try:
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            memory = proc_memory(proc.pid)
            done = journal.poll()
            if memory is not None and sent_at is None:
                hwm = max(hwm, memory[1])
            if done >= lines and sent_at is None:
                sent_at = time.monotonic()
                if kill:
                    proc.kill()
                    continue
                reset = reset_peak(proc.pid)
            server = proc_memory(server_pid)
            if server is not None:
                server_hwm = max(server_hwm, server[1])
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"batchrun did not finish within {timeout_s:.0f} s ({done:,} lines)")
            time.sleep(POLL_S)
    finally:
        stop(proc, grace_s=40.0)  # batchrun drains for up to 30 s on SIGTERM
    ended = time.monotonic()
    assembled = sent_at is not None and not kill
    return Phase(
        exit_code=proc.returncode,
        wall_s=ended - started,
        cpu_s=rusage.ru_utime + rusage.ru_stime,
        send_peak_kib=hwm,
        assembly_peak_kib=rusage.ru_maxrss if assembled and reset else None,
        assembly_s=ended - sent_at if assembled and sent_at is not None else None,
        server_hwm_kib=server_hwm,
    )


def run_scenario(rows: int, scenario: str, args: argparse.Namespace, root: Path) -> RunResult:
    """Generate N rows and run batchrun over them: once (`fresh`), or killed halfway and rerun (`resumed`)."""
    folder = root / f"{scenario}-{rows}"
    folder.mkdir()
    prompts, output, job = folder / "prompts.jsonl", folder / "out.parquet", folder / "job.toml"
    t0 = time.monotonic()
    write_prompts(prompts, rows)
    size = prompts.stat().st_size / MIB / MIB
    say(f"{rows:,} rows ({scenario}): wrote {prompts} ({size:,.0f} MiB) in {time.monotonic() - t0:.1f} s")
    cmd = [sys.executable, "-m", "batchrun", "run", str(job), "--json"]
    journal = JournalCounter(output.with_name(output.name + ".run") / "results.jsonl")
    phases = []
    with server(folder, args.completion_bytes, args.reasoning_every) as (base_url, server_pid):
        write_job(job, prompts, output, base_url, args.concurrency)
        if scenario == "resumed":
            say(f"{rows:,} rows: a first run, killed once {rows // 2:,} rows are journaled")
            phases.append(watch(cmd, folder, journal, rows // 2, server_pid, args.timeout, kill=True))
        say(f"{rows:,} rows: running {' '.join(cmd[1:])}")
        phases.append(watch(cmd, folder, journal, rows, server_pid, args.timeout))
    journal.poll()
    last = phases[-1]
    if last.exit_code not in (0, 1):
        err_text = (folder / "stderr.log").read_text(encoding="utf-8", errors="replace")
        raise RuntimeError(f"batchrun exited {last.exit_code}:\n{err_text[-4000:]}")
    out_rows, out_ok = check_output(output)
    return RunResult(
        rows=rows,
        scenario=scenario,
        phases=phases,
        out_rows=out_rows,
        out_ok=out_ok,
        journal_mib=journal.offset / MIB / MIB,
        output_mib=output.stat().st_size / MIB / MIB if output.exists() else 0.0,
        summary=json.loads((folder / "stdout.json").read_text(encoding="utf-8") or "{}"),
    )


def check_output(output: Path) -> tuple[int, int]:
    """(rows, rows with status ok) in the output Parquet, read lazily in a child process.

    Not here: a child inherits this process's peak RSS at `exec` into its `ru_maxrss`, so this process
    never loads polars.
    """
    if not output.exists():
        return 0, 0
    code = (
        "import sys, polars as pl\n"
        "frame = pl.scan_parquet(sys.argv[1], hive_partitioning=False)\n"
        "rows, ok = frame.select(pl.len(), (pl.col('status') == 'ok').sum()).collect().row(0)\n"
        "print(rows, ok or 0)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(output)], capture_output=True, check=True)
    rows, ok = done.stdout.split()
    return int(rows), int(ok)


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
    from importlib.metadata import PackageNotFoundError, version

    try:
        versions = f", polars {version('polars')}, duckdb {version('duckdb')}"
    except PackageNotFoundError:
        versions = ""
    return (
        f"{dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; {platform.system()} {platform.release()} "
        f"{platform.machine()}, nproc {cpus}{memory}; Python {platform.python_version()}{versions}"
    )


def report(results: Sequence[RunResult], args: argparse.Namespace) -> str:
    """The results table and the machine, as Markdown."""
    head = (
        "| rows | run | wall s (end to end) | rows/s | peak sending MiB | peak assembly MiB | assembly s "
        "| journal MiB | output MiB | output OK |"
    )
    lines = [head, "|" + "---:|" * 2 + "---:|" * 7 + ":---|"]
    for r in results:
        last = r.last
        sending = " + ".join(mib(p.send_peak_kib) for p in r.phases)
        ok = "yes" if r.output_ok else f"NO ({r.out_ok:,}/{r.out_rows:,} ok, exit {last.exit_code})"
        assembly_s = f"{last.assembly_s:,.1f}" if last.assembly_s is not None else "-"
        lines.append(
            f"| {r.rows:,} | {r.scenario} | {r.wall_s:,.1f} | {r.rows / r.wall_s:,.0f} | {sending} "
            f"| {mib(last.assembly_peak_kib)} | {assembly_s} | {r.journal_mib:,.0f} | {r.output_mib:,.0f} "
            f"| {ok} |"
        )
    lines.append("")
    for r in results:
        cpu = " + ".join(f"{p.cpu_s:,.0f}" for p in r.phases)
        lines.append(
            f"{r.rows:,} rows, {r.scenario}: CPU {cpu} s, batchrun's own wall "
            f"{r.summary.get('wall_s', 0):,.1f} s, {r.summary.get('rows_reused', 0) or 0:,} rows reused, "
            "server VmHWM "
            f"{mib(max(p.server_hwm_kib for p in r.phases))} MiB"
        )
    lines.append(
        f"replies: {args.completion_bytes:,}-byte completions, full usage objects, reasoning "
        f"({args.completion_bytes // 2:,} bytes) in every {args.reasoning_every}th; concurrency "
        f"{args.concurrency}, server latency 0, poll every {POLL_S} s"
    )
    lines.append(f"machine: {machine()}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000], help="row counts")
    parser.add_argument("--concurrency", type=int, default=64, help="[limits] concurrency (64)")
    parser.add_argument("--completion-bytes", type=int, default=2048, help="completion size (2048)")
    parser.add_argument("--reasoning-every", type=int, default=10, help="reasoning in every Kth reply (10)")
    parser.add_argument(
        "--resume", action=argparse.BooleanOptionalAction, default=True, help="also a killed, resumed run"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--dir", type=Path, default=None, help="where to make the temporary folder")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per run (3600)")
    args = parser.parse_args(argv)
    if any(n < 2 for n in args.rows):
        parser.error("--rows must be at least 2")
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
    scenarios = ["fresh", "resumed"] if args.resume else ["fresh"]
    try:
        for rows in args.rows:
            for scenario in scenarios:
                result = run_scenario(rows, scenario, args, root)
                results.append(result)
                last = result.last
                say(
                    f"{rows:,} rows ({scenario}): {result.wall_s:,.1f} s, peak sending "
                    f"{mib(last.send_peak_kib)} MiB, assembly {mib(last.assembly_peak_kib)} MiB, "
                    f"output {'ok' if result.output_ok else 'NOT ok'}"
                )
                if not args.keep:  # a million rows of 2 KB answers are gigabytes: free them as we go
                    shutil.rmtree(root / f"{scenario}-{rows}", ignore_errors=True)
    except KeyboardInterrupt:
        say("interrupted")
        return 128 + signal.SIGINT
    finally:
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(report(results, args))
    return 0 if all(r.output_ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
