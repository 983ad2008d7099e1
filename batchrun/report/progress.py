"""What a run shows while it goes: a live display on a terminal, periodic log lines elsewhere.

One task samples the runner's counters on a timer (`watch`) and hands a read-only `Snapshot` to an
observer; nothing is done per row for display. Observers:

- `LogLines`: a `batchrun: progress ...` line through the `batchrun.report.progress` logger every `interval_s`
  (stderr and the run's log file; what cron and CI see).
- `LiveDisplay`: a few lines redrawn in place on a terminal with rich, imported only when one is shown so
  `batchrun --help` stays fast.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from anyio.abc import TaskStatus

from batchrun import humanize

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live

LIVE_REFRESH_S = 0.25  # how often the terminal display is redrawn
RATE_WINDOW_S = 10.0  # rows/s is measured over this much recent time, so it follows changes in pace

progress_log = logging.getLogger("batchrun.report.progress")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The runner's counters at one moment (rows answered by an earlier run count as done)."""

    elapsed_s: float
    ok: int
    failed: int
    reused: int
    sent: int
    in_flight: int  # sent and not yet answered
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    errors: dict[str, int] = field(default_factory=dict)
    # Attempts that failed and are tried again (429s, 5xx, timeouts...), by error type.
    retries: dict[str, int] = field(default_factory=dict)
    cooldown_s: float = 0.0  # seconds left of a cooldown after a 429
    concurrency: int | None = None  # the adaptive window, when the limit is being discovered
    max_concurrency: int = 0
    pace_per_s: float | None = None  # the request pace (configured, announced or learned), when one applies
    header_pace_per_s: float | None = None  # the pace rate-limit headers asked for, while it holds
    waiting: int = 0  # requests held by the limiter: a slot, a pace or a cooldown (not in flight)
    binding: str | None = None  # what holds them (see `batchrun.limits.pacing.Limiter.binding`)
    batches: tuple[str, ...] = ()  # a line per Batch API batch in flight, and when the next poll is
    down_s: float | None = None  # how long the provider has failed every request (the breaker is open)
    stopping: bool = False  # an interrupt or the budget: no new requests

    @property
    def done(self) -> int:
        """Rows with a final answer, this run or an earlier one."""
        return self.ok + self.failed + self.reused


class Observer(Protocol):
    """Receives a snapshot every `interval_s` seconds while a run sends."""

    @property
    def interval_s(self) -> float:
        """Seconds between two updates."""
        ...

    def update(self, snap: Snapshot, total: int | None) -> None:
        """Show `snap`; `total` is the number of input rows, None until counted."""


class Rate:
    """Rows per second over the last `RATE_WINDOW_S`, from the samples seen (not per row)."""

    def __init__(self) -> None:
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, snap: Snapshot) -> float:
        """Record `snap` and return the recent rate of rows finished this run."""
        now, done = snap.elapsed_s, snap.ok + snap.failed
        self._samples.append((now, done))
        while len(self._samples) > 2 and self._samples[1][0] <= now - RATE_WINDOW_S:
            self._samples.popleft()
        then, before = self._samples[0]
        if now - then <= 0:
            return done / now if now > 0 else 0.0
        return (done - before) / (now - then)


def eta_s(snap: Snapshot, total: int | None, rate: float) -> float | None:
    """Seconds to the end at `rate`; None when the total or the rate is not known yet."""
    if total is None or rate <= 0:
        return None
    return max(total - snap.done, 0) / rate


def describe(snap: Snapshot, total: int | None, rate: float) -> list[str]:
    """The snapshot as short phrases: rows, rate, elapsed time and ETA; tokens and cost; requests in flight
    and waiting; the limiter; retries and errors by type (the last two only when there are some)."""
    if total is not None and snap.done > total:
        total = None  # a count that fell short (the input grew meanwhile): no made-up percentage
    rows = (
        f"{snap.done:,}/{total:,} rows ({100 * snap.done / total:.0f}%)" if total else f"{snap.done:,} rows"
    )
    eta = eta_s(snap, total, rate)
    parts = [rows, f"{rate:,.1f} rows/s", f"elapsed {_duration(snap.elapsed_s)}"]
    parts.append(f"ETA {_duration(eta)}" if eta is not None else "ETA -")
    parts.append(
        f"tokens {humanize.count(snap.prompt_tokens)} in, {humanize.count(snap.completion_tokens)} out"
    )
    parts.append(f"${snap.cost_usd:,.4f}")
    parts.append(f"{snap.in_flight} in flight, {snap.waiting} waiting, {snap.sent:,} sent")
    parts.append(limiter_state(snap))
    if snap.retries:
        parts.append("retried " + _by_type(snap.retries))
    if snap.errors:
        parts.append("errors " + _by_type(snap.errors))
    if snap.stopping:
        parts.append("stopping")
    parts.extend(snap.batches)
    return parts


