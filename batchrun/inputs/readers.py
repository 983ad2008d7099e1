"""Reading a prompt set (JSONL, Parquet, CSV) in batches, knowing where each row sits in the file.

A batch holds at most `slice_rows` rows; memory holds one batch at a time. Each JSONL row keeps its 1-based
line in the file (blank lines are skipped but counted), so a message can name the line a user opens in an
editor. A JSONL line that cannot be read (not JSON, not an object, not UTF-8) does not stop the read: its row
comes back all null, with the reason in `Batch.unreadable`, and the caller decides what a bad row means.

Column types are inferred from the first rows. A value later in the file that does not fit them (text in a
column of numbers) raises `NarrowSchema`; `Reader.widen` then infers the types from the whole file, and the
read starts again. A CSV or Parquet file that cannot be read at all is an `InputError` naming the row.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from batchrun.errors import InputError
from batchrun.inputs import wire
from batchrun.redact import first_line

if TYPE_CHECKING:
    import polars as pl

SUFFIXES = {".jsonl": "ndjson", ".ndjson": "ndjson", ".parquet": "parquet", ".csv": "csv"}
INFER_ROWS = 10_000  # rows whose values decide the column types, unless the file proves them too narrow
_EMPTY_OBJECT = b"{}\n"  # what an unreadable JSONL line is read as: a row of nulls


class NarrowSchema(Exception):
    """A value does not fit the column types inferred from the first rows; `Reader.widen` fixes it."""


@dataclass(frozen=True, slots=True)
class Batch:
    """Rows as read: their frame, the index of the first among the input's rows, and where each sits."""

    frame: pl.DataFrame
    first_row: int  # 0-based, among the input's rows (blank lines not counted)
    lines: Sequence[int] | None = None  # the 1-based line of each row in a JSONL file
    unreadable: dict[int, str] = field(default_factory=dict)  # offset -> why that line cannot be read

    def piece(self, start: int, rows: int) -> Batch:
        """`rows` rows from `start`, as a batch of their own."""
        end = start + rows
        return Batch(
            self.frame.slice(start, rows),
            self.first_row + start,
            self.lines[start:end] if self.lines is not None else None,
            {i - start: why for i, why in self.unreadable.items() if start <= i < end},
        )

    def where(self, offset: int) -> str:
        """`line N` (JSONL) or `row N` (1-based, header not counted) for the row at `offset`."""
        if self.lines is not None:
            return f"line {self.lines[offset]}"
        return f"row {self.first_row + offset + 1}"


