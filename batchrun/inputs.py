"""Reading prompt sets in slices and rendering rows into requests.

Three ways a row becomes a request: a `[prompt] template` with `{column}` placeholders, a `messages_column`
holding an OpenAI-style messages list, or rows that already are OpenAI Batch API lines
(`custom_id`, `method`, `url`, `body`). The file is read with polars in slices, never whole.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from batchrun.errors import InputError
from batchrun.job import Job
from batchrun.records import OUTPUT_COLUMNS, Request, Result

if TYPE_CHECKING:
    from pathlib import Path

    import polars as pl

SUFFIXES = {".jsonl": "ndjson", ".ndjson": "ndjson", ".parquet": "parquet", ".csv": "csv"}
BATCH_KEYS = ("custom_id", "method", "url", "body")
BATCH_URLS = ("/v1/chat/completions", "/chat/completions")
SLICE_ROWS = 10_000  # rows read at a time
RENDER_ROWS = 1_000  # rows rendered at a time: ~7 ms of work between two turns of the event loop
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}\"'\n:]+)\}")


@dataclass(frozen=True, slots=True)
class Slice:
    """A slice of the input: its columns as they go to the output (with `custom_id`), and its work items.

    An item is a `Request` to send, or a `Result` for a row that cannot be sent (a null in a template column).
    """

    frame: pl.DataFrame
    items: list[Request | Result]
    part: str = ""  # prefix of the slice's input part in the run folder: orders a sweep's variants


class Template:
    """A prompt template: `{column}` is replaced by the row's value; `{{` and `}}` are literal braces."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.parts: list[str] = []  # literal text at even positions, column names at odd ones
        literal: list[str] = []
        pos = 0
        for match in _PLACEHOLDER.finditer(text):
            literal.append(text[pos : match.start()])
            token = match.group(0)
            if match.group(1) is None:
                literal.append(token[0])
            else:
                self.parts += ["".join(literal), match.group(1)]
                literal = []
            pos = match.end()
        literal.append(text[pos:])
        self.parts.append("".join(literal))
        self.columns = tuple(dict.fromkeys(self.parts[1::2]))

    def render(self, values: dict[str, Any]) -> str:
        """The template with each placeholder replaced by `str(values[column])`."""
        parts = self.parts
        out = [parts[0]]
        for i in range(1, len(parts), 2):
            out.append(str(values[parts[i]]))
            out.append(parts[i + 1])
        return "".join(out)


def estimate_tokens(messages: Sequence[Any]) -> int:
    """A cheap, deliberately generous token estimate for rate limiting: ~3.5 characters a token."""
    chars = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                text = part.get("text") if isinstance(part, dict) else None
                # An image costs hundreds of tokens whatever its URL's length; 1,000 chars is a middle guess.
                chars += len(text) if isinstance(text, str) else 1000
    return int(chars / 3.5) + 4 * len(messages) + 3


def encode(body: Any) -> bytes:
    """Canonical JSON: the bytes sent on the wire and hashed into the custom_id."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


class BodyEncoder:
    """`encode({"model": model, "messages": messages, **params})` for many rows, at a fifth of the CPU.

    The model and params are the same on every row: their bytes are made once, and each row encodes only
    its messages, with orjson when they are a template's (strings only: there orjson's bytes are
    json's, which keeps custom_ids and cache keys stable; its floats are written differently).
    """

    def __init__(self, model: str | None, params: dict[str, Any]) -> None:
        self.model = model
        self.params = params
        # A params key that repeats model or messages would move in the dict: no splicing then.
        self._spliced = "model" not in params and "messages" not in params
        self._head = b'{"model":' + encode(model) + b',"messages":'
        self._tail = b"," + encode(params)[1:] if params else b"}"

    def body(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """The request body."""
        return {"model": self.model, "messages": messages, **self.params}

    def encode(self, messages: list[dict[str, Any]], *, strings_only: bool) -> bytes:
        """The body's canonical bytes; `strings_only`: every value in `messages` is a str."""
        if not self._spliced:
            return encode(self.body(messages))
        encoded = orjson.dumps(messages) if strings_only else encode(messages)
        return self._head + encoded + self._tail


