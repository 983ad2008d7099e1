"""One exception tree for batchrun; every message says what to fix.

```
BatchrunError                 base; `exit_code` is what the CLI exits with
├── UsageError                exit 2: bad job file, input or flags; nothing was sent
│   ├── JobFileError          names the file and the key
│   └── InputError            names the input file, and the row or column
├── StopRun                   exit 3: the run cannot go on (bad key, unpaid account, unknown model)
└── ProviderError             one failed request (HTTP error, timeout, bad reply); carries its class
```

A `ProviderError` never reaches the user as an exception: a retryable one is retried, a row error becomes a
row with `status = "error"`, and a fatal one is turned into `StopRun` by the runner. A file batchrun cannot
write (a full disk) becomes `UsageError` before the first request and `StopRun` after
(`user_error`). Any other exception is a bug: the CLI exits `EXIT_INTERNAL` (4), writes the
traceback to the run's log file and prints one line saying where it is.
"""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from batchrun.redact import first_line

if TYPE_CHECKING:
    from batchrun.report.summary import Summary

EXIT_INTERNAL = 4
"""The exit code of an unexpected exception: a bug in batchrun, not a mistake of the user's."""


class BatchrunError(Exception):
    """Base of every error batchrun raises on purpose."""

    exit_code = 1


class UsageError(BatchrunError):
    """The job file, the input or the command line is wrong; nothing was sent (exit 2)."""

    exit_code = 2


class JobFileError(UsageError):
    """A job file that cannot be read or does not validate; the message names the file and the key."""

    def __init__(self, path: Path | str, message: str, key: str | None = None) -> None:
        self.path = Path(path)
        self.key = key
        where = f"{self.path}: [{key}] " if key else f"{self.path}: "
        super().__init__(where + message)


class InputError(UsageError):
    """A prompt set that cannot be read or rendered; the message names the file and the row or column."""

    def __init__(self, path: Path | str, message: str) -> None:
        self.path = Path(path)
        super().__init__(f"{self.path}: {message}")


class StopRun(BatchrunError):
    """The run stopped early; what finished is saved and a rerun resumes (exit 3).

    `summary` is what the output written at the stop holds (None when none was written).
    """

    exit_code = 3

    def __init__(self, message: str, summary: Summary | None = None) -> None:
        super().__init__(message)
        self.summary = summary


class ErrorClass(enum.Enum):
    """What a failed request means for the run."""

    RETRY = "retry"  # try again after a wait: 429 too fast, 5xx, timeouts, dropped connections
    ROW = "row"  # this row fails, the run goes on: 400, content moderation, context too long
    FATAL = "fatal"  # no request can succeed: bad key, unpaid account, unknown model


class ProviderError(BatchrunError):
    """One request failed; `error_class` says whether to retry, fail the row, or stop the run.

    `error_type` is the short name that lands in the output's `error_type` column
    (`rate_limited`, `server_error`, `timeout`, `connection`, `bad_request`, `auth`, ...).
    """

    def __init__(
        self,
        message: str,
        *,
        error_type: str,
        error_class: ErrorClass,
        status: int | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type
        self.error_class = error_class
        self.status = status
        self.code = code
        self.retry_after_s = retry_after_s

    @property
    def retryable(self) -> bool:
        """True when another attempt may succeed."""
        return self.error_class is ErrorClass.RETRY


def user_error(exc: BaseException, *, sent: bool, folder: Path) -> BatchrunError | None:
    """What `exc`, raised from a run (perhaps inside a task group's exception group), means for the user.

    A `BatchrunError` stays itself (a `UsageError` after requests went out becomes a `StopRun`: exit 2
    promises nothing was sent); a file that cannot be written (disk full, permissions) is a `UsageError`
    before anything was sent and a `StopRun` after (an `OSError` reaching here is the disk's, not the
    network's: the transport turns those into `ProviderError`s). None for anything else: a bug.
    """
    leaves = _leaves(exc)
    known = [leaf for leaf in leaves if isinstance(leaf, BatchrunError)]
    if known:
        error = known[0]
        if sent and isinstance(error, UsageError):
            return StopRun(f"{error}\nWhat finished is saved in {folder}; rerun to resume.")
        return error
    storage = [leaf for leaf in leaves if isinstance(leaf, OSError) or _is_duckdb_io(leaf)]
    if not storage:
        return None
    leaf = storage[0]
    where = getattr(leaf, "filename", None) or folder
    reason = getattr(leaf, "strerror", None) or first_line(leaf, 300)
    if not sent:
        return UsageError(f"{where}: {reason}. Nothing was sent; fix that (free some space?), then rerun.")
    return StopRun(
        f"Stopped: {where}: {reason}.\nFix that (free some space?), then rerun the same command to resume: "
        f"the answers journaled in {folder} are not paid for again."
    )


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or `exc` itself."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _is_duckdb_io(exc: BaseException) -> bool:
    """DuckDB's own error for a write that failed (a full disk while assembling the output)."""
    duckdb = sys.modules.get("duckdb")
    return duckdb is not None and isinstance(exc, duckdb.IOException)
