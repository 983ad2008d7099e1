"""The `batchrun` command: parse, call the library, report. Exit codes follow Contract 3.

Heavy modules (polars, httpx, aiohttp) are imported inside the commands so `batchrun --help` stays fast.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

EXIT_USAGE = 2
EXIT_STOPPED = 3


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="batchrun")
def main() -> None:
    """Run bulk prompts through LLM APIs: a job file in, one Parquet row per prompt out."""


@main.command()
@click.argument("job_file", type=click.Path(path_type=Path))
@click.option(
    "--input", "input_path", type=click.Path(path_type=Path), help="Prompt set (overrides [input] path)."
)
@click.option(
    "--output", "output_path", type=click.Path(path_type=Path), help="Output Parquet ([output] path)."
)
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N rows.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override a job-file key, e.g. --set limits.concurrency=8 (repeatable).",
)
@click.option(
    "--fresh", is_flag=True, help="Forget answers journaled by earlier runs and send every row again."
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (for scripts).")
def run(
    job_file: Path,
    input_path: Path | None,
    output_path: Path | None,
    limit: int | None,
    overrides: tuple[str, ...],
    fresh: bool,
    as_json: bool,
) -> None:
    """Run JOB_FILE: send every row, write the output Parquet, print a summary.

    Exit codes: 0 every row ok, 1 some rows failed, 2 bad job file / input / flags (nothing sent),
    3 stopped early (bad key, no balance, interrupt; a rerun resumes).
    """
    from batchrun.errors import BatchrunError
    from batchrun.job import load_job
    from batchrun.runner import run_job

    logging.basicConfig(level=logging.INFO, format="batchrun: %(message)s", stream=sys.stderr)
    try:
        job = load_job(job_file, overrides, input_path=input_path, output_path=output_path)
        click.echo(f"batchrun: {job.name}: {job.input.path} -> {job.output_path}", err=True)
        summary = run_job(job, limit=limit, fresh=fresh)
    except BatchrunError as exc:
        click.echo(f"batchrun: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo(
            "batchrun: interrupted; what finished is saved, rerun the same command to resume.", err=True
        )
        sys.exit(EXIT_STOPPED)
    click.echo(json.dumps(summary.as_dict(), indent=2) if as_json else "\n".join(summary.lines()))
    sys.exit(summary.exit_code)


@main.command()
@click.argument("job_file", type=click.Path(path_type=Path))
@click.option(
    "--input", "input_path", type=click.Path(path_type=Path), help="Prompt set (overrides [input] path)."
)
@click.option(
    "--output", "output_path", type=click.Path(path_type=Path), help="Output Parquet ([output] path)."
)
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N rows.")
@click.option(
    "--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override a job-file key."
)
@click.option(
    "--latency",
    "latency_s",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Assumed seconds per request, for the duration.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the estimate as JSON.")
def estimate(
    job_file: Path,
    input_path: Path | None,
    output_path: Path | None,
    limit: int | None,
    overrides: tuple[str, ...],
    latency_s: float,
    as_json: bool,
) -> None:
    """Estimate JOB_FILE's rows, tokens, cost and duration without sending anything.

    Rows answered by an earlier run of the same job (its journal) are left out, as `run` would.
    """
    from batchrun.errors import BatchrunError
    from batchrun.estimate import estimate_job
    from batchrun.job import load_job

    try:
        job = load_job(job_file, overrides, input_path=input_path, output_path=output_path)
        result = estimate_job(job, limit=limit, latency_s=latency_s)
    except BatchrunError as exc:
        click.echo(f"batchrun: {exc}", err=True)
        sys.exit(exc.exit_code)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
    else:
        click.echo("\n".join(result.lines()))


@main.command()
def providers() -> None:
    """List the provider presets ([provider] preset = NAME)."""
    from batchrun.providers.presets import PRESETS

    width = max(len(name) for name in PRESETS)
    for preset in PRESETS.values():
        url = preset.base_url or "(in-process, free loopback port)"
        key = preset.api_key_env or "-"
        if preset.api_key_env and not preset.api_key_required:
            key += " (optional)"
        click.echo(f"{preset.name:<{width}}  {preset.kind:<9} {url}")
        click.echo(f"{'':<{width}}  key: {key}; {preset.description}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, help="Port to listen on (0: any free port).")
@click.option("--latency", "latency_s", default=0.0, show_default=True, help="Seconds before each reply.")
@click.option("--rate-429", default=0.0, show_default=True, help="Share of requests answered 429 (0-1).")
@click.option("--rate-500", default=0.0, show_default=True, help="Share of requests answered 500 (0-1).")
@click.option(
    "--retry-after", "retry_after_s", default=0.05, show_default=True, help="Seconds a 429 asks for."
)
@click.option("--api-key-env", help="Require the key held by this environment variable (else any key works).")
@click.option("--seed", default=0, show_default=True, help="Seed for the fault pattern.")
def emulate(
    host: str,
    port: int,
    latency_s: float,
    rate_429: float,
    rate_500: float,
    retry_after_s: float,
    api_key_env: str | None,
    seed: int,
) -> None:
    """Serve a local OpenAI-compatible API with deterministic replies and optional faults."""
    import os

    from batchrun.emulator import EmulatorConfig, serve

    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise click.BadParameter(
                f"the environment variable {api_key_env} is not set", param_hint="--api-key-env"
            )
    try:
        config = EmulatorConfig(
            latency_s=latency_s,
            rate_429=rate_429,
            rate_500=rate_500,
            retry_after_s=retry_after_s,
            api_key=api_key,
            seed=seed,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    serve(config, host=host, port=port)
