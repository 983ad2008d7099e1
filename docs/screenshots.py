"""Screenshots of `batchrun report --html` for the README: a clean run, a run with failed rows, a sweep.

    python docs/screenshots.py            # writes docs/img/report-*.png (and keeps the pages with --keep)

Each scenario runs a job from `jobs/` against the emulator (no key, no network) in a temporary copy of the
project, writes its report page, and has headless Chromium (Debian's `chromium`) draw the page offline and
take the picture. Needs `pip install -e .` and `apt-get install chromium`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from batchrun.emulator import EmulatorConfig, EmulatorServer

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "img"
WIDTH = 1100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="Also copy the report pages to this folder.")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("headless Chromium is needed: apt-get install chromium")
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="batchrun-shots-") as folder:
        work = Path(folder)
        shutil.copytree(ROOT / "jobs", work / "jobs", ignore=shutil.ignore_patterns("out"))
        shutil.copytree(ROOT / "sample_data", work / "sample_data")
        pages = {
            "clean": clean(work),
            "failed": failed(work),
            "sweep": sweep(work),
        }
        for name, (page, height) in pages.items():
            shot(chromium, page, IMAGES / f"report-{name}.png", height, work)
            print(f"docs/img/report-{name}.png  ({page.stat().st_size / 1e6:.1f} MB page)")
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                shutil.copy(page, args.keep / f"report-{name}.html")


def clean(work: Path) -> tuple[Path, int]:
    """The demo job: 300 reviews labelled on the built-in emulator, every row ok."""
    output = work / "jobs/out/demo.parquet"
    batchrun(work, "run", "jobs/demo.toml", "--quiet")
    return report(work, output, "clean"), 2300


def failed(work: Path) -> tuple[Path, int]:
    """The demo job against an emulator that refuses and fails requests, with two tries a row and answers
    cut at 1 token: 429s and 5xx retried, some rows failed, answers stopped at `length`."""
    config = EmulatorConfig(latency_s=0.05, rate_429=0.06, rate_500=0.08, rate_503=0.03, seed=7)
    with EmulatorServer(config) as server:
        batchrun(
            work, "run", "jobs/demo.toml", "--quiet", "--output", "jobs/out/failed.parquet",
            "--set", f'provider.base_url="{server.base_url}"', "--set", "params.max_tokens=1",
            "--set", "limits.max_attempts=2", "--set", "limits.concurrency=8", check=False,
        )  # fmt: skip
    return report(work, work / "jobs/out/failed.parquet", "failed"), 1500


def sweep(work: Path) -> tuple[Path, int]:
    """The evaluation sweep (qwen3-max against qwen-max, star ratings) on the emulator."""
    batchrun(
        work, "run", "jobs/eval_qwen_sweep.toml", "--quiet", "--set", "provider.preset=emulator",
        "--set", "limits.requests_per_minute=12000",
    )  # fmt: skip
    return report(work, work / "jobs/out/eval-qwen-sweep.parquet", "sweep"), 1700


def batchrun(work: Path, *args: str, check: bool = True) -> None:
    env = {"XDG_CACHE_HOME": str(work / "cache"), "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-m", "batchrun", *args]
    done = subprocess.run(command, cwd=work, env=env, check=False, stdout=subprocess.DEVNULL)
    if check and done.returncode != 0:
        sys.exit(f"batchrun {' '.join(args)} exited {done.returncode}")


def report(work: Path, output: Path, name: str) -> Path:
    page = work / f"report-{name}.html"
    batchrun(work, "report", str(output), "--html", str(page), check=False)
    return page


def shot(chromium: str, page: Path, image: Path, height: int, work: Path) -> None:
    subprocess.run(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={work / 'chromium'}", f"--window-size={WIDTH},{height}",
            "--virtual-time-budget=10000", f"--screenshot={image}", page.as_uri(),
        ],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip


if __name__ == "__main__":
    main()
