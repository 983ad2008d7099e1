"""`batchrun run`, and what works on a run's batches and shards: `cancel`, `merge`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from batchrun.cli.common import (
    EXIT_MEANING,
    EXIT_STOPPED,
    exit_with,
    job_options,
    main,
    package_version,
    report_bug,
    user_errors,
)

if TYPE_CHECKING:
    from batchrun.job.schema import Job
    from batchrun.report.summary import Summary


@main.command()
@job_options
@click.option(
    "--fresh", is_flag=True, help="Forget answers journaled by earlier runs and send every row again."
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (for scripts).")
@click.option(
    "-q", "--quiet", is_flag=True, help="No progress and no info lines on stderr: warnings, errors, summary."
)
@click.option(
    "--progress-interval",
    "interval_s",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0.01),
    help="Seconds between progress lines when stderr is not a terminal (and in the log file).",
)
@click.option(
    "--shard",
    metavar="I/N",
    help="Run only shard I (from 0) of N, into its own output (x.shard-I-of-N.parquet); I may name an "
    "environment variable, e.g. JOB_COMPLETION_INDEX/4. `batchrun merge` joins the shards.",
)
@click.option(
    "--shard-limits",
    type=click.Choice(["divided", "whole"]),
    default="divided",
    show_default=True,
    help="A shard runs at 1/N of the RPM/TPM limits, or at the whole limits (each shard has its own key).",
)
def run(
    job_file: Path,
    input_path: Path | None,
    output_path: str | None,
    limit: int | None,
    overrides: tuple[str, ...],
    fresh: bool,
    as_json: bool,
    quiet: bool,
    interval_s: float,
    shard: str | None,
    shard_limits: str,
) -> None:
    """Run JOB_FILE: send every row, write the output Parquet, print a summary.

    Progress shows live on a terminal, as a log line every --progress-interval seconds otherwise. Beside the
    output `out/x.parquet` go `out/x.summary.json` (the summary, or why the run stopped) and `out/x.log`.

    Exit codes: 0 every row ok, 1 some rows failed, 2 bad job file / input / flags (nothing sent),
    3 stopped early (bad key, no balance, budget, disk full, interrupt; a rerun resumes), 4 internal error
    (a bug: the traceback is in the log file).
    """
    from batchrun.errors import BatchrunError
    from batchrun.job.loader import load_job
    from batchrun.job.sweep import split
    from batchrun.report import runlog

    log = logging.getLogger("batchrun")
    with runlog.stderr_logging(sys.stderr, quiet=quiet) as stderr:
        try:
            job = load_job(job_file, overrides, input_path=input_path, output_path=output_path)
            if shard is not None:
                job = _shard(job, shard, shard_limits)
            jobs = split(job)  # one per variant when the output path has {variant}
        except BatchrunError as exc:
            log.error("%s", exc)
            sys.exit(exc.exit_code)
        summaries = [_run_one(one, stderr, limit, fresh, quiet, interval_s) for one in jobs]
    exit_with(summaries, as_json)


def _shard(job: Job, spec: str, limits: str) -> Job:
    """`job` as the shard `spec` (`I/N`) runs it."""
    import os

    from batchrun.job.shards import parse_shard, shard_job

    return shard_job(job, parse_shard(spec, os.environ), divide_limits=limits == "divided")


def _run_one(
    job: Job, stderr: logging.Handler, limit: int | None, fresh: bool, quiet: bool, interval_s: float
) -> Summary:
    """Run one job with its log file and progress display; exit the process when it stops early."""
    import os

    from batchrun.engines.run import run_job
    from batchrun.errors import BatchrunError
    from batchrun.net.endpoint import read_key
    from batchrun.report import runlog
    from batchrun.store.mirror import shown

    log = logging.getLogger("batchrun")
    env = job.provider.api_key_env
    secret = read_key(env) if env else None
    with runlog.file_logging(runlog.log_path(job.output_path), secret=secret):
        log.info("%s: %s -> %s", job.name, job.input.path, shown(job.output_path))
        runlog.file_only.info(
            "start: job %s (%s), model %s, limit %s%s, batchrun %s, pid %d",
            job.name,
            job.source,
            job.provider.model,
            limit,
            ", fresh" if fresh else "",
            package_version(),
            os.getpid(),
        )
        try:
            with runlog.progress(stderr, sys.stderr, quiet=quiet, interval_s=interval_s) as observers:
                summary = run_job(job, limit=limit, fresh=fresh, observers=observers)
        except BatchrunError as exc:
            log.error("%s", exc)
            runlog.file_only.info("end: exit %d (%s)", exc.exit_code, EXIT_MEANING[exc.exit_code])
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            log.error("interrupted; what finished is saved, rerun the same command to resume.")
            runlog.file_only.info("end: exit %d (%s)", EXIT_STOPPED, EXIT_MEANING[EXIT_STOPPED])
            sys.exit(EXIT_STOPPED)
        except Exception as exc:
            report_bug(exc, runlog.log_path(job.output_path), secret)
        for line in summary.lines():
            runlog.file_only.info("summary: %s", line)
        code = summary.exit_code
        runlog.file_only.info(
            "end: exit %d (%s): %d rows, %d ok, %d failed",
            code,
            EXIT_MEANING[code],
            summary.rows,
            summary.ok,
            summary.failed,
        )
    return summary


@main.command()
@click.argument("job_file", type=click.Path(path_type=Path))
@click.option(
    "--output",
    "output_path",
    help="Output Parquet, a path or a URL such as s3://bucket/x.parquet ([output] path).",
)
@click.option(
    "--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override a job-file key."
)
def cancel(job_file: Path, output_path: str | None, overrides: tuple[str, ...]) -> None:
    """Cancel JOB_FILE's Batch API batches still running at the provider (stop its run first).

    Their unanswered rows stay pending; the next run sends them again (in new batches, or live).
    Exit codes: 0 done (or nothing to cancel), 2 bad job file, 3 the provider could not be reached.
    """
    from batchrun.engines.batchcancel import cancel_batches
    from batchrun.job.loader import load_job

    with user_errors():
        job = load_job(job_file, overrides, output_path=output_path)
        cancelled = cancel_batches(job)
    if not cancelled:
        click.echo(f"no batches of {job.output_path} are running")
    for info in cancelled:
        click.echo(f"{info.id}: {info.status}")


@main.command()
@job_options
@click.option("--shards", "count", type=click.IntRange(min=1), help="N, when shards of several counts exist.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def merge(
    job_file: Path,
    input_path: Path | None,
    output_path: str | None,
    limit: int | None,
    overrides: tuple[str, ...],
    count: int | None,
    as_json: bool,
) -> None:
    """Write JOB_FILE's output from its shards' outputs (`run --shard I/N`), as one run would have.

    Give the options the shards ran with (--set, --input, --limit). Exit codes: 0 every row ok, 1 some rows
    failed, 2 a shard is missing (named), still running, or does not match the input, 3 some rows pending.
    """
    from batchrun.job.loader import load_job
    from batchrun.job.sweep import split
    from batchrun.store.merge import merge_shards

    with user_errors():
        job = load_job(job_file, overrides, input_path=input_path, output_path=output_path)
        summaries = [merge_shards(one, count=count, limit=limit) for one in split(job)]
    exit_with(summaries, as_json)
