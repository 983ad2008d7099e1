"""Batch mode end to end: what does batchrun itself add to a run through a Batch API, beside the live run?

The same job (`batchrun run JOB`, CLI, JSONL in, Parquet out) over N rows, once live and once with `--batch`,
against `batchrun emulate` in its own process (instant live replies; batches that validate at once, work for
a second and finalize at once). Each batchrun run is its own process, reaped with `os.wait4`, so its CPU
time and peak RSS are its own. The table gives wall seconds, batchrun's CPU seconds (per 1,000 rows), peak
RSS, and for the batch run the seconds spent waiting on the emulator (the batch's second of work and the
emulator answering every request while it takes the create call): what is left is batchrun's own work
(splitting, upload, download, reading, assembly).

    python benchmarks/batch.py                  # 100,000 rows
    python benchmarks/batch.py --rows 20000     # a quick check
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
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import Measured, child_env, measure, write_prompts  # noqa: E402

WORKING_S = 1.0  # how long an emulated batch is in_progress


def emulator() -> tuple[subprocess.Popen[str], str]:
    """`batchrun emulate` on a free port, with quick batches; the process and its base URL."""
    command = [sys.executable, "-m", "batchrun", "emulate", "--port", "0", "--batch-validating", "0",
               "--batch-working", str(WORKING_S), "--batch-finalizing", "0"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=child_env())
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"(http://\S+/v1)", line)
    if not match:
        process.kill()
        raise RuntimeError(f"the emulator did not start: {line!r}")
    return process, match.group(1)


def run(folder: Path, prompts: Path, base_url: str, batch: bool) -> tuple[Measured, dict[str, object]]:
    """One `batchrun run` of the job, live or `--batch`; its measures and its summary."""
    name = "batch" if batch else "live"
    job = folder / f"{name}.toml"
    job.write_text(
        f'name = "{name}"\n[input]\npath = "{prompts}"\nid_column = "id"\n'
        f'[prompt]\ntemplate = "Label the sentiment of this review: {{text}}"\n'
        f'[provider]\nkind = "openai"\nbase_url = "{base_url}"\nmodel = "qwen3-max"\n'
        f"[params]\nmax_tokens = 4\n"
        f"[batch]\npoll_interval_s = 0.5\n"
        f'[output]\npath = "{folder / name}.parquet"\n'
    )
    command = [sys.executable, "-m", "batchrun", "run", str(job), "--json", "--quiet"]
    measured = measure([*command, "--batch"] if batch else command)
    if measured.returncode != 0:
        raise RuntimeError(f"the {name} run exited {measured.returncode}")
    return measured, json.loads(measured.stdout)


def waited_s(log: Path) -> float:
    """Seconds from the first batch's create to the last batch's end, from the run's log file."""
    stamps = []
    for line in log.read_text().splitlines():
        if re.search(r"batch \S+: part \d+|batch \S+ over:", line):
            stamps.append(time.mktime(time.strptime(line[:19], "%Y-%m-%dT%H:%M:%S")))
    return max(stamps) - min(stamps) if stamps else 0.0


def main() -> None:
    """Run both and print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"# batchrun batch-mode benchmark, {when}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; {args.rows:,} rows; "
          f"emulated batches work {WORKING_S:g} s")  # fmt: skip
    columns = ["run", "rows", "wall s", "CPU s", "CPU s / 1k rows", "peak RSS MiB", "waiting on the batch s",
               "cost"]  # fmt: skip
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns), flush=True)
    process, base_url = emulator()
    try:
        with tempfile.TemporaryDirectory(prefix="batchrun-batch-") as tmp:
            folder = Path(tmp)
            prompts = folder / "prompts.jsonl"
            write_prompts(prompts, args.rows)
            for batch in (False, True):
                measured, summary = run(folder, prompts, base_url, batch)
                wait = waited_s(folder / ("batch.log" if batch else "live.log")) if batch else 0.0
                row = [
                    "batch (--batch)" if batch else "live",
                    f"{summary['rows']:,}",
                    f"{measured.wall_s:.1f}",
                    f"{measured.cpu_s:.1f}",
                    f"{measured.cpu_s / args.rows * 1000:.3f}",
                    f"{measured.peak_rss_mib:.0f}",
                    f"{wait:.1f}" if batch else "-",
                    f"${summary['cost_usd']:.2f}",
                ]
                print("| " + " | ".join(row) + " |", flush=True)
    finally:
        process.terminate()
        process.wait(timeout=10)


if __name__ == "__main__":
    main()
