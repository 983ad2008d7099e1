"""What every `batchrun` command shares: the command group, the job options, exit codes and how errors end.

Heavy modules (polars, httpx, aiohttp) are imported inside the commands so `batchrun --help` stays fast.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from batchrun.errors import EXIT_INTERNAL

if TYPE_CHECKING:
    from batchrun.report.summary import Summary

EXIT_USAGE = 2
EXIT_STOPPED = 3


class Main(click.Group):
    """The command group; an exception no command expected (a bug) exits 4 with one line, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; report a bug as one line on stderr, its traceback in a file (exit 4)."""
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            report_bug(exc, None, None)


@click.group(cls=Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="batchrun")
def main() -> None:
    """Run bulk prompts through LLM APIs: a job file in, one Parquet row per prompt out."""


def report_bug(exc: BaseException, log_file: Path | None, secret: str | None) -> NoReturn:
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
        runlog.file_only.info("end: exit %d (%s)", EXIT_INTERNAL, EXIT_MEANING[EXIT_INTERNAL])
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


def job_options(command: Callable[..., Any]) -> Callable[..., Any]:
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
            "--output",
            "output_path",
            help="Output Parquet, a path or a URL such as s3://bucket/x.parquet ([output] path).",
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


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """A `BatchrunError` (bad job file, input or flags; a provider that cannot be reached) exits with its
    code and one line on stderr, no traceback."""
    from batchrun.errors import BatchrunError

    try:
        yield
    except BatchrunError as exc:
        click.echo(f"batchrun: {exc}", err=True)
        sys.exit(exc.exit_code)


def echo_all(found: Sequence[Any], as_json: bool) -> None:
    """Print each of `found` (its `lines()`, or one JSON object; a list of them for several)."""
    if as_json:
        data = [f.as_dict() for f in found]
        click.echo(json.dumps(data if len(data) > 1 else data[0], indent=2))
    else:
        click.echo("\n\n".join("\n".join(f.lines()) for f in found))


def exit_with(summaries: list[Summary], as_json: bool) -> NoReturn:
    """Print the summaries (one JSON object, or a list for several jobs) and exit with the worst code."""
    echo_all(summaries, as_json)
    sys.exit(max(s.exit_code for s in summaries))


EXIT_MEANING = {  # what each exit code means, for the log file
    0: "every row ok",
    1: "finished, some rows failed",
    EXIT_USAGE: "bad job file, input or flags",
    EXIT_STOPPED: "stopped early; a rerun resumes",
    EXIT_INTERNAL: "internal error, a bug: the traceback is above",
}


def package_version() -> str:
    """batchrun's installed version (for the log file)."""
    from importlib.metadata import version

    return version("batchrun")


def warnings_to_stderr() -> Any:
    """`batchrun:` warnings and errors on stderr while a command runs (bad rows a job lets through)."""
    from batchrun.report import runlog

    return runlog.stderr_logging(sys.stderr, quiet=True)