class PromptSet:
    """The job's prompt set: validated on construction, then read slice by slice."""

    def __init__(self, job: Job, *, limit: int | None = None, slice_rows: int = SLICE_ROWS) -> None:
        self.job = job
        self.path = job.input.path
        self.limit = limit
        self.slice_rows = slice_rows
        if not self.path.is_file():
            raise InputError(self.path, "no such input file (set [input] path or pass --input)")
        self.format = SUFFIXES.get(self.path.suffix.lower())
        if self.format is None:
            known = ", ".join(SUFFIXES)
            raise InputError(self.path, f"unknown input format {self.path.suffix!r}; use one of {known}")
        prompt = job.prompt
        self.template = Template(prompt.template) if prompt.template is not None else None
        self.batch_lines = self.template is None and prompt.messages_column is None
        if self.batch_lines and self.format != "ndjson":
            raise InputError(
                self.path,
                "[prompt] has neither template nor messages_column, so the input must be OpenAI Batch API "
                "lines in a .jsonl file",
            )
        self.columns = self._read_columns()
        self._check_columns()
        params = dict(job.params)
        self._bodies = BodyEncoder(job.provider.model, params)
        # Outputs rarely reach max_tokens; half of it (or 256) is a fair first guess for the rate limiter.
        self._est_output = int(params.get("max_tokens") or params.get("max_completion_tokens") or 512) // 2

    def _scan(self) -> pl.LazyFrame:
        import polars as pl

        if self.batch_lines:
            # A blank line is no request (editors and `cat` leave them): skip it rather than fail a row.
            frame = pl.scan_lines(self.path, name="line").filter(pl.col("line").str.strip_chars() != "")
        elif self.format == "parquet":
            frame = pl.scan_parquet(self.path)
        elif self.format == "csv":
            frame = pl.scan_csv(self.path, infer_schema_length=10_000)
        else:
            frame = pl.scan_ndjson(self.path, infer_schema_length=10_000)
        return frame.head(self.limit) if self.limit is not None else frame

    def _read_columns(self) -> list[str]:
        if self.batch_lines:
            return list(BATCH_KEYS)
        try:
            self._schema = self._scan().collect_schema()
            return list(self._schema.names())
        except Exception as exc:  # polars raises many types for a malformed file; all mean the same here
            raise InputError(self.path, f"cannot read the input: {exc}") from None

    def _check_columns(self) -> None:
        wanted: list[tuple[str, str]] = []
        if self.template is not None:
            wanted += [(c, "[prompt] template placeholder") for c in self.template.columns]
        if self.job.prompt.messages_column:
            wanted.append((self.job.prompt.messages_column, "[prompt] messages_column"))
        if self.job.input.id_column and not self.batch_lines:
            wanted.append((self.job.input.id_column, "[input] id_column"))
        for column, role in wanted:
            if column not in self.columns:
                have = ", ".join(self.columns)
                hint = " (write {{ and }} for literal braces)" if "placeholder" in role else ""
                raise InputError(self.path, f"{role} {{{column}}} is not a column; columns: {have}{hint}")

    def count_rows(self) -> int | None:
        """The number of rows to run (after `limit`), or None when the input cannot be counted."""
        import polars as pl

        try:
            if self.format == "ndjson":
                rows = _count_lines(self.path)
                return rows if self.limit is None else min(rows, self.limit)
            return int(self._scan().select(pl.len()).collect().item())
        except (pl.exceptions.PolarsError, OSError):
            return None  # slices() reports a broken input with its row; a progress total is not worth it

    def slices(self) -> Iterator[Slice]:
        """The input in order, `RENDER_ROWS` rows at a time, each piece with its rendered requests."""
        for frame, first_row in self.frames():
            yield from self.render_frame(frame, first_row)

    def render_frame(self, frame: pl.DataFrame, first_row: int) -> Iterator[Slice]:
        """A slice of the input rendered `RENDER_ROWS` rows at a time.

        The runner renders in its event loop (in a thread, the GIL it took slowed every request in
        flight), so each piece must be short: a whole 10,000-row slice stalled the loop for 80 ms.
        """
        for start in range(0, frame.height, RENDER_ROWS):
            yield self.render(frame.slice(start, RENDER_ROWS), first_row + start)

    def frames(self) -> Iterator[tuple[pl.DataFrame, int]]:
        """The input in order, a slice at a time, each with the number of its first row."""
        row = 0
        try:
            for frame in self._batches():
                if frame.height == 0:
                    continue
                yield frame, row
                row += frame.height
        except self._read_errors() as exc:
            # A row that cannot be parsed halfway through the file.
            raise InputError(self.path, f"cannot read the input after row {row}: {exc}") from None

    def _read_errors(self) -> tuple[type[Exception], ...]:
        """What reading a row that cannot be parsed raises (pyarrow, 30 ms to import, only if it reads)."""
        import polars as pl

        errors: tuple[type[Exception], ...] = (pl.exceptions.PolarsError, UnicodeDecodeError, OSError)
        if self.format == "ndjson":
            return errors
        import pyarrow as pa

        return (*errors, pa.ArrowException)

    def _batches(self) -> Iterator[pl.DataFrame]:
        """The input (up to `limit` rows) in batches of about `slice_rows`, holding one batch at a time.

        Not polars' `collect_batches`: it reads ahead without bound (measured: memory grew by 40 MB per
        100,000 JSONL rows however slowly the batches were taken, 360 MB at once for a Parquet file).
        """
        import polars as pl

        if self.format == "ndjson":
            batches = self._ndjson_batches()
        elif self.format == "parquet":
            import pyarrow.parquet as pq

            parquet = pq.ParquetFile(self.path)
            batches = (pl.DataFrame(b) for b in parquet.iter_batches(batch_size=self.slice_rows))
        else:
            batches = self._csv_batches()
        left = self.limit
        for batch in batches:
            kept = batch if left is None else batch.head(left)
            if kept.height:
                yield kept
            if left is not None:
                left -= kept.height
                if left == 0:
                    return

    def _ndjson_batches(self) -> Iterator[pl.DataFrame]:
        """JSONL read `slice_rows` lines at a time, each batch parsed with the schema read at the start."""
        import polars as pl

        with self.path.open("rb") as file:
            # The first requests wait on this read, so it is short, but it fills the first wave: rows past
            # it would wait for the next read, which competes for the GIL with a thousand connections opening.
            size = min(max(RENDER_ROWS, self.job.limits.concurrency), self.slice_rows)
            while chunk := list(itertools.islice(file, size)):
                size = self.slice_rows
                lines = [line for line in chunk if not line.isspace()]
                if not lines:
                    continue  # a slice of blank lines: more may follow
                if self.batch_lines:
                    yield pl.DataFrame({"line": [line.decode().rstrip("\r\n") for line in lines]})
                else:
                    yield pl.read_ndjson(io.BytesIO(b"".join(lines)), schema=self._schema)

    def _csv_batches(self) -> Iterator[pl.DataFrame]:
        """CSV through pyarrow's streaming reader, with the column types polars inferred at the start."""
        import polars as pl
        import pyarrow.csv as pv

        types = pl.DataFrame(schema=self._schema).to_arrow().schema
        # polars' rules: only an empty field is null ("NA" is Namibia), and the column names polars gave
        # (a repeated header name becomes `x_duplicated_0`).
        read = pv.ReadOptions(column_names=list(self._schema.names()), skip_rows=1)
        convert = pv.ConvertOptions(
            column_types=types, null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=False
        )
        reader = pv.open_csv(self.path, read_options=read, convert_options=convert)
        for batch in reader:
            yield pl.DataFrame(batch)

    def render(self, frame: pl.DataFrame, first_row: int) -> Slice:
        """One slice of the input rendered into requests (or error results for rows that cannot be sent)."""
        if self.batch_lines:
            return self._render_batch_lines(frame, first_row)
        return self._render_rows(frame, first_row)

    def _render_rows(self, frame: pl.DataFrame, first_row: int) -> Slice:
        import polars as pl

        job = self.job
        system = job.prompt.system
        id_column = job.input.id_column
        needed = list(self.template.columns) if self.template is not None else []
        messages_column = job.prompt.messages_column
        if messages_column:
            needed.append(messages_column)
        if id_column:
            needed.append(id_column)
        values = {c: frame.get_column(c).to_list() for c in dict.fromkeys(needed)}
        ids = values[id_column] if id_column else range(first_row, first_row + frame.height)

        items: list[Request | Result] = []
        custom_ids: list[str] = []
        for i in range(frame.height):
            row = {c: v[i] for c, v in values.items()}
            row_key = f"id:{ids[i]}" if id_column else f"row:{ids[i]}"
            try:
                messages = self._messages(row, system)
            except ValueError as exc:
                custom_id = _digest(row_key.encode())
                items.append(_input_error(custom_id, f"row {first_row + i}: {exc}"))
            else:
                body = self._bodies.body(messages)
                payload = self._bodies.encode(messages, strings_only=self.template is not None)
                custom_id = _digest(row_key.encode() + b"\0" + payload)
                items.append(Request(custom_id, body, payload, estimate_tokens(messages), self._est_output))
            custom_ids.append(custom_id)
        renames = {c: f"input_{c}" for c in frame.columns if c in OUTPUT_COLUMNS}
        out = frame.rename(renames).with_columns(pl.Series("custom_id", custom_ids, dtype=pl.String))
        return Slice(out, items)

    def _messages(self, row: dict[str, Any], system: str | None) -> list[dict[str, Any]]:
        """The row's messages; ValueError says why the row cannot be sent."""
        if self.template is not None:
            null = [c for c in self.template.columns if row[c] is None]
            if null:
                raise ValueError(f"column {null[0]!r} is null")
            messages: list[dict[str, Any]] = [{"role": "user", "content": self.template.render(row)}]
        else:
            column = self.job.prompt.messages_column
            assert column is not None
            messages = _parse_messages(row[column], column)
        if system is not None and not (messages and messages[0].get("role") in ("system", "developer")):
            messages.insert(0, {"role": "system", "content": system})
        return messages

    def _render_batch_lines(self, frame: pl.DataFrame, first_row: int) -> Slice:
        import polars as pl

        columns: dict[str, list[Any]] = {key: [] for key in BATCH_KEYS}
        items: list[Request | Result] = []
        for i, line in enumerate(frame.get_column("line").to_list()):
            try:
                record, request = self._batch_request(line)
            except ValueError as exc:
                # One bad line must not stop a million-line run: that row fails, the rest go on.
                custom_id = _digest(line.encode())
                items.append(_input_error(custom_id, f"line {first_row + i + 1}: {exc}"))
                record = {"custom_id": custom_id, "method": None, "url": None, "body": line}
            else:
                items.append(request)
            columns["custom_id"].append(str(record["custom_id"]))
            columns["method"].append(record["method"])
            columns["url"].append(record["url"])
            body = record["body"]
            columns["body"].append(body if isinstance(body, str) else json.dumps(body, ensure_ascii=False))
        return Slice(pl.DataFrame(columns, schema=dict.fromkeys(BATCH_KEYS, pl.String)), items)

    def _batch_request(self, line: str) -> tuple[dict[str, Any], Request]:
        """Parse one OpenAI Batch API line; ValueError says what is wrong with it."""
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not all(k in record for k in BATCH_KEYS):
            raise ValueError(f"a batch line needs the keys {', '.join(BATCH_KEYS)}")
        if record["url"] not in BATCH_URLS or str(record["method"]).upper() != "POST":
            raise ValueError("only POST /v1/chat/completions lines are supported")
        body = record["body"]
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise ValueError("body.messages must be a list")
        # The job's model and [params] win, so one batch file can be rerun against another setup.
        body = {**body, **self.job.params}
        if self.job.provider.model:
            body["model"] = self.job.provider.model
        if not body.get("model"):
            raise ValueError("body has no model; set [provider] model")
        est_output = int(body.get("max_tokens") or body.get("max_completion_tokens") or 512) // 2
        request = Request(
            str(record["custom_id"]), body, encode(body), estimate_tokens(body["messages"]), est_output
        )
        return record, request


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _input_error(custom_id: str, message: str) -> Result:
    return Result(custom_id, "error", error_type="invalid_input", error=message)


def _parse_messages(value: Any, column: str) -> list[dict[str, Any]]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"column {column!r} is not valid JSON ({exc.msg})") from None
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
        raise ValueError(f"column {column!r} must hold a non-empty list of messages ({{role, content}})")
    # Polars gives every struct field to every row; a null field was absent in the source.
    return [_strip_nulls(m) for m in value]


def _strip_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_nulls(v) for v in value]
    return value


def _count_lines(path: Path) -> int:
    """Non-blank lines of a JSONL file, read a line at a time.

    polars parses every line to count them: 460 MB of memory for a million-row file, where this holds
    one line.
    """
    with path.open("rb") as file:
        return sum(1 for line in file if not line.isspace())