class Reader:
    """One input file, read in batches of about `slice_rows` rows (up to `limit` rows in all)."""

    def __init__(
        self,
        path: Path,
        *,
        lines_only: bool = False,
        limit: int | None = None,
        slice_rows: int = 10_000,
        first_rows: int = 10_000,
    ) -> None:
        self.path = path
        self.lines_only = lines_only  # JSONL read as text lines, one column `line` (OpenAI batch lines)
        self.limit = limit
        self.slice_rows = slice_rows
        self.first_rows = min(first_rows, slice_rows)  # short: the first requests wait on the first read
        self.format = SUFFIXES.get(path.suffix.lower())
        self.widened = False
        self.schema: pl.Schema | None = None

    def columns(self) -> list[str]:
        """The input's column names, with their types inferred from the first rows."""
        if self.lines_only:
            return ["line"]
        self.schema = self._infer(INFER_ROWS)
        return list(self.schema.names())

    def widen(self) -> None:
        """Infer the column types from every row (a pass over the file), after a `NarrowSchema`."""
        self.schema = self._infer(None)
        self.widened = True

    def _infer(self, rows: int | None) -> pl.Schema:
        try:
            if self.format == "ndjson":
                return self._infer_ndjson(rows)
            return self._scan(rows).collect_schema()
        except OSError as exc:
            raise InputError(self.path, f"cannot read the input: {exc.strerror or exc}") from None
        except Exception as exc:  # polars raises many types for a malformed file; all mean the same here
            located = self._located()
            raise InputError(self.path, located or f"cannot read the input: {first_line(exc, 300)}") from None

    def _infer_ndjson(self, rows: int | None) -> pl.Schema:
        """Column types from the first `rows` readable lines of a JSONL file (None: every line).

        Lines that cannot be read are passed over here (the read names them), so one bad line among the
        first rows does not hide the columns of the others. A chunk at a time, merged as polars would.
        """
        import polars as pl

        frames = [pl.DataFrame()]
        left = rows
        with self.path.open("rb") as file:
            while (left is None or left > 0) and (chunk := list(itertools.islice(file, self.slice_rows))):
                lines = [line for line in chunk if not line.isspace()][:left]
                if not lines:
                    continue
                try:
                    frame = pl.read_ndjson(io.BytesIO(b"".join(lines)), infer_schema_length=None)
                except pl.exceptions.PolarsError:
                    frame = _readable_lines(lines)
                frames.append(frame.clear())
                left = None if left is None else left - frame.height
        schema = pl.concat(frames, how="diagonal_relaxed").schema
        if not schema:
            raise InputError(self.path, "no line of the input is a JSON object ({...} on one line)")
        return schema

    def _scan(self, infer_rows: int | None = INFER_ROWS) -> pl.LazyFrame:
        """A Parquet or CSV file as polars scans it (JSONL is read line by line: see `_infer_ndjson`)."""
        import polars as pl

        if self.format == "parquet":
            frame = pl.scan_parquet(self.path)
        else:
            frame = pl.scan_csv(self.path, infer_schema_length=infer_rows)
        return frame.head(self.limit) if self.limit is not None else frame

    def count_rows(self) -> int | None:
        """The number of rows to read (after `limit`), or None when the input cannot be counted."""
        import polars as pl

        try:
            if self.format == "ndjson":
                rows = _count_lines(self.path)
                return rows if self.limit is None else min(rows, self.limit)
            return int(self._scan().select(pl.len()).collect().item())
        except (pl.exceptions.PolarsError, OSError):
            return None  # the read reports a broken input with its row; a progress total is not worth it

    def batches(self) -> Iterator[Batch]:
        """The input in order, a batch at a time; `NarrowSchema` when a value does not fit the types."""
        row = 0
        left = self.limit
        for raw in self._raw_batches():
            batch = raw.piece(0, left) if left is not None and raw.frame.height > left else raw
            if batch.frame.height == 0:
                continue
            yield Batch(batch.frame, row, batch.lines, batch.unreadable)
            row += batch.frame.height
            if left is not None:
                left -= batch.frame.height
                if left == 0:
                    return

    def _raw_batches(self) -> Iterator[Batch]:
        """Batches not yet numbered or cut to `limit`."""
        if self.format == "ndjson":
            yield from self._ndjson_batches()
        elif self.format == "parquet":
            yield from self._parquet_batches()
        else:
            yield from self._csv_batches()

    def _ndjson_batches(self) -> Iterator[Batch]:
        """JSONL read a chunk of lines at a time, each chunk parsed with the schema inferred at the start.

        Not polars' `collect_batches`: it reads ahead without bound (measured: memory grew by 40 MB per
        100,000 JSONL rows however slowly the batches were taken).
        """
        import polars as pl

        size = self.first_rows
        try:
            file = self.path.open("rb")
        except OSError as exc:
            raise InputError(self.path, f"cannot read the input: {exc.strerror or exc}") from None
        with file:
            first = 1  # the line number of the chunk's first line
            while chunk := list(itertools.islice(file, size)):
                size = self.slice_rows
                numbers: Sequence[int] = range(first, first + len(chunk))
                lines = [line for line in chunk if not line.isspace()]
                if len(lines) < len(chunk):
                    numbers = [n for n, line in zip(numbers, chunk, strict=True) if not line.isspace()]
                first += len(chunk)
                if not lines:
                    continue  # a chunk of blank lines: more may follow
                if self.lines_only:
                    texts, unreadable = _decode(lines)
                    frame = pl.DataFrame({"line": texts}, schema={"line": pl.String})
                else:
                    frame, unreadable = self._parse_ndjson(lines)
                yield Batch(frame, 0, numbers, unreadable)

    def _read_ndjson(self, lines: list[bytes]) -> pl.DataFrame:
        import polars as pl

        return pl.read_ndjson(io.BytesIO(b"".join(lines)), schema=self.schema)

    def _parse_ndjson(self, lines: list[bytes]) -> tuple[pl.DataFrame, dict[int, str]]:
        """The lines as a frame; a line polars cannot read becomes a row of nulls, its reason kept."""
        import polars as pl

        try:
            frame = self._read_ndjson(lines)
            if frame.height == len(lines):  # one row a line, or the line numbers would drift
                return frame, {}
        except pl.exceptions.PolarsError:
            pass  # some line is bad: find which, line by line (the rare path)
        unreadable = {i: why for i, line in enumerate(lines) if (why := _object_problem(line)) is not None}
        cleaned = [_EMPTY_OBJECT if i in unreadable else line for i, line in enumerate(lines)]
        try:
            return self._read_ndjson(cleaned), unreadable
        except pl.exceptions.PolarsError as exc:
            # Every line is a JSON object, so some value does not fit its column's inferred type.
            if not self.widened:
                raise NarrowSchema(str(exc)) from None
        for i in self._misfits(cleaned, 0):
            unreadable[i] = self._misfit_reason(cleaned[i])
            cleaned[i] = _EMPTY_OBJECT
        return self._read_ndjson(cleaned), unreadable

    def _misfits(self, lines: list[bytes], start: int) -> list[int]:
        """Offsets of the lines polars cannot read with the schema, found by halving."""
        import polars as pl

        try:
            self._read_ndjson(lines)
            return []
        except pl.exceptions.PolarsError:
            if len(lines) == 1:
                return [start]
        mid = len(lines) // 2
        return self._misfits(lines[:mid], start) + self._misfits(lines[mid:], start + mid)

    def _misfit_reason(self, line: bytes) -> str:
        """Which column's value does not fit its type, in words."""
        import polars as pl

        assert self.schema is not None
        record = orjson.loads(line)
        for name, dtype in self.schema.items():
            if name not in record:
                continue
            try:
                pl.read_ndjson(io.BytesIO(orjson.dumps({name: record[name]})), schema={name: dtype})
            except pl.exceptions.PolarsError:
                return f"column {name!r}: {_short(record[name])} does not fit the column's type {dtype}"
        return "a value does not fit its column's type"

    def _parquet_batches(self) -> Iterator[Batch]:
        import polars as pl
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = 0
        try:
            for batch in pq.ParquetFile(self.path).iter_batches(batch_size=self.slice_rows):
                frame = pl.DataFrame(batch)
                yield Batch(frame, 0)
                rows += frame.height
        except (pa.ArrowException, pl.exceptions.PolarsError, OSError) as exc:
            raise InputError(
                self.path, f"cannot read the input after row {rows}: {first_line(exc, 300)}"
            ) from None

    def _csv_batches(self) -> Iterator[Batch]:
        """CSV through pyarrow's streaming reader, with the column types polars inferred."""
        import polars as pl
        import pyarrow as pa
        import pyarrow.csv as pv

        assert self.schema is not None
        types = pl.DataFrame(schema=self.schema).to_arrow().schema
        # polars' rules: only an empty field is null ("NA" is Namibia), and the column names polars gave
        # (a repeated header name becomes `x_duplicated_0`).
        read = pv.ReadOptions(column_names=list(self.schema.names()), skip_rows=1)
        convert = pv.ConvertOptions(
            column_types=types, null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=False
        )
        rows = 0
        try:
            reader = pv.open_csv(self.path, read_options=read, convert_options=convert)
            for batch in reader:
                frame = pl.DataFrame(batch)
                yield Batch(frame, 0)
                rows += frame.height
        except (pa.ArrowException, OSError) as exc:
            located = self._located()
            if not located and not self.widened:
                raise NarrowSchema(str(exc)) from None  # no broken row: a type inferred too narrow
            message = located or f"cannot read the input after row {rows}: {first_line(exc, 300)}"
            raise InputError(self.path, message) from None

    def _located(self) -> str | None:
        """For a CSV that cannot be read: the first row that is not UTF-8 or has the wrong field count."""
        return locate_csv_problem(self.path) if self.format == "csv" else None


