"""The batch engine's own journal: which rows went into which upload, written down before it is sent.

In the run folder, beside the results journal:

- `batches.jsonl`: one JSON line per event, appended and synced at once:
  `{"event": "intent", "part": 3, "rows": 50000, "model": "qwen-max", "at": 1764650000.1, ...}`
  before part 3 is uploaded, then `{"event": "submitted", "part": 3, "batch_id": "batch_abc"}` the moment the
  provider names its batch. A line cut short by a kill is ignored.
- `batches/part-00003.jsonl` (or `.json`): the upload, as `split` wrote it; `batches/part-00003.ids`: its
  rows, one per line: `custom_id`, JSON mode (0/1), which attempt of the row this is, and its response
  cache key (`-` without a cache), tab-separated.

With the two, a run killed at any point is picked up again: an intent without a batch id is looked for
among the provider's batches by its tag (never submitted twice), a submitted part is polled, and rows in a
part that is still live are not sent again. Results themselves go to the results journal like any row's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("batchrun")

LOG = "batches.jsonl"
FOLDER = "batches"


@dataclass(frozen=True, slots=True)
class Row:
    """One row of a part: what collecting its answer needs besides the answer."""

    custom_id: str
    json_mode: bool
    attempt: int
    cache_key: str | None = None


@dataclass(slots=True)
class PartRecord:
    """A part as the batch journal knows it."""

    index: int
    rows: int
    model: str | None
    at: float  # Unix time of the intent
    reserved_usd: float
    batch_id: str | None = None


class BatchLog:
    """The batch journal of one run folder (see the module docstring)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / LOG
        self.folder = run_dir / FOLDER
        # Stable across resumes of the same output, and short enough for the providers' metadata.
        self.run_token = hashlib.blake2b(str(run_dir.resolve()).encode(), digest_size=8).hexdigest()

    def load(self) -> dict[int, PartRecord]:
        """Every part recorded so far, by index."""
        parts: dict[int, PartRecord] = {}
        if not self.path.is_file():
            return parts
        with self.path.open("rb") as lines:
            for number, line in enumerate(lines, 1):
                event = _event(line)
                if event is None:
                    if line.endswith(b"\n"):
                        log.warning("%s: line %d is unreadable; skipped", self.path, number)
                    continue
                index = event.get("part")
                if not isinstance(index, int):
                    continue
                if event.get("event") == "intent":
                    parts[index] = PartRecord(
                        index,
                        int(event.get("rows") or 0),
                        event.get("model") if isinstance(event.get("model"), str) else None,
                        float(event.get("at") or 0.0),
                        float(event.get("reserved_usd") or 0.0),
                    )
                elif event.get("event") == "submitted" and index in parts:
                    batch_id = event.get("batch_id")
                    parts[index].batch_id = batch_id if isinstance(batch_id, str) else None
        return parts

    def intend(self, record: PartRecord) -> None:
        """Write down a part before its upload."""
        self._append(
            {
                "event": "intent",
                "part": record.index,
                "rows": record.rows,
                "model": record.model,
                "at": record.at,
                "reserved_usd": record.reserved_usd,
            }
        )

    def submitted(self, record: PartRecord, batch_id: str) -> None:
        """Write down the batch a part became, the moment it is known."""
        record.batch_id = batch_id
        self._append({"event": "submitted", "part": record.index, "batch_id": batch_id, "at": time.time()})

    def write_rows(self, index: int, rows: Iterable[Row]) -> None:
        """The part's rows, written whole before its intent (a kill leaves a `.tmp` at most)."""
        path = self.rows_path(index)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as out:
            for row in rows:
                key = row.cache_key or "-"
                out.write(f"{row.custom_id}\t{int(row.json_mode)}\t{row.attempt}\t{key}\n")
        os.replace(tmp, path)

    def read_rows(self, index: int) -> Iterator[Row]:
        """The rows of part `index`, in file order."""
        with self.rows_path(index).open(encoding="utf-8") as lines:
            for line in lines:
                custom_id, json_mode, attempt, key = line.rstrip("\n").split("\t")
                yield Row(custom_id, json_mode == "1", int(attempt), None if key == "-" else key)

    def rows_path(self, index: int) -> Path:
        """Where part `index`'s rows are listed."""
        return self.folder / f"part-{index:05d}.ids"

    def upload_path(self, index: int) -> Path | None:
        """Part `index`'s upload as `split` wrote it (`.jsonl` or `.json`); None when it is gone."""
        for extension in ("jsonl", "json"):
            path = self.folder / f"part-{index:05d}.{extension}"
            if path.is_file():
                return path
        return None

    def results_folder(self, index: int) -> Path:
        """Where part `index`'s result files are downloaded."""
        return self.folder / f"results-{index:05d}"

    def forget(self, index: int) -> None:
        """Delete a part's files once none of its rows waits on it (the journal lines stay)."""
        for path in (self.rows_path(index), self.upload_path(index)):
            if path is not None:
                path.unlink(missing_ok=True)

    def _append(self, event: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        data = (json.dumps(event, ensure_ascii=False) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)  # an intent must be on disk before its upload, a batch id as soon as it is known
        finally:
            os.close(fd)


def _event(line: bytes) -> dict[str, Any] | None:
    if not line.endswith(b"\n"):
        return None  # torn by a kill: the intent it began was never acted on
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None
