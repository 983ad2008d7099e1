"""The `batchrun` command: parse, call the library, report. Exit codes follow Contract 3.

Heavy modules (polars, httpx, aiohttp) are imported inside the commands so `batchrun --help` stays fast.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from batchrun.errors import EXIT_INTERNAL

if TYPE_CHECKING:
    from batchrun.job.schema import Job
    from batchrun.report.summary import Summary

EXIT_USAGE = 2
EXIT_STOPPED = 3


class _Main(click.Group):
    """The command group; an exception no command expected (a bug) exits 4 with one line, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; report a bug as one line on stderr, its traceback in a file (exit 4)."""
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            _report_bug(exc, None, None)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="batchrun")
def main() -> None:
    """Run bulk prompts through LLM APIs: a job file in, one Parquet row per prompt out."""


def _report_bug(exc: BaseException, log_file: Path | None, secret: str | None) -> NoReturn:
    """Exit 4: the traceback goes to `log_file` (else a file of its own), one line to stderr says where."""
    import tempfile
    import traceback

    from batchrun.redact import redact
    from batchrun.report import runlog

    secrets = (secret,) if secret else ()  # the run's own `hiding` has ended by the time a bug gets here
    text = redact("".join(traceback.format_exception(exc)), secrets)
    where: Path | None = None
    if log_file is not None and runlog.file_only.handlers:
        runlog.file_only.error("internal error (a bug in batchrun); its traceback:\n%s", text.rstrip())
        runlog.file_only.info("end: exit %d (%s)", EXIT_INTERNAL, _EXIT_MEANING[EXIT_INTERNAL])
        where = log_file
    else:
        try:
            fd, name = tempfile.mkstemp(prefix="batchrun-internal-error-", suffix=".log")
            with open(fd, "w", encoding="utf-8") as file:
                file.write(text)
            where = Path(name)
        except OSError:
            where = None
    message = redact(str(exc), secrets).strip()  # redacted whole, then cut: no half a secret left
    first = message.splitlines()[0][:200] if message else ""
    found = f"; the traceback is in {where}. Please report it with that file" if where else ""
    name = type(exc).__name__
    click.echo(f"batchrun: internal error (a bug in batchrun): {name}: {first}{found}.", err=True)
    sys.exit(EXIT_INTERNAL)


def _job_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """JOB_FILE and the options that change what it runs: --input, --output, --limit, --set, --batch.

    `--batch` is a short form of `--set batch.enabled=true`: the command sees it among the overrides.
    """

    @functools.wraps(command)
    def with_batch(*args: Any, batch: bool, overrides: tuple[str, ...], **kwargs: Any) -> Any:
        if batch:
            overrides = (*overrides, "batch.enabled=true")
        return command(*args, overrides=overrides, **kwargs)

    options = [
        click.argument("job_file", type=click.Path(path_type=Path)),
        click.option(
            "--input",
            "input_path",
            type=click.Path(path_type=Path),
            help="Prompt set (overrides [input] path).",
        ),
        click.option(
            "--output", "output_path", type=click.Path(path_type=Path), help="Output Parquet ([output] path)."
        ),
        click.option("--limit", type=click.IntRange(min=1), help="Only the first N rows."),
        click.option(
            "--set",
            "overrides",
            multiple=True,
            metavar="SECTION.KEY=VALUE",
            help="Override a job-file key, e.g. --set limits.concurrency=8 (repeatable).",
        ),
        click.option(
            "--batch",
            is_flag=True,
            help="Through the provider's Batch API, at its batch price (--set batch.enabled=true).",
        ),
    ]
    wrapped: Callable[..., Any] = with_batch
    for option in reversed(options):
        wrapped = option(wrapped)
    return wrapped


@main.command()
@_job_options
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
    output_path: Path | None,
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
    from batchrun.job.schema import load_job
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
    _exit_with(summaries, as_json)


def _exit_with(summaries: list[Summary], as_json: bool) -> NoReturn:
    """Print the summaries (one JSON object, or a list for several jobs) and exit with the worst code."""
    if as_json:
        data = [s.as_dict() for s in summaries]
        click.echo(json.dumps(data if len(data) > 1 else data[0], indent=2))
    else:
        click.echo("\n\n".join("\n".join(s.lines()) for s in summaries))
    sys.exit(max(s.exit_code for s in summaries))


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

    log = logging.getLogger("batchrun")
    env = job.provider.api_key_env
    secret = read_key(env) if env else None
    with runlog.file_logging(runlog.log_path(job.output_path), secret=secret):
        log.info("%s: %s -> %s", job.name, job.input.path, job.output_path)
        runlog.file_only.info(
            "start: job %s (%s), model %s, limit %s%s, batchrun %s, pid %d",
            job.name,
            job.source,
            job.provider.model,
            limit,
            ", fresh" if fresh else "",
            _version(),
            os.getpid(),
        )
        try:
            with runlog.progress(stderr, sys.stderr, quiet=quiet, interval_s=interval_s) as observers:
                summary = run_job(job, limit=limit, fresh=fresh, observers=observers)
        except BatchrunError as exc:
            log.error("%s", exc)
            runlog.file_only.info("end: exit %d (%s)", exc.exit_code, _EXIT_MEANING[exc.exit_code])
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            log.error("interrupted; what finished is saved, rerun the same command to resume.")
            runlog.file_only.info("end: exit %d (%s)", EXIT_STOPPED, _EXIT_MEANING[EXIT_STOPPED])
            sys.exit(EXIT_STOPPED)
        except Exception as exc:
            _report_bug(exc, runlog.log_path(job.output_path), secret)
        for line in summary.lines():
            runlog.file_only.info("summary: %s", line)
        code = summary.exit_code
        runlog.file_only.info(
            "end: exit %d (%s): %d rows, %d ok, %d failed",
            code,
            _EXIT_MEANING[code],
            summary.rows,
            summary.ok,
            summary.failed,
        )
    return summary


_EXIT_MEANING = {
    0: "every row ok",
    1: "finished, some rows failed",
    EXIT_USAGE: "bad job file, input or flags",
    EXIT_STOPPED: "stopped early; a rerun resumes",
    EXIT_INTERNAL: "internal error, a bug: the traceback is above",
}


def _version() -> str:
    from importlib.metadata import version

    return version("batchrun")


@main.command()
@_job_options
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
    output_path: Path | None,
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
    from batchrun.errors import BatchrunError
    from batchrun.job.schema import load_job
    from batchrun.money.estimate import estimate_job

    try:
        job = load_job(job_file, overrides, input_path=input_path, output_path=output_path)
        result = estimate_job(job, limit=limit, latency_s=latency_s, fresh=fresh)
    except BatchrunError as exc:
        click.echo(f"batchrun: {exc}", err=True)
        sys.exit(exc.exit_code)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
    else:
        click.echo("\n".join(result.lines()))


@main.command()
@_job_options
@click.option(
    "--show", default=3, show_default=True, type=click.IntRange(min=0), help="How many requests to print."
)
@click.option("--json", "as_json", is_flag=True, help="Print the findings and requests as JSON.")
def validate(
    job_file: Path,
    input_path: Path | None,
    output_path: Path | None,
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
    from batchrun.job.schema import load_job
    from batchrun.report.preview import preview

    log = logging.getLogger("batchrun")
    with _warnings_to_stderr():
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
@_job_options
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(
    job_file: Path,
    input_path: Path | None,
    output_path: Path | None,
    limit: int | None,
    overrides: tuple[str, ...],
    as_json: bool,
) -> None:
    """Show where JOB_FILE's output stands: rows ok, failed and pending, the last run, a run going.

    Read from the run folder beside the output, without changing it: safe while a run goes, and after a
    kill. A sweep split by {variant} shows each variant's output.
    """
    from batchrun.errors import BatchrunError
    from batchrun.job.schema import load_job
    from batchrun.job.sweep import split
    from batchrun.report.status import job_status

    try:
        job = load_job(job_file, overrides, input_path=input_path, output_path=output_path)
        found = [job_status(one, limit=limit) for one in split(job)]
    except BatchrunError as exc:
        click.echo(f"batchrun: {exc}", err=True)
        sys.exit(exc.exit_code)
    if as_json:
        data = [f.as_dict() for f in found]
        click.echo(json.dumps(data if len(data) > 1 else data[0], indent=2))
    else:
        click.echo("\n\n".join("\n".join(f.lines()) for f in found))


def _warnings_to_stderr() -> Any:
    """`batchrun:` warnings and errors on stderr while a command runs (bad rows a job lets through)."""
    from batchrun.report import runlog

    return runlog.stderr_logging(sys.stderr, quiet=True)


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
    from batchrun.errors import BatchrunError
    from batchrun.report.build import build_report

    try:
        result = build_report(output, failed=failed)
    except BatchrunError as exc:
        click.echo(f"batchrun: {exc}", err=True)
        sys.exit(exc.exit_code)
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
@click.argument("job_file", type=click.Path(path_type=Path))
@click.option(
    "--output", "output_path", type=click.Path(path_type=Path), help="Output Parquet ([output] path)."
)
@click.option(
    "--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override a job-file key."
)
def cancel(job_file: Path, output_path: Path | None, overrides: tuple[str, ...]) -> None:
    """Cancel JOB_FILE's Batch API batches still running at the provider (stop its run first).

    Their unanswered rows stay pending; the next run sends them again (in new batches, or live).
    Exit codes: 0 done (or nothing to cancel), 2 bad job file, 3 the provider could not be reached.
    """
    from batchrun.engines.batchcancel import cancel_batches
    from batchrun.errors import BatchrunError
    from batchrun.job.schema import load_job

    try:
        job = load_job(job_file, overrides, output_path=output_path)
        cancelled = cancel_batches(job)
    except BatchrunError as exc:
        click.echo(f"batchrun: {exc}", err=True)
        sys.exit(exc.exit_code)
    if not cancelled:
        click.echo(f"no batches of {job.output_path} are running")
    for info in cancelled:
        click.echo(f"{info.id}: {info.status}")


@main.command()
@_job_options
@click.option("--shards", "count", type=click.IntRange(min=1), help="N, when shards of several counts exist.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def merge(
    job_file: Path,
    input_path: Path | None,
    output_path: Path | None,
    limit: int | None,
    overrides: tuple[str, ...],
    count: int | None,
    as_json: bool,
) -> None:
    """Write JOB_FILE's output from its shards' outputs (`run --shard I/N`), as one run would have.

    Give the options the shards ran with (--set, --input, --limit). Exit codes: 0 every row ok, 1 some rows
    failed, 2 a shard is missing (named), still running, or does not match the input, 3 some rows pending.
    """
    from batchrun.errors import BatchrunError
    from batchrun.job.schema import load_job
    from batchrun.job.sweep import split
    from batchrun.store.merge import merge_shards

    try:
        job = load_job(job_file, overrides, input_path=input_path, output_path=output_path)
        summaries = [merge_shards(one, count=count, limit=limit) for one in split(job)]
    except BatchrunError as exc:
        click.echo(f"batchrun: {exc}", err=True)
        sys.exit(exc.exit_code)
    _exit_with(summaries, as_json)


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


def _share(name: str, what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A 0-1 option for one injected fault."""
    flag = "--" + name.replace("_", "-")
    return click.option(flag, name, default=0.0, show_default=True, help=f"Share of requests {what} (0-1).")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, help="Port to listen on (0: any free port).")
