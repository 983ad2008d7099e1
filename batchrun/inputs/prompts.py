"""Reading prompt sets in slices and rendering rows into requests.

Three ways a row becomes a request: a `[prompt] template` with `{column}` placeholders, a `messages_column`
holding an OpenAI-style messages list, or rows that already are OpenAI Batch API lines
(`custom_id`, `method`, `url`, `body`). The file is read in batches, never whole (`batchrun.inputs.readers`).

A row that cannot be sent (a line that does not parse, a null in a template column, a value a provider
cannot take: `batchrun.inputs.wire`) is a `BadRow` naming its line (or row) and id. `[input] on_bad_row`
says what becomes of it: "skip" leaves it out, "error" (and "fail", once the whole-input check of
`batchrun.inputs.validate` has let the run start) makes it an error row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from batchrun.errors import InputError
from batchrun.inputs import wire
from batchrun.inputs.readers import SUFFIXES, Batch, NarrowSchema, Reader
from batchrun.inputs.render import BodyEncoder, Template, encode, estimate_tokens
from batchrun.job.schema import Job
from batchrun.providers import KINDS
from batchrun.records import OUTPUT_COLUMNS, Request, Result

if TYPE_CHECKING:
    import polars as pl

BATCH_KEYS = ("custom_id", "method", "url", "body")
BATCH_URLS = ("/v1/chat/completions", "/chat/completions")
SLICE_ROWS = 10_000  # rows read at a time
RENDER_ROWS = 1_000  # rows rendered at a time: ~7 ms of work between two turns of the event loop


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row that cannot be sent: where it is (`line 7 (id "a")`) and why."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Slice:
    """A slice of the input: its columns as they go to the output (with `custom_id`), and its work items.

    An item is a `Request` to send, or a `Result` for a row that cannot be sent (a null in a template column).
    """

    frame: pl.DataFrame
    items: list[Request | Result]
    part: str = ""  # prefix of the slice's input part in the run folder: orders a sweep's variants


class PromptSet:
    """The job's prompt set: validated on construction, then read a batch at a time."""

    def __init__(self, job: Job, *, limit: int | None = None, slice_rows: int = SLICE_ROWS) -> None:
        self.job = job
        self.path = job.input.path
        self.limit = limit
        self.slice_rows = slice_rows
        self.on_bad_row = job.input.on_bad_row
        self.rows: int | None = None  # the rows to run, once `batchrun.inputs.validate` has counted them
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
        # The first read is short, but it fills the first wave: rows past it would wait for the next read,
        # which competes for the GIL with a thousand connections opening.
        first = max(RENDER_ROWS, job.limits.concurrency)
        self.reader = Reader(
            self.path, lines_only=self.batch_lines, limit=limit, slice_rows=slice_rows, first_rows=first
        )
        self.columns = list(BATCH_KEYS) if self.batch_lines else self.reader.columns()
        self._check_columns()
        params = dict(job.params)
        self._bodies = BodyEncoder(job.provider.model, params)
        # Outputs rarely reach max_tokens; half of it (or 256) is a fair first guess for the rate limiter.
        self._est_output = int(params.get("max_tokens") or params.get("max_completion_tokens") or 512) // 2

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
        """The number of rows to run (after `limit`), or None when the input cannot be counted (or a shard
        runs: only rendering tells which rows are its own)."""
        if self.job.shard is not None:
            return None
        return self.rows if self.rows is not None else self.reader.count_rows()

    def slices(self) -> Iterator[Slice]:
        """The input in order, `RENDER_ROWS` rows at a time, each piece with its rendered requests."""
        for batch in self.batches():
            yield from self.render_batch(batch)

    def batches(self) -> Iterator[Batch]:
        """The input in order, a batch (about `slice_rows` rows) at a time."""
        try:
            yield from self.reader.batches()
        except NarrowSchema as exc:
            # `batchrun.inputs.validate` widens the types and reads again; a read without it cannot.
            raise InputError(
                self.path, f"a value does not fit the column types read from the first rows: {exc}"
            ) from None

    def render_batch(self, batch: Batch) -> Iterator[Slice]:
        """A batch rendered `RENDER_ROWS` rows at a time.

        The runner renders in its event loop (in a thread, the GIL it took slowed every request in
        flight), so each piece must be short: a whole 10,000-row slice stalled the loop for 80 ms.
        """
        for start in range(0, batch.frame.height, RENDER_ROWS):
            yield self.render(batch.piece(start, RENDER_ROWS))

    def render(self, batch: Batch) -> Slice:
        """Rows rendered into requests; a bad row becomes an error result, or is left out (`skip`).

        A shard's run (`--shard I/N`) keeps only the rows whose `custom_id` falls in its shard.
        """
        rendered = self._render_batch_lines(batch) if self.batch_lines else self._render_rows(batch)
        shard = self.job.shard
        if shard is None:
            return rendered
        import polars as pl

        keep = [shard.holds(item.custom_id) for item in rendered.items]
        items = [item for item, kept in zip(rendered.items, keep, strict=True) if kept]
        return Slice(rendered.frame.filter(pl.Series(keep, dtype=pl.Boolean)), items, rendered.part)

    def bad_rows(self, batch: Batch) -> Iterator[BadRow]:
        """The rows of `batch` that cannot be sent, found as `render` finds them, without rendering."""
        if self.batch_lines:
            for i, line in enumerate(batch.frame.get_column("line").to_list()):
                try:
                    self._batch_body(line, batch.unreadable.get(i))
                except ValueError as exc:
                    yield BadRow(self._where_line(batch, i, line), str(exc))
            return
        values, ids = self._values(batch)
        problems = self._unsendable(batch)
        messages_column = self.job.prompt.messages_column
        for i in range(batch.frame.height):
            reason = problems.get(i)
            if reason is None and messages_column is not None:
                try:
                    self._messages({messages_column: values[messages_column][i]})
                except ValueError as exc:
                    reason = str(exc)
            if reason is not None:
                yield BadRow(self._where(batch, i, ids), reason)

    def _values(self, batch: Batch) -> tuple[dict[str, list[Any]], list[Any] | None]:
        """The columns a row's request is made of, as lists, and the id column's values."""
        needed = list(self.template.columns) if self.template is not None else []
        if self.job.prompt.messages_column:
            needed.append(self.job.prompt.messages_column)
        id_column = self.job.input.id_column
        if id_column:
            needed.append(id_column)
        values = {c: batch.frame.get_column(c).to_list() for c in dict.fromkeys(needed)}
        return values, values[id_column] if id_column else None

    def _unsendable(self, batch: Batch) -> dict[int, str]:
        """Rows known bad before their messages are built: unreadable lines, nulls in template columns."""
        problems = dict(batch.unreadable)
        if self.template is None or not self.template.columns:
            return problems
        import polars as pl

        frame = batch.frame.select(self.template.columns)
        if not any(frame.null_count().row(0)):
            return problems  # the usual case, checked column by column in Rust
        nulls = frame.select(pl.coalesce(pl.when(pl.col(c).is_null()).then(pl.lit(c)) for c in frame.columns))
        for i, column in enumerate(nulls.to_series().to_list()):
            if column is not None:
                problems.setdefault(i, f"column {column!r} is null")
        return problems

    def _where(self, batch: Batch, i: int, ids: list[Any] | None) -> str:
        """`line 7 (id "a")`: the row's place in the file and, when readable, its id column's value."""
        where = batch.where(i)
        if ids is not None and i not in batch.unreadable and ids[i] is not None:
            where += f" ({self.job.input.id_column} {_show(ids[i])})"
        return where

    def _where_line(self, batch: Batch, i: int, line: str) -> str:
        """`line 7 (custom_id "r7")`: a batch line's place and, when it parses, its custom_id."""
        where = batch.where(i)
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            return where
        if isinstance(record, dict) and record.get("custom_id") is not None:
            where += f" (custom_id {_show(record['custom_id'])})"
        return where

    def _render_rows(self, batch: Batch) -> Slice:
        import polars as pl

        frame = batch.frame
        values, ids = self._values(batch)
        problems = self._unsendable(batch)
        strings_only = self.template is not None
        items: list[Request | Result] = []
        custom_ids: list[str] = []
        keep: list[bool] = []
        for i in range(frame.height):
            row = {c: v[i] for c, v in values.items()}
            row_key = f"id:{ids[i]}" if ids is not None else f"row:{batch.first_row + i}"
            try:
                if i in problems:
                    raise ValueError(problems[i])
                messages = self._messages(row)
            except ValueError as exc:
                keep.append(self.on_bad_row != "skip")
                if not keep[-1]:
                    continue
                # An unreadable line has no id to key on: its place in the file stands in.
                key = f"unreadable:{batch.first_row + i}" if i in batch.unreadable else row_key
                custom_id = _digest(key.encode())
                items.append(_input_error(custom_id, str(BadRow(self._where(batch, i, ids), str(exc)))))
            else:
                keep.append(True)
                body = self._bodies.body(messages)
                payload = self._bodies.encode(messages, strings_only=strings_only)
                custom_id = _digest(row_key.encode() + b"\0" + payload)
                items.append(Request(custom_id, body, payload, estimate_tokens(messages), self._est_output))
            custom_ids.append(custom_id)
        if not all(keep):
            frame = frame.filter(pl.Series(keep, dtype=pl.Boolean))
        renames = {c: f"input_{c}" for c in frame.columns if c in OUTPUT_COLUMNS}
        out = frame.rename(renames).with_columns(pl.Series("custom_id", custom_ids, dtype=pl.String))
        return Slice(out, items)

    def _messages(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        """The row's messages; ValueError says why the row cannot be sent (nulls are checked before)."""
        if self.template is not None:
            messages: list[dict[str, Any]] = [{"role": "user", "content": self.template.render(row)}]
        else:
            column = self.job.prompt.messages_column
            assert column is not None
            messages = _parse_messages(row[column], column)
        system = self.job.prompt.system
        if system is not None and not (messages and messages[0].get("role") in ("system", "developer")):
            messages.insert(0, {"role": "system", "content": system})
        return messages

    def _render_batch_lines(self, batch: Batch) -> Slice:
        import polars as pl

        columns: dict[str, list[Any]] = {key: [] for key in BATCH_KEYS}
        items: list[Request | Result] = []
        for i, line in enumerate(batch.frame.get_column("line").to_list()):
            try:
                record, request = self._batch_request(line, batch.unreadable.get(i))
            except ValueError as exc:
                if self.on_bad_row == "skip":
                    continue
                custom_id = _digest(line.encode())
                items.append(_input_error(custom_id, str(BadRow(self._where_line(batch, i, line), str(exc)))))
                record = {"custom_id": custom_id, "method": None, "url": None, "body": line}
            else:
                items.append(request)
            columns["custom_id"].append(str(record["custom_id"]))
            columns["method"].append(record["method"])
            columns["url"].append(record["url"])
            body = record["body"]
            columns["body"].append(body if isinstance(body, str) else json.dumps(body, ensure_ascii=False))
        return Slice(pl.DataFrame(columns, schema=dict.fromkeys(BATCH_KEYS, pl.String)), items)

    def _batch_request(self, line: str, unreadable: str | None = None) -> tuple[dict[str, Any], Request]:
        """Parse one OpenAI Batch API line; ValueError says what is wrong with it."""
        record, body = self._batch_body(line, unreadable)
        est_output = int(body.get("max_tokens") or body.get("max_completion_tokens") or 512) // 2
        request = Request(
            str(record["custom_id"]), body, encode(body), estimate_tokens(body["messages"]), est_output
        )
        return record, request

    def _batch_body(self, line: str, unreadable: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
        """A batch line's record and the body to send (the job's model and `[params]` over the line's)."""
        if unreadable is not None:
            raise ValueError(unreadable)
        try:
            # orjson, not json: it refuses NaN, infinity, lone surrogates and nesting past 1,024 levels,
            # none of which a provider takes (json let a line 100,000 levels deep crash the run).
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc.msg} at character {exc.pos + 1})") from None
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
        problem = wire.body_problem(body, parsed=True)  # [params] are checked at load already
        if problem is not None:
            raise ValueError(problem)
        params = {k: v for k, v in body.items() if k not in ("model", "messages")}
        KINDS[self.job.provider.kind].normalize_params(params, batch_lines=False)  # the kind's own rules
        return record, body


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _input_error(custom_id: str, message: str) -> Result:
    return Result(custom_id, "error", error_type="invalid_input", error=message)


def _show(value: Any) -> str:
    """An id for a message: text in quotes, cut to a readable length."""
    text = json.dumps(value, ensure_ascii=False, default=str) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _parse_messages(value: Any, column: str) -> list[dict[str, Any]]:
    parsed = isinstance(value, str)
    if parsed:
        try:
            value = orjson.loads(value)  # depth-limited, and refuses NaN: see `_batch_body`
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"column {column!r} is not valid JSON ({exc.msg})") from None
    if not isinstance(value, list) or not value:
        raise ValueError(f"column {column!r} must hold a non-empty list of messages ({{role, content}})")
    problem = wire.messages_problem(value, f"column {column!r}", parsed=parsed)
    if problem is not None:
        raise ValueError(problem)
    # Polars gives every struct field to every row; a null field was absent in the source.
    return [_strip_nulls(m) for m in value]


def _strip_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_nulls(v) for v in value]
    return value
