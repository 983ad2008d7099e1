"""An outage breaker: when the provider is down, pause the run and probe, instead of burning retries.

After `threshold` server-side failures in a row (5xx, 529, timeouts, dropped connections) with no success
in between, the breaker opens: requests wait, and one probe at a time goes out, at growing intervals. The
first success closes it and everyone resumes. The failure that opens it, and any while it is open, do not
count against their row's attempts (see `LiveEngine._attempt`), so an outage costs no row its answer. The
default threshold of 5 raises a false alarm (a 1 s pause) about once in three million requests when 5%
fail at random.
"""

from __future__ import annotations

import logging
import time

import anyio

from batchrun.errors import ErrorClass, ProviderError

log = logging.getLogger("batchrun")


class Breaker:
    """Opens on a run of server-side failures; one probe at a time while open; closes on a success."""

    def __init__(self, threshold: int = 5, first_probe_s: float = 1.0, max_probe_s: float = 60.0) -> None:
        self.threshold = threshold
        self.first_probe_s = first_probe_s
        self.max_probe_s = max_probe_s
        self._failures = 0
        self._open = False
        self._closed = anyio.Event()
        self._closed.set()
        self._probe_s = first_probe_s
        self._probing = False
        self._opened_at = 0.0

    @property
    def is_open(self) -> bool:
        """True while the provider is believed down."""
        return self._open

    @property
    def down_s(self) -> float:
        """Seconds since the breaker opened; 0 while closed."""
        return time.monotonic() - self._opened_at if self._open else 0.0

    def check_outage(self, max_outage_s: float) -> None:
        """Give up (a fatal error) once the provider has been down longer than `max_outage_s`."""
        down_s = self.down_s
        if down_s > max_outage_s:
            message = f"the provider has failed every request for {down_s:.0f} s ([limits] max_outage_s)"
            raise ProviderError(message, error_type="outage", error_class=ErrorClass.FATAL)

    async def admit(self) -> None:
        """Return when a request may go: at once when closed; when open, as the next probe or once closed."""
        while self._open:
            if not self._probing:
                self._probing = True
                await anyio.sleep(self._probe_s)
                return  # this caller is the probe; its outcome comes back through success() or failure()
            await self._closed.wait()

    def success(self) -> None:
        """A request succeeded: the provider is up."""
        self._failures = 0
        self._probing = False
        if self._open:
            log.warning("provider answering again after %.0f s; resuming", time.monotonic() - self._opened_at)
            self._open = False
            self._probe_s = self.first_probe_s
            self._closed.set()

    def failure(self) -> None:
        """A request failed on the provider's side (5xx, timeout, dropped connection)."""
        self._failures += 1
        if self._probing:
            self._probing = False
            self._probe_s = min(self._probe_s * 2, self.max_probe_s)
        if not self._open and self._failures >= self.threshold:
            self._open = True
            self._opened_at = time.monotonic()
            self._closed = anyio.Event()
            log.warning(
                "provider looks down (%d failures in a row); pausing, probing every %.0f-%.0f s",
                self._failures,
                self.first_probe_s,
                self.max_probe_s,
            )