@click.option("--latency", "latency_s", default=0.0, show_default=True, help="Seconds before each reply.")
@click.option("--rpm", "requests_per_minute", type=float, help="Enforce this many requests per minute.")
@click.option("--tpm", "tokens_per_minute", type=float, help="Enforce this many tokens per minute.")
@click.option(
    "--limit-window",
    type=click.Choice(["bucket", "sliding", "second", "minute"]),
    default="bucket",
    show_default=True,
    help="How --rpm/--tpm are enforced: a bucket of one second's worth, a sliding or fixed (clock) "
    "one-second window of limit/60, or a fixed clock minute of the whole limit.",
)
@click.option(
    "--rate-limit-headers/--no-rate-limit-headers",
    default=True,
    show_default=True,
    help="Send x-ratelimit-* and retry-after headers (off: bare 429s, as DashScope).",
)
@_share("rate_429", "answered 429")
@_share("rate_500", "answered 500")
@_share("rate_502", "answered 502")
@_share("rate_503", "answered 503")
@_share("rate_529", "answered 529 (overloaded)")
@_share("rate_drop", "whose connection is dropped")
@_share("rate_truncate", "whose body is cut short")
@_share("rate_slow", "answered late (see --slow)")
@click.option("--slow", "slow_s", default=5.0, show_default=True, help="Extra seconds for a slow reply.")
@click.option(
    "--outage-after", "outage_after_s", type=float, help="Start a total outage after this many seconds."
)
@click.option("--outage", "outage_s", default=0.0, show_default=True, help="How long the outage lasts (s).")
@click.option(
    "--retry-after", "retry_after_s", default=0.05, show_default=True, help="Seconds a fault 429 asks for."
)
@click.option("--api-key-env", help="Require the key held by this environment variable (else any key works).")
@click.option("--seed", default=0, show_default=True, help="Seed for the fault pattern.")
@click.option("--batch-validating", "batch_validating_s", default=0.05, help="Batch API: seconds validating.")
@click.option("--batch-working", "batch_in_progress_s", default=0.2, help="Batch API: seconds in_progress.")
@click.option("--batch-finalizing", "batch_finalizing_s", default=0.05, help="Batch API: seconds finalizing.")
@click.option(
    "--batch-expire-after", "batch_expire_after_s", type=float, help="Batch API: seconds to expiry."
)
@click.option(
    "--batch-line-errors", "batch_line_error_rate", default=0.0, help="Batch API: share of 500 lines."
)
@click.option("--batch-error-shape", type=click.Choice(["openai", "dashscope"]), default="openai")
@click.option("--batch-model", "batch_models", multiple=True, help="Batch API: a model it takes (else all).")
def emulate(host: str, port: int, api_key_env: str | None, **behaviour: Any) -> None:
    """Serve a local OpenAI- and Anthropic-compatible API: deterministic replies, limits, faults."""
    from batchrun.emulator import EmulatorConfig, serve
    from batchrun.emulator.batchconfig import BatchConfig
    from batchrun.net.endpoint import read_key

    api_key = None
    if api_key_env:
        api_key = read_key(api_key_env)  # read as a job reads it, so both sides agree on the key
        if api_key is None:
            raise click.BadParameter(
                f"the environment variable {api_key_env} is not set or is empty", param_hint="--api-key-env"
            )
    batch = {name[6:]: behaviour.pop(name) for name in list(behaviour) if name.startswith("batch_")}
    try:
        batch["models"] = batch["models"] or None  # no --batch-model: every model may batch
        config = EmulatorConfig(api_key=api_key, batch=BatchConfig(**batch), **behaviour)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    serve(config, host=host, port=port)
