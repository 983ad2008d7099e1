"""The run over time: results per bucket of time from the journal, requests and retries from the timeline.

The journal gives each result's time (`finished_at`), so rows answered, failed and their cost per bucket
come from it, whatever engine made them. Requests sent and failed attempts by type (429s, 5xx, timeouts)
come from the run's timeline (`batchrun.report.timeline`), where the live engine writes its counts once a
second. Both are read a block at a time and aggregated by DuckDB under a memory cap.

A resumed job's journal holds several runs; the chart shows the last run that answered something (a rerun
that found every row answered charts the run before it), and says how many results earlier runs gave.
Without a timeline (another engine, or a run folder from an older batchrun) the journal's whole span is
one run and only the results are charted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from batchrun.report.timeline import INTERVAL_S, timeline_path
from batchrun.store import journal
from batchrun.store.runstore import JOURNAL, run_folder

if TYPE_CHECKING:
    import duckdb

MEMORY_MB = 128
MAX_BUCKETS = 240  # bars across the chart at most
FAR_FUTURE = 1e15  # UNIX seconds past any result
MAX_RUNS = 100  # runs told apart in a journal; results of older ones count as earlier
BUCKETS_S = (
    0.1,
    0.2,
    0.5,
    1,
    2,
    5,
    10,
    15,
    30,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    21600,
    43200,
    86400,
)
TICKS_PER_S = 10  # results are counted per tenth of a second, then per bucket


@dataclass(frozen=True, slots=True)
class OverTime:
    """One run's results per bucket of `bucket_s` seconds from `start` (UNIX seconds), and its attempts per
    bucket of `attempts_bucket_s` (at least a second: the timeline's step)."""

    start: float
    end: float
    bucket_s: float
    results: tuple[tuple[int, str, int, float], ...]  # (bucket, ok | failed | failed, to retry, rows, cost)
    sent: tuple[tuple[int, int], ...]  # (bucket, requests sent); () without a timeline
    retries: tuple[tuple[int, str, int], ...]  # (bucket, error type, failed attempts)
    earlier: int  # results journaled by earlier runs, not charted
    requests: int | None  # requests the run sent, from its timeline
    retried: dict[str, int]  # failed attempts by type over the run, from its timeline
    runs: int  # runs found in the journal's timeline
    attempts_bucket_s: float = 1.0

    @property
    def wall_s(self) -> float:
        """Seconds from the run's start to its last result or count."""
        return max(self.end - self.start, 0.0)

    @property
    def answered(self) -> int:
        """Results the run journaled."""
        return sum(rows for _, _, rows, _ in self.results)


def over_time(output: Path) -> tuple[OverTime | None, str | None]:
    """The last run of `output` over time, or None and why not."""
    from batchrun.store import duck

    folder = run_folder(output)
    path = folder / JOURNAL
    if not path.is_file():
        return None, f"no run folder beside the output ({folder.name}): its journal holds the times"
    starts, last_t = _starts(timeline_path(folder))
    starts = starts[-MAX_RUNS:]
    # Which run journaled a line: how many runs had started by its time (0: before any known start).
    run = " + ".join(f"CAST(finished_at >= {s!r} AS INTEGER)" for s in starts) or "0"
    with duck.connect(MEMORY_MB) as db:
        schema, batches = journal.field_batches(path, ["status", "retryable", "cost_usd", "finished_at"])
        import pyarrow as pa

        db.register("lines", pa.RecordBatchReader.from_batches(schema, batches))
        # Per run and tenth of a second first: a small table, from one read of the journal.
        db.execute(
            f"CREATE TABLE ticks AS SELECT {run} AS run, floor(finished_at * {TICKS_PER_S}) AS tick, "
            "CASE WHEN status = 'ok' THEN 'ok' WHEN retryable THEN 'failed, to retry' ELSE 'failed' END "
            "AS kind, count(*) AS n, coalesce(sum(cost_usd), 0) AS cost, min(finished_at) AS first_at, "
            "max(finished_at) AS last_at FROM lines WHERE finished_at IS NOT NULL GROUP BY ALL"
        )
        db.unregister("lines")
        (found,) = db.execute("SELECT max(run) FROM ticks").fetchall()[0]
        if found is None:
            return None, "the journal has no result times (it was written by an older batchrun)"
        last_run = int(found)  # the last run that journaled a result
        first, last = db.execute(
            f"SELECT min(first_at), max(last_at) FROM ticks WHERE run = {last_run}"
        ).fetchall()[0]
        start, end = float(first), float(last)
        if last_run > 0:
            start = starts[last_run - 1]
            until = starts[last_run] if last_run < len(starts) else FAR_FUTURE
            end = min(until, max(end, last_t or 0.0))
        origin = math.floor(start * TICKS_PER_S) / TICKS_PER_S
        bucket = bucket_for(end - origin)
        results = db.execute(
            f"SELECT CAST(floor((tick / {TICKS_PER_S} - {origin!r}) / {bucket!r} + 1e-9) AS BIGINT) AS b, "
            f"kind, sum(n), sum(cost) FROM ticks WHERE run = {last_run} GROUP BY ALL ORDER BY b"
        ).fetchall()
        (earlier,) = db.execute(f"SELECT coalesce(sum(n), 0) FROM ticks WHERE run < {last_run}").fetchall()[0]
        sent: list[tuple[int, int]] = []
        retries: list[tuple[int, str, int]] = []
        requests: int | None = None
        retried: dict[str, int] = {}
        step = max(bucket, INTERVAL_S)  # the timeline has a line a second at most
        if last_run > 0:
            sent, retries, requests, retried = _attempts(db, timeline_path(folder), origin, end, step)
    return (
        OverTime(
            start=origin,
            end=end,
            bucket_s=bucket,
            results=tuple((max(int(b), 0), str(k), int(n), float(c)) for b, k, n, c in results),
            sent=tuple(sent),
            retries=tuple(retries),
            earlier=int(earlier),
            requests=requests,
            retried=retried,
            runs=max(len(starts), 1),
            attempts_bucket_s=step,
        ),
        None,
    )


def bucket_for(span_s: float) -> float:
    """The shortest round bucket that keeps `span_s` within `MAX_BUCKETS` bars (and at least ten of a
    second's run in a tenth of a second each)."""
    for size in BUCKETS_S:
        if span_s / size <= MAX_BUCKETS:
            return float(size)
    return float(math.ceil(span_s / MAX_BUCKETS))


def _starts(path: Path) -> tuple[list[float], float | None]:
    """The start times of the runs in a timeline file, and its last count line's time."""
    starts: list[float] = []
    last: float | None = None
    try:
        file = path.open("rb")
    except OSError:
        return starts, last
    with file:
        for line in file:
            if line.startswith(b'{"start"'):
                try:
                    starts.append(float(orjson.loads(line)["start"]))
                except (ValueError, KeyError, TypeError):
                    continue
            elif line.startswith(b'{"t":'):
                try:
                    last = float(line[5 : line.index(b",")])
                except ValueError:
                    continue
    return starts, last


def _attempts(
    db: duckdb.DuckDBPyConnection, path: Path, start: float, end: float, bucket: float
) -> tuple[list[tuple[int, int]], list[tuple[int, str, int]], int | None, dict[str, int]]:
    """Requests sent and failed attempts by type per bucket of one run, from its timeline's running counts."""
    from batchrun.store import duck

    source = (
        f"read_json('{duck.text(path)}', format = 'newline_delimited', ignore_errors = true, "
        "columns = {t: 'DOUBLE', sent: 'BIGINT', retries: 'JSON'})"
    )
    # A line's counts grew over the second before it: they go to the bucket of that second's middle.
    middle = f"t - {INTERVAL_S / 2} - {start!r}"
    db.execute(
        f"CREATE TABLE counts AS SELECT CAST(greatest(floor(({middle}) / {bucket!r}), 0) AS BIGINT) AS b, t, "
        f"sent, retries FROM {source} WHERE t IS NOT NULL AND t >= {start!r} AND t <= {end!r}"
    )
    sent = db.execute(
        "SELECT b, max(sent) - coalesce(lag(max(sent)) OVER (ORDER BY b), 0) FROM counts "
        "GROUP BY b ORDER BY b"
    ).fetchall()
    retries = db.execute(
        "WITH r AS (SELECT b, j.key AS kind, max(CAST(j.value AS BIGINT)) AS n FROM counts, "
        "json_each(counts.retries) AS j GROUP BY ALL) "
        "SELECT b, kind, n - coalesce(lag(n) OVER (PARTITION BY kind ORDER BY b), 0) FROM r ORDER BY b, kind"
    ).fetchall()
    final = db.execute("SELECT sent, retries FROM counts ORDER BY t DESC LIMIT 1").fetchall()
    requests: int | None = None
    retried: dict[str, int] = {}
    if final:
        requests = int(final[0][0]) if final[0][0] is not None else None
        loaded = orjson.loads(final[0][1]) if final[0][1] else {}
        retried = {str(k): int(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}
    return (
        [(int(b), int(n)) for b, n in sent if n],
        [(int(b), str(k), int(n)) for b, k, n in retries if n],
        requests,
        retried,
    )