def locate_csv_problem(path: Path) -> str | None:
    """The first row of a CSV file that is not UTF-8 text or whose fields do not match the header."""
    try:
        with path.open(encoding="utf-8", errors="surrogateescape", newline="") as file:
            rows = csv.reader(file)
            header = next(rows, None)
            if header is None:
                return None
            for number, fields in enumerate(rows, 1):
                if not fields:
                    continue
                if len(fields) != len(header):
                    return f"row {number} has {len(fields)} fields where the header has {len(header)}"
                for name, value in zip(header, fields, strict=True):
                    if not wire.is_utf8(value):
                        return f"row {number}, column {name!r} is not UTF-8 text: save the file as UTF-8"
    except (OSError, csv.Error) as exc:
        return f"cannot be read as CSV ({exc})"
    return None


def _readable_lines(lines: list[bytes]) -> pl.DataFrame:
    """The lines polars can read each on its own, as one frame (inferring types: the rare path)."""
    import polars as pl

    frames = []
    for line in lines:
        if _object_problem(line) is None:
            with contextlib.suppress(pl.exceptions.PolarsError):
                frames.append(pl.read_ndjson(io.BytesIO(line)))
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def _decode(lines: list[bytes]) -> tuple[list[str], dict[int, str]]:
    """Lines as text (line ends dropped); a line that is not UTF-8 is kept with U+FFFD, its reason noted."""
    texts: list[str] = []
    unreadable: dict[int, str] = {}
    for i, line in enumerate(lines):
        try:
            texts.append(line.decode().rstrip("\r\n"))
        except UnicodeDecodeError as exc:
            unreadable[i] = f"not UTF-8 text (byte {exc.start + 1})"
            texts.append(line.decode(errors="replace").rstrip("\r\n"))
    return texts, unreadable


def _object_problem(line: bytes) -> str | None:
    """Why a JSONL line is not a JSON object polars can read, or None."""
    try:
        line.decode()
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text (byte {exc.start + 1})"
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return f"not valid JSON ({exc.msg} at character {exc.pos + 1})"
    if not isinstance(value, dict):
        return f"not a JSON object ({type(value).__name__}); each line must be one object"
    return None


def _short(value: Any) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= 40 else text[:37] + "..."


def _count_lines(path: Path) -> int:
    """Non-blank lines of a JSONL file, read a line at a time.

    polars parses every line to count them: 460 MB of memory for a million-row file, where this holds
    one line.
    """
    with path.open("rb") as file:
        return sum(1 for line in file if not line.isspace())
