"""Holding a run at a provider's real limit: trimming a known rate, and finding an unknown one.

A configured (or announced) rate is taken as a ceiling, not as gospel: the provider may count differently,
enforce it over a stricter window, or share it with another job. `RateTrim` cuts the pace a little on a
429 and lets it creep back while requests succeed, so a rate slightly above the real one converges just
under it instead of oscillating. It grows back by answers, not by time, so a 429 costs the same share of
requests at any rate. A lone 429 among the last `REPLY_MEMORY` replies cuts nothing (jitter at a window's
edge); otherwise the cut is at least `TRIM`, more when a larger share of the replies to requests sent since
the last cut were refused (a rate 25% too high is cut close to the limit in a step or two).

With no rate known, `AdaptiveLimit` starts at the full concurrency (against a provider with room to spare it
costs nothing) and learns from 429s: concurrency follows AIMD (a 429 cuts it by `CUT`, answers grow it by
one a round trip), and the first 429s also set a pace just under the success rate measured since (what the
provider actually admitted), which then creeps up by `PROBE_GROWTH` a second until the next 429 pulls it
back. 429s that come whatever the rate (an overloaded provider refusing a share of all requests) would
ratchet the pace down forever, so it never drops below `FLOOR` of the best success rate seen.
"""

from __future__ import annotations

import collections

import anyio

TRIM = 0.01  # the least share of a configured pace a 429 cuts
MAX_TRIM = 0.5  # the most one cut takes
TRIM_GAP_S = 1.0  # one cut a second at most: the refusals of one overfull window are one signal ...
TRIM_REPLIES = 100  # ... unless this many replies to requests sent since the last cut came sooner
REPLY_MEMORY = 200  # the replies a cut weighs: two 429s among them cut, a lone one does not
MIN_SAMPLE = 20  # fewer replies than this since the last cut: cut by TRIM, whatever share was refused
RECOVER_REPLIES = 1000  # answers it takes to win back one TRIM: the 429s it costs are a share of the answers

CUT = 0.7  # concurrency kept after a 429
RATE_MARGIN = 0.95  # the discovered pace after a 429, as a share of the success rate measured
PROBE_GROWTH = 0.0002  # how fast the discovered pace creeps up, a share per answer (1% per 50)
WINDOW_S = 5.0  # the window the success rate is measured over
FLOOR = 0.5  # the discovered pace never drops below this share of the best success rate measured
MIN_SPAN_S = 1.0  # the shortest stretch of answers a success rate is measured over
PROVISIONAL_MIN = 10  # answers before the first 429 it takes to guess a first pace from them
MIN_CUT_GAP_S = 0.2  # at most one cut of the window per this many seconds
LATENCY_WEIGHT = 0.05  # how fast the running average of round trips follows new answers


class RateTrim:
    """The share of a known rate to pace at: cut on a 429, regrown while requests succeed."""

    def __init__(self) -> None:
        self.factor = 1.0
        self._cut_at = -float("inf")
        # The last REPLY_MEMORY replies to requests sent since the last cut: was each a 429?
        self._replies: collections.deque[bool] = collections.deque(maxlen=REPLY_MEMORY)
        self._refused = 0

    def _note(self, sent_at: float, refused: bool) -> None:
        if sent_at < self._cut_at:
            return  # a reply to a request sent at the old pace says nothing of the new
        replies = self._replies
        if len(replies) == replies.maxlen:
            self._refused -= replies[0]
        replies.append(refused)
        self._refused += refused

    def on_success(self, sent_at: float) -> bool:
        """A request was answered: creep back toward the full rate. True when the factor changed.

        By answers, not by time: so the share of requests a 429 costs is the same at 1 request a second
        as at a thousand, and a pause earns nothing.
        """
        self._note(sent_at, refused=False)
        if self.factor >= 1.0:
            return False
        self.factor = min(1.0, self.factor * (1 + TRIM / RECOVER_REPLIES))
        return True

    def on_rate_limited(self, sent_at: float, now: float) -> bool:
        """A 429: cut the factor, unless it is a lone one or its request was sent before the last cut.

        True when cut.
        """
        self._note(sent_at, refused=True)
        if sent_at < self._cut_at or self._refused < 2:
            # A lone 429 among the last replies is jitter at the edge of a window (a stall of this machine,
            # a late packet), not a rate too high: cutting on each one sagged a run under load by 7%.
            return False
        if now - self._cut_at < TRIM_GAP_S and len(self._replies) < TRIM_REPLIES:
            return False
        # The share refused beyond this one, of the replies to requests sent since the last cut (at least a
        # second's worth: against a window, refusals come in clusters as it fills): a rate 25% too high is
        # cut close to the limit in a step or two.
        replies = len(self._replies)
        excess = (self._refused - 1) / replies if replies >= MIN_SAMPLE else 0.0  # a share of few says little
        self.factor *= 1 - min(MAX_TRIM, max(TRIM, excess))
        self._cut_at = now
        self._replies.clear()
        self._refused = 0
        return True


