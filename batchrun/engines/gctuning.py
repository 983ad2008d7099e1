"""Garbage collection tuned for a run: fewer, shorter pauses while a thousand requests are in flight.

Measured on a 20,000-row run at 1,024 in flight: CPython's collector paused the event loop for 0.38 s in
all (up to 59 ms at once, every request in flight waiting behind it), most of it walking objects that live
for the whole run (polars, pyarrow and the job's own modules) and in young collections every 700 allocations
while each row allocates dozens. Freezing what exists at the start takes those objects out of every
collection; a higher young threshold makes collections rarer. Together: 0.06 s, no pause over 24 ms.
Garbage made during the run, in reference cycles too (an exception and its traceback), is still collected,
a little later; an object alive at the start that becomes cyclic garbage waits for the end of the run.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG_THRESHOLD = 10_000  # allocations between two young collections at least (CPython's default: 700-2,000)


class _Tuning:
    """The process's collector settings, tuned while any run is open (runs may share a process's threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = 0  # runs in progress: the first one in tunes, the last one out restores
        self.saved: tuple[int, ...] = ()
        self.froze = False

    def enter(self) -> None:
        with self.lock:
            if self.active == 0:
                self.saved = gc.get_threshold()
                # A program that froze objects itself (before a fork, say) keeps them frozen after us.
                self.froze = gc.get_freeze_count() == 0
                if self.froze:
                    gc.freeze()
                young = self.saved[0]
                if 0 < young < YOUNG_THRESHOLD:  # 0: automatic collection is off, and stays off
                    gc.set_threshold(YOUNG_THRESHOLD, *self.saved[1:])
            self.active += 1

    def exit(self) -> None:
        with self.lock:
            self.active -= 1
            if self.active == 0:
                gc.set_threshold(*self.saved)
                if self.froze:
                    gc.unfreeze()


_TUNING = _Tuning()


@contextmanager
def quiet_gc() -> Iterator[None]:
    """Within the block: objects alive at its start are not collected, young collections are rarer.

    The settings before it come back once the last block open in the process ends, so a program that runs
    jobs from its own code keeps its own (a freeze of its own, or a young threshold already higher or off).
    """
    _TUNING.enter()
    try:
        yield
    finally:
        _TUNING.exit()
