"""The pacer: requests spaced evenly at a rate, with no burst.

Providers enforce per-minute limits per second too (DashScope: RPM/60 in any second, maybe a sliding
window), so anything that lets a burst through earns 429s. `Pacer` therefore spaces requests evenly on a
virtual schedule (GCRA, the "virtual scheduling" form): it never saves up capacity while idle or paused,
so after any pause at most two requests go back to back.
"""

from __future__ import annotations

import math
import time

import anyio


class Pacer:
    """Lets units through at `rate_per_s`, evenly, first come first served.

    `_next` is when the next unit may go (GCRA's theoretical arrival time); taking `amount` moves it on by
    `amount / rate_per_s`. A take may find the schedule behind its own time by at most that one interval:
    a waiter that woke a little late is caught up (the rate does not sag), while idle time is never banked,
    so after any pause at most two takes go back to back. A cooldown moves the schedule later
    (`hold_until`); giving back unused units moves it earlier, never before a hold's end (a reply that
    arrives during a cooldown must not let a take through it), and a schedule in the past still counts as
    no more than one interval behind. `rate_per_s` may be changed at any time (math.inf: no pacing, only
    holds).
    """

    def __init__(self, rate_per_s: float = math.inf) -> None:
        self.rate_per_s = rate_per_s
        self._next = -math.inf
        self._held_until = -math.inf  # the latest hold's end: nothing given back moves the schedule before it
        self._lock = anyio.Lock()  # anyio's Lock is fair: waiters are served in arrival order

    def reserve(self, amount: float, now: float) -> float:
        """Take `amount` if its turn has come at `now` and return 0.0; else the seconds to its turn."""
        interval = amount / self.rate_per_s
        start = max(self._next, now - interval)
        if start > now:
            return start - now
        self._next = start + interval
        return 0.0

    async def take(self, amount: float = 1.0) -> None:
        """Wait for this take's turn on the schedule, then move the schedule on by `amount`."""
        if not self._lock.locked() and self.reserve(amount, time.monotonic()) == 0.0:
            return  # the usual case under the rate: no wait, no trip through the event loop
        async with self._lock:
            # Not a polling loop: each sleep lasts to the turn, which only a hold or a rate cut can move.
            while (wait := self.reserve(amount, time.monotonic())) > 0:  # noqa: ASYNC110
                await anyio.sleep(wait)

    def lease(self, amount: float, now: float) -> float:
        """Take `amount` at once for a holder that spaces it out itself (`batchrun.limits.leases`); return
        when its stretch of the schedule (`amount / rate_per_s` long) begins.

        It begins at `now` at the earliest: unlike a take, a lease catches nothing up.
        """
        start = max(self._next, now)
        self._next = start + amount / self.rate_per_s
        return start

    def hold_until(self, when: float) -> None:
        """Nothing goes before `when` (a cooldown); what was not sent meanwhile is not made up for."""
        self._next = max(self._next, when)
        self._held_until = max(self._held_until, when)

    def give_back(self, amount: float) -> None:
        """Return units taken but not used (or take more, with a negative amount)."""
        if math.isfinite(self._next):
            self._next = max(self._next - amount / self.rate_per_s, self._held_until)

    @property
    def waiting(self) -> bool:
        """True while a take is waiting for its turn."""
        return self._lock.locked()
