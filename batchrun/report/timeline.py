"""The run's timeline: its counters once a second, in `timeline.jsonl` in the run folder.

The journal says when each row's result came (`Result.finished_at`), but not what happened between: a
row's 429s and 5xx are attempts, not rows. A counter per attempt in the journal would grow every line of a
million-row run for what a few hundred lines say as well, so the run writes its running counts instead,
one line a second while they change (a line is ~250 bytes: a day-long run writes ~20 MB, a 10-minute run
150 KB). The report charts requests sent and retries by type from it; `batchrun status` reads its last
line for a run that is going.

Each run appends a start line, `{"start": UNIX seconds, "pid": N}`, then count lines:
`{"t": UNIX seconds, "elapsed_s", "sent", "ok", "failed", "reused", "in_flight", "waiting", "binding",
"cost_usd", "retries": {error_type: count}}`, each count since that run's start.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import orjson

from batchrun.report.progress import Snapshot, binding

TIMELINE = "timeline.jsonl"
INTERVAL_S = 1.0

log = logging.getLogger("batchrun")


def timeline_path(folder: Path) -> Path:
    """The timeline file in the run folder `folder`."""
    return folder / TIMELINE


class Timeline:
    """A progress observer that appends the run's counts to its timeline file, once a second.

    The file is opened for each line (one a second costs nothing) so no handle outlives the run. One that
    cannot be written (a full disk) is a warning once, never the run's failure.
    """

    interval_s = INTERVAL_S

    def __init__(self, folder: Path) -> None:
        self.path = timeline_path(folder)
        self._last: dict[str, Any] | None = None
        self._broken = False
        self._append({"start": round(time.time(), 3), "pid": os.getpid()})

    def update(self, snap: Snapshot, total: int | None) -> None:
        """Append the counts, unless nothing changed since the last line."""
        counts: dict[str, Any] = {
            "sent": snap.sent,
            "ok": snap.ok,
            "failed": snap.failed,
            "reused": snap.reused,
            "in_flight": snap.in_flight,
            "waiting": snap.waiting,
            "binding": binding(snap),
            "cost_usd": round(snap.cost_usd, 6),
            "retries": snap.retries,
        }
        if counts == self._last:
            return
        self._last = counts
        self._append({"t": round(time.time(), 3), "elapsed_s": round(snap.elapsed_s, 3), **counts})

    def _append(self, line: dict[str, Any]) -> None:
        if self._broken:
            return
        try:
            with self.path.open("ab") as file:
                file.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))
        except OSError as exc:
            self._broken = True
            log.warning("cannot write the run's timeline %s (%s); going on without it", self.path, exc)
