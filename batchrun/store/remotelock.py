"""The lock of an output on an object store: `x.parquet.run/lock.json`, naming the run that uses it.

An object store has no flock, and pyarrow's filesystems no compare-and-swap: the run writes its token with
a heartbeat, waits `LOCK_SETTLE_SECONDS` and reads it back (of two runs starting together, the one whose
write lost sees the other's). The heartbeat is refreshed every `LOCK_REFRESH_SECONDS`; a lock silent for
`LOCK_STALE_SECONDS` is nobody's, as is one of a run killed on this machine.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any

from batchrun.errors import BatchrunError, UsageError
from batchrun.redact import excerpt, first_line
from batchrun.store.mirror import read_small

if TYPE_CHECKING:
    import pyarrow.fs as pafs

__all__ = ["LOCK", "StoreLock"]

LOCK = "lock.json"
LOCK_REFRESH_SECONDS = 30.0
LOCK_STALE_SECONDS = 120.0
LOCK_SETTLE_SECONDS = 1.0  # two runs taking the lock at once: after this, the one whose write lost sees it

log = logging.getLogger("batchrun")


class StoreLock:
    """The lock object of one output's run folder on a store (module docstring)."""

    def __init__(self, fs: pafs.FileSystem, folder: str, url: str) -> None:
        self.fs = fs
        self.path = f"{folder}/{LOCK}"
        self.url = url
        self.token = uuid.uuid4().hex

    def take(self) -> None:
        """Take the lock, or UsageError (exit 2, nothing sent) naming the run that holds it."""
        try:
            holder = self.holder()
            if holder is not None and holder.get("token") != self.token:
                self._refuse(holder)
            self._write()
            time.sleep(LOCK_SETTLE_SECONDS)
            holder = self.holder()
        except BatchrunError:
            raise
        except Exception as exc:  # any filesystem's error
            raise UsageError(f"cannot use {self.url}: {first_line(exc, 300)}. Nothing was sent.") from None
        if holder is None or holder.get("token") != self.token:
            self._refuse(holder or {})

    def refresh(self) -> None:
        """Write the lock again, unless another run has taken it meanwhile (this one was silent too
        long): that is said loudly, and left to it."""
        holder = self.holder()
        if holder is not None and holder.get("token") != self.token:
            log.error(
                "%s: the lock was taken by a run on %s while this one could not reach the store; "
                "both may send the same rows. Stop one of them.",
                self.url,
                _holder_name(holder),
            )
            return
        self._write()

    def holder(self) -> dict[str, Any] | None:
        """The lock's content while it is fresh; None when there is none or its run has gone silent."""
        data = read_small(self.fs, self.path, 4096)
        if data is None:
            return None
        try:
            holder = json.loads(data)
        except ValueError:  # not batchrun's (or cut short): nobody's lock
            return None
        if not isinstance(holder, dict):
            return None
        beat = holder.get("heartbeat")
        if not isinstance(beat, int | float) or time.time() - beat > LOCK_STALE_SECONDS:
            return None
        if holder.get("host") == socket.gethostname()[:64] and not _alive(holder.get("pid")):
            return None  # a run killed on this machine: no need to wait for its lock to go stale
        return holder

    def _refuse(self, holder: dict[str, Any]) -> None:
        raise UsageError(
            f"{self.url} is in use by a batchrun run on {_holder_name(holder)}: wait for it to end, or stop "
            "it; two runs of one job at once would send every row twice. A run silent for "
            f"{LOCK_STALE_SECONDS:.0f} s loses the lock. Nothing was sent."
        )

    def _write(self) -> None:
        body = {"host": socket.gethostname()[:64], "pid": os.getpid(), "token": self.token}
        with self.fs.open_output_stream(self.path) as out:
            out.write(json.dumps(body | {"heartbeat": time.time()}).encode())

    def release(self) -> None:
        """Delete the lock if it is still this run's."""
        holder = self.holder()
        if holder is not None and holder.get("token") == self.token:
            self.fs.delete_file(self.path)

    def running_elsewhere(self) -> str | None:
        """Who holds the lock ("host (pid N)"), or None when no run holds it."""
        holder = self.holder()
        return None if holder is None else _holder_name(holder)


def _holder_name(holder: dict[str, Any]) -> str:
    """The run a lock names, "host (pid N)", bounded and redacted (the lock's text is anyone's)."""
    return excerpt(f"{holder.get('host', 'another machine')} (pid {holder.get('pid', '?')})", 80)


def _alive(pid: object) -> bool:
    """Whether a process of this machine with this pid lives (True when that cannot be told)."""
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, as another user's
    return True
