"""Where one `batchrun run`'s messages go: stderr, the log file beside the output, and the progress display.

- stderr: the `batchrun` logger's lines (`batchrun: ...`); with `--quiet` only warnings and errors.
- The log file `out/x.log` beside `out/x.parquet`, appended to by every run: the same lines with a UTC time
  and level, whatever `--quiet` says, plus a start line (job, input, output, version) and an end line (row
  counts, exit status), and progress lines every interval even when a terminal shows a live display.
- Progress: a live display (rich) when stderr is a terminal, else `progress:` log lines every interval.

The API key never reaches either: no message contains it, and a filter replaces it (and every other secret
of the run in progress: see `batchrun.redact`) with `***` should one ever try.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from batchrun.redact import current, redact
from batchrun.report.progress import ConsoleHandler, LiveDisplay, LogLines, Observer

log = logging.getLogger("batchrun")
# Start and end lines: the log file only (stderr has the summary for that).
file_only = logging.getLogger("batchrun.report.runlog")
file_only.propagate = False

STDERR_FORMAT = "batchrun: %(message)s"
FILE_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"


def log_path(output: Path) -> Path:
    """The log file of `output`: `out/x.parquet` -> `out/x.log`."""
    return output.with_name(output.stem + ".log")


class Redact(logging.Filter):
    """Replaces a secret (the API key), and those of the run in progress, in a record's message with `***`."""

    def __init__(self, secret: str | None) -> None:
        super().__init__()
        self.secrets = (secret,) if secret else ()

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the message when it holds a secret; keep every record."""
        message = record.getMessage()
        cleaned = redact(message, (*self.secrets, *current()))
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class _LogFile(logging.FileHandler):
    """The log file; one it cannot write (a full disk) is a one-line warning, not a traceback per line."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        """Stop writing the file and say so once on stderr, with no traceback."""
        log.removeHandler(self)
        file_only.removeHandler(self)
        self._warn("any more; going on without it")

    def close(self) -> None:
        """Close the file; lines still buffered that cannot be written are lost, with the same warning."""
        try:
            super().close()
        except OSError:
            self._warn("(its last lines are lost)")

    def _warn(self, what: str) -> None:
        if not self.failed:
            self.failed = True
            log.warning("cannot write the log file %s %s", self.baseFilename, what)


class Drop(logging.Filter):
    """Drops the records of one logger (progress lines, while a live display shows the same)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep every record not from the dropped logger or its children."""
        return not (record.name == self.name or record.name.startswith(self.name + "."))


@contextlib.contextmanager
def stderr_logging(stream: TextIO, *, quiet: bool) -> Iterator[logging.Handler]:
    """`batchrun` log lines to `stream` (warnings and errors only when `quiet`) while the block runs."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(STDERR_FORMAT))
    handler.setLevel(logging.WARNING if quiet else logging.INFO)
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        yield handler
    finally:
        log.removeHandler(handler)
        handler.close()


@contextlib.contextmanager
def file_logging(path: Path, *, secret: str | None) -> Iterator[None]:
    """Append every `batchrun` log line to `path` while the block runs; `secret` is redacted everywhere.

    A log file that cannot be written is worth a warning, not the run.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = _LogFile(path, mode="a", encoding="utf-8")
    except OSError as exc:
        log.warning("cannot write the log file %s (%s); going on without it", path, exc.strerror or exc)
        yield
        return
    formatter = logging.Formatter(FILE_FORMAT, datefmt="%Y-%m-%dT%H:%M:%SZ")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    handler.setLevel(logging.INFO)
    redacting = Redact(secret)
    others = list(log.handlers)
    handler.addFilter(redacting)
    for other in others:
        other.addFilter(redacting)
    log.addHandler(handler)
    file_only.addHandler(handler)
    file_only.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        file_only.removeHandler(handler)
        for other in others:
            other.removeFilter(redacting)
        handler.close()


@contextlib.contextmanager
def progress(
    stderr: logging.Handler, stream: TextIO, *, quiet: bool, interval_s: float, live: bool | None = None
) -> Iterator[list[Observer]]:
    """The observers of a run: `progress:` log lines, plus a live display when `stream` is a terminal.

    With a live display, the stderr handler is swapped for one printing above it, and progress lines go to
    the log file only. `live` forces the choice (tests); `quiet` never shows one.
    """
    lines = LogLines(interval_s)
    if quiet or not (stream.isatty() if live is None else live):
        yield [lines]
        return
    from rich.console import Console

    console = Console(file=stream)
    above = ConsoleHandler(console)
    above.setFormatter(stderr.formatter)
    above.setLevel(stderr.level)
    for existing in stderr.filters:
        above.addFilter(existing)
    above.addFilter(Drop("batchrun.report.progress"))
    log.removeHandler(stderr)
    log.addHandler(above)
    try:
        with LiveDisplay(console) as display:
            yield [display, lines]
    finally:
        log.removeHandler(above)
        log.addHandler(stderr)