def binding(snap: Snapshot) -> str | None:
    """What holds the run back now: the limiter's binding limit, or `concurrency` when every slot is taken
    by a request in flight (a fixed concurrency is not the limiter's to report)."""
    if snap.binding is not None:
        return snap.binding
    if snap.max_concurrency and snap.in_flight >= (snap.concurrency or snap.max_concurrency):
        return "concurrency"
    return None


def limiter_state(snap: Snapshot) -> str:
    """`bound by cooldown, concurrency 12/64 (adaptive), pace 48.0/s, cooling down 1.2 s` or as much of it
    as applies."""
    bound = binding(snap)
    state = f"bound by {bound}, " if bound is not None else ""
    if snap.concurrency is not None:
        state += f"concurrency {snap.concurrency}/{snap.max_concurrency} (adaptive)"
    else:
        state += f"concurrency {snap.max_concurrency}"
    if snap.pace_per_s is not None:
        state += f", pace {snap.pace_per_s:,.1f}/s"
    if snap.header_pace_per_s is not None:
        state += f", paced by headers {snap.header_pace_per_s:,.1f}/s"
    if snap.cooldown_s > 0:
        state += f", cooling down {snap.cooldown_s:.1f} s"
    if snap.down_s is not None:
        state += f", provider down {snap.down_s:.0f} s"
    return state


class LogLines:
    """One `progress:` log line every `interval_s` (stderr when it is not a terminal, and the log file)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._rate = Rate()

    def update(self, snap: Snapshot, total: int | None) -> None:
        """Log one line."""
        progress_log.info("progress: %s", "; ".join(describe(snap, total, self._rate.add(snap))))


class LiveDisplay:
    """A few lines redrawn in place on a terminal (rich); log records print above them meanwhile."""

    interval_s = LIVE_REFRESH_S

    def __init__(self, console: Console) -> None:
        from rich.live import Live

        self.console = console
        self._rate = Rate()
        self._live: Live = Live(console=console, auto_refresh=False, transient=False)

    def __enter__(self) -> LiveDisplay:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.stop()

    def update(self, snap: Snapshot, total: int | None) -> None:
        """Redraw."""
        self._live.update(self._render(snap, total, self._rate.add(snap)), refresh=True)

    def _render(self, snap: Snapshot, total: int | None, rate: float) -> RenderableType:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        phrases = describe(snap, total, rate)
        bar = max(10, min(40, self.console.width - 70))  # the rows, rate, times fit beside it on one line
        head = Table.grid(padding=(0, 1))
        head.add_row(
            ProgressBar(total=float(total) if total else None, completed=float(snap.done), width=bar),
            Text(" · ".join(phrases[:4])),
        )
        lines: list[Any] = [head, Text(" · ".join(phrases[4:7]), style="dim")]
        held = snap.cooldown_s > 0 or snap.down_s is not None
        lines.append(Text("limiter: " + phrases[7], style="yellow" if held else "dim"))
        for phrase in phrases[8:]:
            if phrase.startswith("retried "):
                lines.append(Text(phrase, style="yellow"))
            elif phrase.startswith("errors "):
                lines.append(Text(phrase, style="red"))
        if snap.stopping:
            lines.append(Text("stopping: no new requests, waiting for those in flight", style="bold red"))
        lines.extend(Text(line, style="cyan") for line in snap.batches)
        return Group(*lines)


class ConsoleHandler(logging.Handler):
    """Log records printed through rich, above a live display rather than through it."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        """Print one formatted record."""
        try:
            self.console.print(self.format(record), markup=False, highlight=False, soft_wrap=True)
        except Exception:  # logging must never break the run; the stdlib handlers do the same
            self.handleError(record)


async def watch(
    source: Callable[[], Snapshot],
    count_rows: Callable[[], int | None],
    observers: Sequence[Observer],
    *,
    task_status: TaskStatus[anyio.CancelScope] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Sample `source` on a timer and update every observer, until the returned scope is cancelled.

    The input's rows are counted in a worker thread meanwhile (a big file takes a moment), so sending does
    not wait for it; the ETA appears once the total is known. A last update is made when cancelled, so a
    display ends on the final counts.
    """
    total: int | None = None

    async def count() -> None:
        nonlocal total
        total = await anyio.to_thread.run_sync(count_rows, abandon_on_cancel=True)

    interval = min(o.interval_s for o in observers)
    last = {id(o): 0.0 for o in observers}
    with anyio.CancelScope() as scope:
        task_status.started(scope)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(count)
                while True:
                    await anyio.sleep(interval)
                    now = time.monotonic()
                    snap = source()
                    for observer in observers:
                        if now - last[id(observer)] >= observer.interval_s - 1e-3:
                            last[id(observer)] = now
                            observer.update(snap, total)
        finally:
            final = source()
            for observer in observers:
                observer.update(final, total)


def _by_type(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
