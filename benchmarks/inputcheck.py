"""What the whole-input check costs before a run's first request (issue 15: "seconds for a million rows").

A run reads and checks every row before it sends anything (`batchrun.inputs.validate.check_input`). This
writes a prompt set (the suite's review-like JSONL, and the same rows as OpenAI batch lines and as a messages
column), then times, each in its own process (wall time, CPU, peak RSS, reaped with `os.wait4`):

- read: the input read batch by batch, nothing else (the baseline: the least any check can cost);
- check: `check_input`, what a run now does before its first request;
- render: every row rendered into a request, as the run itself does later (what checking by rendering
  every row would have cost instead).

    python benchmarks/inputcheck.py                    # 1,000,000 rows, all three styles, ~2 minutes
    python benchmarks/inputcheck.py --rows 100000 --styles template
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import machine, measure, write_job, write_prompts  # noqa: E402 (a sibling script, not a package)

STEP = """
import sys, time
from batchrun.inputs.prompts import PromptSet
from batchrun.job.loader import load_job
from batchrun.inputs.validate import check_input

prompts = PromptSet(load_job(sys.argv[1]))
step = sys.argv[2]
started = time.perf_counter()
if step == "read":
    rows = sum(batch.frame.height for batch in prompts.batches())
elif step == "check":
    rows = check_input(prompts).rows
else:
    rows = sum(len(piece.items) for piece in prompts.slices())
print(rows, time.perf_counter() - started)
"""


def write_styles(folder: Path, rows: int, styles: list[str]) -> dict[str, Path]:
    """A job file per input style over the same `rows` prompts."""
    prompts = folder / "prompts.jsonl"
    write_prompts(prompts, rows)
    jobs: dict[str, Path] = {}
    if "template" in styles:
        jobs["template"] = write_job(folder, prompts, "http://127.0.0.1:9/v1", 64)
    if "messages" in styles:
        chats = folder / "chats.jsonl"
        with prompts.open(encoding="utf-8") as source, chats.open("w", encoding="utf-8") as out:
            for line in source:
                row = json.loads(line)
                messages = [{"role": "user", "content": f"Label the sentiment of this review: {row['text']}"}]
                out.write(json.dumps({"id": row["id"], "messages": json.dumps(messages)}) + "\n")
        jobs["messages"] = _job(folder, "messages", chats, 'messages_column = "messages"')
    if "batch" in styles:
        lines = folder / "batch.jsonl"
        with prompts.open(encoding="utf-8") as source, lines.open("w", encoding="utf-8") as out:
            for line in source:
                row = json.loads(line)
                body = {
                    "model": "qwen3-max",
                    "messages": [{"role": "user", "content": f"Label the sentiment: {row['text']}"}],
                    "max_tokens": 4,
                }
                url = "/v1/chat/completions"
                record = {"custom_id": row["id"], "method": "POST", "url": url, "body": body}
                out.write(json.dumps(record) + "\n")
        jobs["batch lines"] = _job(folder, "batch", lines, "")
    return jobs


def _job(folder: Path, name: str, data: Path, prompt: str) -> Path:
    """A job over `data` with the given `[prompt]` body."""
    job = folder / f"{name}.toml"
    id_column = 'id_column = "id"\n' if prompt else ""
    job.write_text(
        f'name = "{name}"\n[input]\npath = "{data}"\n{id_column}[prompt]\n{prompt}\n'
        '[provider]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "qwen3-max"\n'
        f'[params]\nmax_tokens = 4\n[output]\npath = "{folder / name}.parquet"\n',
        encoding="utf-8",
    )
    return job


def main() -> None:
    """Time read, check and render for each style and print a table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--styles", default="template,messages,batch", help="comma-separated")
    args = parser.parse_args()
    print(f"# whole-input check, {args.rows:,} rows; {machine()}")
    print("| input | step | s | CPU s | peak RSS MiB | check vs read |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="batchrun-check-") as tmp:
        for style, job in write_styles(Path(tmp), args.rows, args.styles.split(",")).items():
            seconds: dict[str, float] = {}
            for step in ("read", "check", "render"):
                measured = measure([sys.executable, "-c", STEP, str(job), step])
                rows, took = measured.stdout.split()
                assert int(rows) == args.rows, (style, step, rows)
                seconds[step] = float(took)
                ratio = f"{seconds['check'] / seconds['read']:.2f}x" if step == "check" else "-"
                print(
                    f"| {style} | {step} | {float(took):.2f} | {measured.cpu_s:.2f} | "
                    f"{measured.peak_rss_mib:.0f} | {ratio} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
