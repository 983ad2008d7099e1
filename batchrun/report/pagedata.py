"""What the HTML report shows, gathered from the output file, its summary file and its run folder.

Every figure is an aggregate that DuckDB computes under a memory cap, reading only the columns it needs:
a million-row output gives the same few kilobytes of chart data as a thousand-row one. The journal is read a
block at a time (`batchrun.store.journal.field_batches`), never whole.

- failures: grouped by `error_type` and message (long hex or digit runs, such as request ids, folded), with
  counts and the first few row ids (the job's `id_column` value, else the row number);
- `finish_reason` counts, per variant;
- a latency histogram on round bin edges up to the 99th percentile (slower answers in one last bar);
- for a sweep, sample rows side by side (rows whose answers differ first) and how often the variants agree;
- the distribution of the `json` column's values per variant, or of short answers (labels) when there is no
  JSON;
- the run over time (`batchrun.report.overtime`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchrun.records import OUTPUT_COLUMNS
from batchrun.report.overtime import OverTime, over_time
from batchrun.report.summary import (
    VARIANT_COLUMN,
    Summary,
    column_names,
    numbered_sql,
    output_sql,
    summarize,
    summary_path,
)

if TYPE_CHECKING:
    import duckdb

PAGE_MEMORY_MB = 256  # DuckDB's cap while gathering the page's figures
FAILURE_GROUPS = 20  # groups of failures listed; the rest are counted
FAILURE_IDS = 3  # row ids shown per group
MESSAGE_CHARS = 300
SAMPLE_ROWS = 12
SAMPLE_CHARS = 400  # characters of a completion or input value in the sample table
HISTOGRAM_BINS = 30
TOP_VALUES = 8  # values shown per key of a distribution; the rest are "(other)"
TOP_KEYS = 8
LABEL_DISTINCT = 30  # answers with at most this many distinct values are labels worth a distribution
VALUE_CHARS = 40
OTHER = "(other)"


@dataclass(frozen=True, slots=True)
class FailureGroup:
    """Failed rows sharing an error type and message."""

    error_type: str
    message: str
    count: int
    ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class HistogramBar:
    """Answers with `low <= latency_s < high` (in one variant, for a sweep); `overflow`: the slowest, past
    the bins."""

    variant: str
    low: float
    high: float
    count: int
    overflow: bool = False


@dataclass(frozen=True, slots=True)
class Samples:
    """Sample rows: input values, then each variant's answer (`columns` names them, in order)."""

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    differing: tuple[bool, ...]  # per row: the variants' answers differ
    positions: int = 0  # input rows compared (a sweep)
    differ: int = 0  # ... whose answers are not all the same


@dataclass(frozen=True, slots=True)
class Distribution:
    """Counts of one field's values per variant (`key`: a JSON key, `key[]` for a list's items)."""

    key: str
    counts: tuple[tuple[str, str, int], ...]  # (variant, value, count)
    distinct: int


@dataclass(frozen=True, slots=True)
class PageData:
    """Everything the page shows."""

    summary: Summary
    last_run: dict[str, Any] | None  # the summary file the last run wrote, when it is for this output
    id_column: str | None
    failures: tuple[FailureGroup, ...]
    failure_groups: int  # groups in all (more than `failures` lists when there are many)
    finish_reasons: tuple[tuple[str, str, int], ...]  # (variant, finish_reason, rows)
    histogram: tuple[HistogramBar, ...]
    samples: Samples | None
    distributions: tuple[Distribution, ...] = ()
    distribution_of: str | None = None  # "json" or "completion"
    over_time: OverTime | None = None
    over_time_note: str | None = None  # why there is no run over time
    variants: tuple[str, ...] = field(default_factory=tuple)


