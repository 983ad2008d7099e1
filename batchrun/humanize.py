"""Numbers as a person reads them, the same on the screen, in the summary and in the HTML report."""

from __future__ import annotations


def count(n: int) -> str:
    """A count in a few characters: 950, 24.2k, 1.3M, 2.0G."""
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:,}"


def duration(seconds: float, digits: int = 1) -> str:
    """A length of time in the unit that reads best: `digits` decimals for seconds and minutes."""
    if seconds < 120:
        return f"{seconds:.{digits}f} s"
    if seconds < 7200:
        return f"{seconds / 60:.{digits}f} min"
    return f"{seconds / 3600:.1f} h"


def seconds(value: float | None) -> str:
    """A latency in seconds to the hundredth; `-` when there is none."""
    return "-" if value is None else f"{value:.2f}"
