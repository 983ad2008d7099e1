"""batchrun: run bulk prompts through LLM APIs, with usage and cost, resumable and rate-limit aware.

Use it from Python as from the shell::

    from batchrun import load_job, run_job
    summary = run_job(load_job("jobs/demo.toml"))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["load_job", "run_job"]

if TYPE_CHECKING:
    from batchrun.engines.run import run_job
    from batchrun.job.loader import load_job


def __getattr__(name: str) -> Any:
    # Lazy: `import batchrun` (and so `batchrun --help`) must not pay for polars, httpx and aiohttp.
    if name == "load_job":
        from batchrun.job.loader import load_job

        return load_job
    if name == "run_job":
        from batchrun.engines.run import run_job

        return run_job
    raise AttributeError(f"module 'batchrun' has no attribute {name!r}")