def gather(output: Path) -> PageData:
    """The page's figures for `output` (checked to be a batchrun output by the caller)."""
    from batchrun.store import duck

    summary = summarize(output)
    last_run = _last_run(output)
    source = output_sql(output)
    with duck.connect(PAGE_MEMORY_MB) as db:
        names = column_names(db, source)
        db.execute(f"CREATE VIEW out AS SELECT * FROM {numbered_sql(output, set(names))}")
        sweep = VARIANT_COLUMN in names
        variant = f"coalesce(CAST({VARIANT_COLUMN} AS VARCHAR), '(none)')" if sweep else "''"
        id_column = _id_column(names, last_run)
        row_id = f"CAST({_quoted(id_column)} AS VARCHAR)" if id_column else "CAST(__row + 1 AS VARCHAR)"
        failures, groups = _failures(db, row_id)
        samples = _samples(db, names, id_column, sweep)
        distributions, of = _distributions(db, names, variant)
        data = PageData(
            summary=summary,
            last_run=last_run,
            id_column=id_column,
            failures=failures,
            failure_groups=groups,
            finish_reasons=_finish_reasons(db, variant),
            histogram=_histogram(db, variant),
            samples=samples,
            distributions=distributions,
            distribution_of=of,
            variants=tuple(g.name for g in summary.by_variant),
        )
    timeline, note = over_time(output)
    return PageData(**{**_fields(data), "over_time": timeline, "over_time_note": note})


def _fields(data: PageData) -> dict[str, Any]:
    return {name: getattr(data, name) for name in PageData.__dataclass_fields__}


