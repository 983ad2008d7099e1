"""Batch API client benchmark: what splitting, uploading, downloading and reading N rows costs batchrun.

For each API kind (openai, anthropic) this script starts `python -m batchrun emulate` as a separate process
on a free loopback port (batches that validate and finalize at once and work for 1 s), then runs, in a
child process of its own so its peak RSS is its own:

- a baseline: the N prepared `Request`s made and dropped (what any engine pays anyway);
- the client: the same requests split into parts (the kind's default limits), each part submitted
  (upload + create), polled until done, downloaded, and every line read into a `LineResult`.

It prints, per kind: seconds and CPU seconds per stage (split, submit, wait, download, read), the CPU
seconds per 1,000 rows of the client's own work (everything but the wait), and the peak RSS beside the
baseline's. `submit`'s wall time
includes the emulator answering every request while it takes the create call (the server's time, not
batchrun's): its CPU column is the client's alone.

    python benchmarks/batchapi.py                  # 100,000 rows
    python benchmarks/batchapi.py --rows 20000     # a quick check

Everything happens in a temporary folder, removed at the end. Proxy variables are dropped: traffic stays on
127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SERVING = re.compile(r"serving at (http://\S+/v1)")
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def requests(n: int, model: str) -> Iterator[Any]:
    """N prepared requests shaped like a labeling job's (a system prompt, a review, max_tokens)."""
    from batchrun.inputs.render import encode
    from batchrun.records import Request

    system = {"role": "system", "content": "You label the sentiment of product reviews."}
    for i in range(n):
        text = f"Review {i}: the zipper broke after {i % 37} days, but support replied the same day."
        body = {"model": model, "messages": [system, {"role": "user", "content": text}], "max_tokens": 8}
        yield Request(f"{i:032x}", body, encode(body), 30, 4)


def child(kind: str, base: str, rows: int, folder: Path, baseline: bool) -> dict[str, Any]:
    """One measured run in this (child) process."""
    import anyio
    import httpx

    from batchrun.providers import make_provider
    from batchrun.providers.batchapi import Part, Retry, Tag, limits_for, make_batch_api, split

    stages: dict[str, list[float]] = {}

    def stage(name: str, wall: float, cpu: float) -> None:
        stages[name] = [round(time.perf_counter() - wall, 3), round(time.process_time() - cpu, 3)]

    if baseline:
        wall, cpu = time.perf_counter(), time.process_time()
        count = sum(1 for _ in requests(rows, "qwen-max"))
        stage("make", wall, cpu)
        return {"rows": count, "stages": stages, "rss_mib": _rss_mib()}

    async def main() -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=600, trust_env=False) as client:
            api = make_batch_api(
                client, make_provider(kind, base, None, {}), base, None, retry=Retry(total_s=600)
            )
            wall, cpu = time.perf_counter(), time.process_time()
            parts = [
                p
                for p in split(requests(rows, "qwen-max"), api, limits_for(kind, base), folder)
                if isinstance(p, Part)
            ]
            stage("split", wall, cpu)
            wall, cpu = time.perf_counter(), time.process_time()
            infos = [await api.submit(p, Tag("bench", "b1", p.index, len(p.custom_ids))) for p in parts]
            stage("submit", wall, cpu)
            wall, cpu = time.perf_counter(), time.process_time()
            done = []
            for submitted in infos:
                info = submitted
                for _ in range(10_000):  # a bounded wait: the batches work for 1 s
                    if info.done:
                        break
                    await anyio.sleep(0.1)
                    info = await api.retrieve(info.id)
                done.append(info)
            stage("wait", wall, cpu)
            wall, cpu = time.perf_counter(), time.process_time()
            paths = [await api.download(info, folder) for info in done]
            stage("download", wall, cpu)
            wall, cpu = time.perf_counter(), time.process_time()
            outcome: Counter[str] = Counter()
            for part, files in zip(parts, paths, strict=True):
                for line in api.read(files, part.custom_ids):
                    outcome["reply" if line.reply else "error" if line.error else str(line.unanswered)] += 1
            stage("read", wall, cpu)
            return {
                "rows": rows,
                "parts": len(parts),
                "outcome": dict(outcome),
                "stages": stages,
                "rss_mib": _rss_mib(),
            }

    return anyio.run(main)


def _rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_child(kind: str, base: str, rows: int, folder: Path, baseline: bool) -> dict[str, Any]:
    """Run `child` in a fresh interpreter and return what it printed."""
    args = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--base",
        base,
        "--rows",
        str(rows),
        "--folder",
        str(folder),
    ]
    if baseline:
        args.append("--baseline")
    out = subprocess.run(args, check=True, capture_output=True, text=True, env=_env())
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in PROXY_VARS}


def main() -> None:
    """Parse the flags and print one block per kind."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--child", choices=("openai", "anthropic"))
    parser.add_argument("--base")
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--baseline", action="store_true")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.base, args.rows, args.folder, args.baseline)))
        return
    emulator = subprocess.Popen(
        [sys.executable, "-m", "batchrun", "emulate", "--port", "0", "--batch-validating", "0",
         "--batch-working", "1", "--batch-finalizing", "0"],
        stdout=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    try:
        assert emulator.stdout is not None
        match = SERVING.search(emulator.stdout.readline())
        if match is None:
            raise SystemExit("the emulator did not start")
        openai_base = match.group(1)
        print(f"{args.rows:,} rows; emulator at {openai_base}")
        with tempfile.TemporaryDirectory() as tmp:
            for kind in ("openai", "anthropic"):
                base = openai_base if kind == "openai" else openai_base.removesuffix("/v1")
                folder = Path(tmp) / kind
                baseline = run_child(kind, base, args.rows, folder, baseline=True)
                measured = run_child(kind, base, args.rows, folder, baseline=False)
                _report(kind, baseline, measured)
    finally:
        emulator.terminate()
        emulator.wait(10)


def _report(kind: str, baseline: dict[str, Any], measured: dict[str, Any]) -> None:
    stages = measured["stages"]
    own_wall = sum(w for name, (w, _) in stages.items() if name != "wait")
    own_cpu = sum(c for name, (_, c) in stages.items() if name != "wait")
    rows = measured["rows"]
    print(f"\n{kind}: {measured['parts']} part(s), outcome {measured['outcome']}")
    for name, (wall, cpu) in stages.items():
        print(f"  {name:<9} {wall:8.2f} s wall {cpu:8.2f} s CPU")
    make_wall, make_cpu = baseline["stages"]["make"]
    print(f"  baseline: making the requests {make_wall:.2f} s wall, {make_cpu:.2f} s CPU")
    print(
        f"  client (all but the wait): {own_wall:.2f} s wall, {own_cpu:.2f} s CPU, "
        f"{own_cpu / rows * 1000:.3f} CPU s per 1,000 rows"
    )
    print(f"  peak RSS {measured['rss_mib']:.0f} MiB (baseline {baseline['rss_mib']:.0f} MiB)")


if __name__ == "__main__":
    main()