class AdaptiveLimit:
    """A concurrency window and an optional pace, both learned from 429s and successes."""

    def __init__(self, max_concurrency: int) -> None:
        self.max_concurrency = max_concurrency
        self.window = float(max_concurrency)
        self._gate = anyio.CapacityLimiter(max_concurrency)
        self.rate_per_s: float | None = None  # None until a 429 shows there is a limit
        self._successes: collections.deque[float] = collections.deque()
        self._last_cut = 0.0
        self._limited_since: float | None = None  # the first 429: successes before it include a burst
        self._best_rate = 0.0
        self._latency_s = 0.0  # a running average of answers' round trips

    @property
    def concurrency(self) -> int:
        """Requests allowed in flight now."""
        return int(self._gate.total_tokens)

    @property
    def full(self) -> bool:
        """True when every slot of the window is taken."""
        return self._gate.available_tokens <= 0

    async def acquire(self) -> None:
        """Wait for a concurrency slot."""
        try:
            self._gate.acquire_nowait()  # the usual case, without a trip through the event loop
        except anyio.WouldBlock:
            await self._gate.acquire()

    def release(self) -> None:
        """Give the concurrency slot back."""
        self._gate.release()

    def on_success(self, now: float, latency_s: float) -> bool:
        """A request was answered: widen the window, let the pace creep up. True when the pace changed."""
        self._latency_s += LATENCY_WEIGHT * (latency_s - self._latency_s)
        self._successes.append(now)
        while self._successes[0] < now - WINDOW_S:
            self._successes.popleft()
        if self.window < self.max_concurrency:
            self.window += 1.0 / self.window
            self._apply_window()
        if self.rate_per_s is None:
            return False
        self.rate_per_s *= 1 + PROBE_GROWTH
        return True

    def on_rate_limited(self, sent_at: float, now: float) -> bool:
        """A 429: cut the window once per round of requests, and pace just under the measured success rate.

        `sent_at` is when the refused request was sent: 429s for requests sent before the last cut say
        nothing new, so they do not cut again. True when the pace changed.
        """
        # One cut per round: 429s come back at once, so without a minimum gap a single burst of refusals
        # would cut the window ten times over.
        if sent_at < self._last_cut or now - self._last_cut < MIN_CUT_GAP_S:
            return False
        first = self._limited_since is None
        if self._limited_since is None:
            self._limited_since = now
            # What the provider let through before it refused (answered, or still in flight) is what its
            # window holds; as a second's worth it is a first pace, until a second of answers measures one.
            admitted = len(self._successes) + self._gate.borrowed_tokens
            if admitted >= PROVISIONAL_MIN:  # fewer says nothing: the run had barely begun
                self.rate_per_s = admitted * RATE_MARGIN
                self._best_rate = float(admitted)
        limited_since = self._limited_since
        self._last_cut = now
        # Never below what the pace needs in flight: a rate limit is met by the pace, and a window cut
        # under pace x latency would only lower the rate (and the next measurement of it) further.
        needed = (self.rate_per_s or 0.0) * self._latency_s * 2
        self.window = max(1.0, self.window * CUT, needed)
        self._apply_window()
        measured = self._success_rate(now, limited_since)
        if not measured:
            # Too soon, or nothing admitted at all lately (a window spent until its reset, e.g. a minute's):
            # that says nothing of the rate; the pauses after 429s wait it out.
            return first and self.rate_per_s is not None
        self._best_rate = max(self._best_rate, measured)
        rate = measured * RATE_MARGIN
        if self.rate_per_s is not None and now - limited_since > WINDOW_S:
            # Past the first window a 429 only lowers the pace; within it, each measurement spans more
            # time at the limit than the last (the first includes the pauses of the first refusals).
            rate = min(rate, self.rate_per_s)
        self.rate_per_s = max(rate, FLOOR * self._best_rate, 0.1)
        return True

    def _success_rate(self, now: float, limited_since: float) -> float | None:
        """The most answers any one second held since the first 429 (within `WINDOW_S`), per second.

        The busiest second, not the average: the pauses after the first refusals leave idle stretches that
        say nothing of the limit, while a second spent at the limit admits what the provider allows in a
        second. Counted from the first 429 on: before it the provider was admitting its first burst.
        None until a second has passed since.
        """
        start = max(now - WINDOW_S, limited_since)
        if now - start < MIN_SPAN_S:
            return None
        times = [t for t in self._successes if t >= start]
        busiest, first = 0, 0
        for last, stamp in enumerate(times):
            while stamp - times[first] >= 1.0:
                first += 1
            busiest = max(busiest, last - first + 1)
        return float(busiest)

    def _apply_window(self) -> None:
        self.window = min(self.window, float(self.max_concurrency))
        self._gate.total_tokens = max(1, int(self.window))