def _last_run(output: Path) -> dict[str, Any] | None:
    """The summary file beside `output`, when it is readable and about this output."""
    try:
        data = json.loads(summary_path(output).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or Path(str(data.get("output", ""))).name != output.name:
        return None
    return data


def _id_column(names: list[str], last_run: dict[str, Any] | None) -> str | None:
    """The job's `id_column` as the run recorded it, else an input column named `id`; None: row numbers."""
    recorded = (last_run or {}).get("id_column")
    if isinstance(recorded, str) and recorded in names:
        return recorded
    return "id" if "id" in names and "id" not in OUTPUT_COLUMNS else None


def _failures(db: duckdb.DuckDBPyConnection, row_id: str) -> tuple[tuple[FailureGroup, ...], int]:
    # Request ids and the like make every message unique: runs of 8+ hex digits (or digits) are folded.
    message = f"regexp_replace(left(coalesce(error, ''), {MESSAGE_CHARS}), '[0-9a-fA-F-]{{8,}}', '…', 'g')"
    rows = db.execute(
        f"SELECT coalesce(error_type, 'error') AS kind, {message} AS message, count(*) AS n, "
        f"arg_min({row_id}, __row, {FAILURE_IDS}) AS ids, count(*) OVER () AS groups "
        "FROM out WHERE status = 'error' GROUP BY kind, message ORDER BY n DESC, min(__row) "
        f"LIMIT {FAILURE_GROUPS}"
    ).fetchall()
    groups = int(rows[0][4]) if rows else 0
    return tuple(FailureGroup(kind, text, int(n), tuple(ids or ())) for kind, text, n, ids, _ in rows), groups


def _finish_reasons(db: duckdb.DuckDBPyConnection, variant: str) -> tuple[tuple[str, str, int], ...]:
    rows = db.execute(
        f"SELECT {variant} AS variant, finish_reason, count(*) AS n FROM out "
        "WHERE finish_reason IS NOT NULL GROUP BY ALL ORDER BY min(__row), n DESC"
    ).fetchall()
    return tuple((str(v), str(reason), int(n)) for v, reason, n in rows)


def _histogram(db: duckdb.DuckDBPyConnection, variant: str) -> tuple[HistogramBar, ...]:
    """Bars on round edges from the fastest answer to the 99th percentile; the slower ones in a last bar."""
    answered = "status = 'ok' AND latency_s IS NOT NULL AND isfinite(latency_s)"
    low, p99, high = db.execute(
        f"SELECT min(latency_s), quantile_cont(latency_s, 0.99), max(latency_s) FROM out WHERE {answered}"
    ).fetchall()[0]
    if low is None:
        return ()
    step = nice_step((p99 - low) / HISTOGRAM_BINS) if p99 > low else nice_step(max(low, 1e-3) / 10)
    start = math.floor(low / step) * step
    bins = max(1, math.ceil((p99 - start) / step + 1e-9))
    if start + bins * step <= high < start + (bins + 1) * step:
        bins += 1  # the slowest fit in one more bin: no overflow bar for that
    rows = db.execute(
        f"SELECT {variant} AS variant, least(floor((latency_s - {start!r}) / {step!r}), {bins}) AS b, "
        f"count(*) FROM out WHERE {answered} GROUP BY ALL ORDER BY b"
    ).fetchall()
    bars = []
    for name, index, count in rows:
        i = int(index)
        if i >= bins:
            bars.append(HistogramBar(str(name), start + bins * step, float(high), int(count), overflow=True))
        else:
            bars.append(HistogramBar(str(name), start + i * step, start + (i + 1) * step, int(count)))
    return tuple(bars)


def nice_step(raw: float) -> float:
    """The round number (1, 2, 2.5 or 5 times a power of ten) nearest above `raw`: readable bin edges."""
    if raw <= 0 or not math.isfinite(raw):
        return 1.0
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * power * (1 + 1e-9):
            return float(round(factor * power, 12))
    return float(10 * power)


def _samples(
    db: duckdb.DuckDBPyConnection, names: list[str], id_column: str | None, sweep: bool
) -> Samples | None:
    """Sample rows. A sweep's variants side by side, input rows whose answers differ first; else the first
    rows. Variants are the output's runs of rows (a sweep writes variant after variant, in input order)."""
    answer = "coalesce(json, trim(completion), 'error: ' || error_type, status)"
    if "json" not in names:
        answer = "coalesce(trim(completion), 'error: ' || error_type, status)"
    inputs = [
        n for n in names[: names.index("custom_id")] if n != VARIANT_COLUMN and not n.startswith("sweep_")
    ]
    if not sweep:
        rows = db.execute(
            f"SELECT * FROM out ORDER BY status = 'ok' DESC, __row LIMIT {SAMPLE_ROWS}"
        ).fetchall()
        described = [d[0] for d in db.execute("SELECT * FROM out LIMIT 0").description]
        records = [dict(zip(described, row, strict=True)) for row in rows]
        shown = _input_columns(inputs, id_column, records)
        table = [
            (*(_text(r.get(c)) for c in shown), _text(r.get("completion") or r.get("error"))) for r in records
        ]
        return Samples((*shown, "answer"), tuple(table), (False,) * len(table)) if table else None
    runs = db.execute(
        f"SELECT count(*), max(__row) - min(__row) + 1 FROM out GROUP BY {VARIANT_COLUMN}"
    ).fetchall()
    if len({n for n, _ in runs}) != 1 or any(n != span for n, span in runs):
        return None  # not variant after variant, as batchrun writes a sweep: no rows to set side by side
    db.execute(
        f"CREATE TEMP TABLE places AS SELECT o.__row - s.first AS pos, o.__row AS row, "
        f"CAST(o.{VARIANT_COLUMN} AS VARCHAR) AS variant, hash({answer}) AS said FROM out o JOIN "
        f"(SELECT {VARIANT_COLUMN}, min(__row) AS first FROM out GROUP BY ALL) s USING ({VARIANT_COLUMN})"
    )
    picked = db.execute(
        "SELECT pos, min(said) <> max(said) AS differ, sum(CAST(min(said) <> max(said) AS INTEGER)) OVER () "
        "AS differing, count(*) OVER () AS positions FROM places GROUP BY pos ORDER BY differ DESC, pos "
        f"LIMIT {SAMPLE_ROWS}"
    ).fetchall()
    if not picked:
        return None
    positions = [int(p) for p, *_ in picked]
    differ = {int(p): bool(d) for p, d, *_ in picked}
    cursor = db.execute(
        f"SELECT p.pos, p.variant, o.* FROM places p JOIN out o ON o.__row = p.row "
        f"WHERE p.pos IN ({', '.join(map(str, positions))}) ORDER BY p.row"
    )
    described = [d[0] for d in cursor.description]
    records = [dict(zip(described, row, strict=True)) for row in cursor.fetchall()]
    variants = list(dict.fromkeys(str(r["variant"]) for r in records))
    first = {int(r["pos"]): r for r in reversed(records)}
    shown = _input_columns(inputs, id_column, list(first.values()))
    said = {(int(r["pos"]), str(r["variant"])): _answer_text(r) for r in records}
    table = [
        (*(_text(first[p].get(c)) for c in shown), *(said.get((p, v), "") for v in variants))
        for p in positions
    ]
    return Samples(
        (*shown, *variants),
        tuple(table),
        tuple(differ[p] for p in positions),
        positions=int(picked[0][3]),
        differ=int(picked[0][2]),
    )


def _answer_text(record: dict[str, Any]) -> str:
    if record.get("status") == "ok":
        return _text(record.get("json") or record.get("completion") or record.get("tool_calls"))
    if record.get("status") == "error":
        return f"error: {record.get('error_type') or 'error'}"
    return str(record.get("status") or "")


def _input_columns(inputs: list[str], id_column: str | None, records: list[dict[str, Any]]) -> list[str]:
    """The id column and the input column with the longest text in the sample (the prompt's subject)."""
    shown = [id_column] if id_column in inputs else []
    rest = [c for c in inputs if c not in shown]
    lengths = {c: sum(len(v) for r in records if isinstance(v := r.get(c), str)) for c in rest}
    if lengths and max(lengths.values()) > 0:
        shown.append(max(lengths, key=lambda c: lengths[c]))
    return [c for c in shown if c is not None]


def _distributions(
    db: duckdb.DuckDBPyConnection, names: list[str], variant: str
) -> tuple[tuple[Distribution, ...], str | None]:
    """Values of the `json` column's keys per variant; without JSON, short answers when they are labels."""
    if "json" in names:
        found = _json_values(db, variant)
        if found:
            return found, "json"
    (distinct,) = db.execute(
        "SELECT approx_count_distinct(lower(trim(completion))) FROM out WHERE status = 'ok'"
    ).fetchall()[0]
    if not distinct or distinct > LABEL_DISTINCT:
        return (), None
    values = (
        f"SELECT {variant} AS variant, 'answer' AS key, left(lower(trim(completion)), {VALUE_CHARS}) "
        "AS value FROM out WHERE status = 'ok' AND completion IS NOT NULL"
    )
    return _counted(db, values), "completion"


def _json_values(db: duckdb.DuckDBPyConnection, variant: str) -> tuple[Distribution, ...]:
    values = f"""
        WITH kv AS (
            SELECT {variant} AS variant, j.key, j.value, j.type
            FROM out, json_each(out.json) AS j
            WHERE out.json IS NOT NULL AND json_valid(out.json) AND json_type(out.json) = 'OBJECT'
        )
        SELECT variant, key, left(json_extract_string(value, '$'), {VALUE_CHARS}) AS value FROM kv
        WHERE type NOT IN ('ARRAY', 'OBJECT')
        UNION ALL
        SELECT kv.variant, kv.key || '[]', left(json_extract_string(e.value, '$'), {VALUE_CHARS})
        FROM kv, json_each(kv.value) AS e WHERE kv.type = 'ARRAY' AND e.type NOT IN ('ARRAY', 'OBJECT')
    """
    return _counted(db, values)


def _counted(db: duckdb.DuckDBPyConnection, values: str) -> tuple[Distribution, ...]:
    """Counts of `values` (variant, key, value) for the most frequent keys: each key's top values, the
    rest as "(other)"."""
    db.execute(
        "CREATE OR REPLACE TEMP TABLE counted AS SELECT variant, key, value, count(*) AS n "
        f"FROM ({values}) GROUP BY ALL"
    )
    keys = db.execute(
        # Few values first (labels, flags), then lists and free text; the most frequent keys only.
        "SELECT key, count(DISTINCT value) AS distinct_values FROM counted GROUP BY key "
        f"ORDER BY sum(n) DESC LIMIT {TOP_KEYS}"
    ).fetchall()
    distributions = []
    for key, distinct in sorted(keys, key=lambda k: (k[1], k[0])):
        rows = db.execute(
            "WITH ranked AS (SELECT value, row_number() OVER (ORDER BY sum(n) DESC, value) AS rank "
            "FROM counted WHERE key = ? GROUP BY value) "
            f"SELECT c.variant, CASE WHEN r.rank <= {TOP_VALUES} THEN coalesce(c.value, 'null') "
            f"ELSE '{OTHER}' END AS shown, sum(c.n) AS n, min(r.rank) AS rank FROM counted c "
            "JOIN ranked r ON c.value IS NOT DISTINCT FROM r.value WHERE c.key = ? GROUP BY ALL "
            "ORDER BY rank, c.variant",
            [key, key],
        ).fetchall()
        counts = tuple((str(v), str(value), int(n)) for v, value, n, _ in rows)
        distributions.append(Distribution(str(key), counts, int(distinct)))
    return tuple(distributions)


def _text(value: Any) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= SAMPLE_CHARS else text[: SAMPLE_CHARS - 1] + "…"


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
