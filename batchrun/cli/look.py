"""The commands that look and send nothing: `estimate` and `validate` before a run, `status` and `report`
after (or during) one, `providers`."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from batchrun.cli.common import EXIT_USAGE, echo_all, job_options, main, user_errors, warnings_to_stderr


@main.command()
@job_options
@click.option(
    "--latency",
    "latency_s",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Assumed seconds per request, for the duration.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the estimate as JSON.")
@click.option(
    "--fresh", is_flag=True, help="Count every row, as `run --fresh` would send them (ignore the journal)."
)
def estimate(
    job_file: Path,
    input_path: Path | None,
    output_path: str | None,
    limit: int | None,
    overrides: tuple[str, ...],
    latency_s: float,
    as_json: bool,
    fresh: bool,
) -> None:
    """Estimate JOB_FILE's rows, tokens, cost and duration without sending anything.

    Rows answered by an earlier run of the same job (its journal) are left out, as `run` would; with
    --fresh they are counted, as `run --fresh` would send them again.
    """
    from batchrun.job.loader import load_job
    from batchrun.money.estimate import estimate_job
    from batchrun.store.remote import refreshed

    with user_errors():
        job = load_job(job_file, overrides, input_path=input_path, output_path=output_path)
        if not fresh:
            refreshed(job.output_path)  # what other machines answered of a remote output
        result = estimate_job(job, limit=limit, latency_s=latency_s, fresh=fresh)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
    else:
        click.echo("\n".join(result.lines()))


@main.command()
@job_options
@click.option(
    "--show", default=3, show_default=True, type=click.IntRange(min=0), help="How many requests to print."
)
@click.option("--json", "as_json", is_flag=True, help="Print the findings and requests as JSON.")
def validate(
    job_file: Path,
    input_path: Path | None,
    output_path: str | None,
    limit: int | None,
    overrides: tuple[str, ...],
    show: int,
    as_json: bool,
) -> None:
    """Check JOB_FILE as a run does before sending, and print its first requests as they would be sent.

    The job file, the API key's variable, prices for a budget, and every input row read and rendered;
    nothing is sent, nothing written. Keys and credentials print as ***.

    Exit codes: 0 a run would start, 2 it would not (the message says what to fix).
    """
    from batchrun.errors import BatchrunError
    from batchrun.job.loader import load_job
    from batchrun.report.preview import preview

    log = logging.getLogger("batchrun")
    with warnings_to_stderr():
        try:
            job = load_job(job_file, overrides, input_path=input_path, output_path=output_path)
            found = preview(job, limit=limit, show=show)
        except BatchrunError as exc:
            log.error("%s", exc)
            sys.exit(exc.exit_code)
    click.echo(
        json.dumps(found.as_dict(), indent=2, ensure_ascii=False) if as_json else "\n".join(found.lines())
    )


@main.command()
@job_options
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(
    job_file: Path,
    input_path: Path | None,
    output_path: str | None,
    limit: int | None,
    overrides: tuple[str, ...],
    as_json: bool,
) -> None:
    """Show where JOB_FILE's output stands: rows ok, failed and pending, the last run, a run going.

    Read from the run folder beside the output, without changing it: safe while a run goes, and after a
    kill. An output on an object store is read from this machine's mirror, first brought up to date with
    what every machine sent up. A sweep split by {variant} shows each variant's output.
    """
    from batchrun.job.loader import load_job
    from batchrun.job.sweep import split
    from batchrun.report.status import job_status
    from batchrun.store.remote import refreshed

    with user_errors():
        job = load_job(job_file, overrides, input_path=input_path, output_path=output_path)
        jobs = split(job)
        for one in jobs:
            refreshed(one.output_path)  # what other machines answered of a remote output
        found = [job_status(one, limit=limit) for one in jobs]
    echo_all(found, as_json)


@main.command()
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--html", "html_path", type=click.Path(path_type=Path), help="Also write a self-contained page."
)
@click.option(
    "--failed", default=5, show_default=True, type=click.IntRange(min=0), help="How many failed rows to list."
)
def report(output: Path, as_json: bool, html_path: Path | None, failed: int) -> None:
    """Summarize OUTPUT (any batchrun output Parquet): rows, errors, tokens, cost, latency, failed rows.

    Exit codes: 0 every row ok, 1 some rows failed, 2 not a readable batchrun output.
    """
    from batchrun.report.build import build_report

    with user_errors():
        result = build_report(output, failed=failed)
    if html_path is not None:
        from batchrun.report.html import write_html
        from batchrun.report.pagedata import gather

        try:
            write_html(gather(output), html_path)
        except OSError as exc:
            click.echo(f"batchrun: cannot write {html_path}: {exc.strerror or exc}", err=True)
            sys.exit(EXIT_USAGE)
    click.echo(json.dumps(result.as_dict(), indent=2, default=str) if as_json else "\n".join(result.lines()))
    if html_path is not None and not as_json:
        click.echo(f"html:    {html_path}")
    sys.exit(result.summary.exit_code)


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
        model = f"; model e.g. {preset.example_model}" if preset.example_model else ""
        click.echo(f"{'':<{width}}  key: {key}; {preset.description}{model}")
        click.echo(f"{'':<{width}}  batch: {preset.batch}")
