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
row with `status = "error"`, and a fatal one is turned into `StopRun` by the runner.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from batchrun.summary import Summary


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
