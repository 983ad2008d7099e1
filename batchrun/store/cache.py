"""A response cache shared across jobs: the same request to the same endpoint is paid for once.

Opt-in per job (`[cache] enabled = true`). A local SQLite database (stdlib, safe for several processes at
once) maps a hash of (wire format, endpoint, rendered request) to the answer. The rendered request holds
the model and every parameter, so an evaluation sweep that changes one variant sends only what changed.
Only successful answers are stored; errors are never cached.

The cache can never fail a row or a run: an answer it cannot store or read (a reply holding a lone
surrogate, a full disk, a database that broke mid-run) is a warning, and the run goes on without the cache.
A cache file that is not a database when the run starts is set aside (renamed `*.corrupt-TIME`) and a new
one begun. Answers are private: the folder is created 0700 and the file kept 0600.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from batchrun.errors import UsageError
from batchrun.records import Request, Result

# The answer's fields worth keeping; the row-specific ones (custom_id, latency, attempts) are not.
ANSWER_FIELDS = (
    "completion", "finish_reason", "reasoning", "tool_calls", "prompt_tokens", "completion_tokens",
    "cached_tokens", "reasoning_tokens", "total_tokens", "model", "response_id", "completions", "json",
)  # fmt: skip
_SCHEMA = "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, answer TEXT NOT NULL)"
_LOOKUP_CHUNK = 500  # SQLite limits the number of bound parameters in one statement
_SIDE_FILES = ("-wal", "-shm")  # SQLite's write-ahead log and its index, beside the database
_CORRUPT = (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT)  # what a file that is no database raises

log = logging.getLogger("batchrun")


class ResponseCache:
    """Answers by request, in `folder/responses.sqlite`, scoped to one wire format and endpoint.

    Raises `UsageError` (before the run sends anything) when the folder or file cannot be made or opened.
    """

    def __init__(self, folder: Path, *, kind: str, base_url: str) -> None:
        self.path = folder / "responses.sqlite"
        self._scope = f"{kind}\0{base_url.rstrip('/')}\0".encode()
        self._broken = False  # after a failure mid-run: no more reads or writes, the run goes on
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._db = self._open()
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorcode", None) not in _CORRUPT:
                raise self._unusable(exc) from None  # locked, unreadable: the file may be fine; keep it
            log.warning("the response cache %s is not a database (%s); setting it aside", self.path, exc)
            try:
                self._set_aside()
                self._db = self._open()
            except (OSError, sqlite3.Error) as again:
                raise self._unusable(again) from None
        except OSError as exc:
            raise self._unusable(exc) from None

    def _open(self) -> sqlite3.Connection:
        """Connect, creating the file 0600 (SQLite gives its log files the same mode), and set it up."""
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(self.path, 0o600)  # a file made by an older batchrun had the umask's mode
        # Autocommit off (the default): each put_many is one transaction. WAL lets readers and one
        # writer from several jobs work at once; a 30 s busy timeout rides out another job's commit.
        db = sqlite3.connect(self.path, timeout=30, isolation_level="DEFERRED")
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(_SCHEMA)
            db.commit()
        except BaseException:
            db.close()
            raise
        return db

    def _set_aside(self) -> None:
        """Rename a corrupt database (and its log files) out of the way, keeping it for a look."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for suffix in ("", *_SIDE_FILES):
            path = Path(f"{self.path}{suffix}")
            if path.exists():
                path.rename(path.with_name(f"{path.name}.corrupt-{stamp}"))
        log.warning("the corrupt cache file is kept as %s.corrupt-%s; a new cache begins", self.path, stamp)

    def _unusable(self, exc: BaseException) -> UsageError:
        reason = getattr(exc, "strerror", None) or str(exc)
        return UsageError(
            f"cannot use the response cache {self.path}: {reason}. Fix its folder, set [cache] path to "
            "another, or set [cache] enabled = false"
        )

    def _failed(self, doing: str, exc: BaseException) -> None:
        """A failure mid-run: warn once and go on without the cache (answers still reach the journal)."""
        if not self._broken:
            log.warning("the response cache %s failed %s (%s); going on without it", self.path, doing, exc)
        self._broken = True

    def key(self, request: Request) -> str:
        """The cache key of a request: its endpoint and its exact bytes on the wire."""
        return hashlib.blake2b(self._scope + request.payload, digest_size=20).hexdigest()

    def get_many(self, requests: Sequence[Request]) -> dict[str, Result]:
        """Cached answers by custom_id, as rows marked `cached` that cost nothing on this run."""
        if self._broken:
            return {}
        # Rows with the same request (duplicate prompts) share one key and one answer.
        keys: dict[str, list[str]] = {}
        for request in requests:
            keys.setdefault(self.key(request), []).append(request.custom_id)
        found: dict[str, Result] = {}
        key_list = list(keys)
        try:
            for start in range(0, len(key_list), _LOOKUP_CHUNK):
                chunk = key_list[start : start + _LOOKUP_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(f"SELECT key, answer FROM responses WHERE key IN ({marks})", chunk)
                for key, answer in rows.fetchall():
                    fields = _answer(answer)
                    if fields is None:
                        continue  # an entry we cannot read is a miss: the row is sent
                    for custom_id in keys[key]:
                        found[custom_id] = Result(custom_id, "ok", cost_usd=0.0, cached=True, **fields)
        except sqlite3.Error as exc:
            self._failed("a read", exc)
            return {}
        return found

    def put_many(self, answers: Iterable[tuple[str, Result]]) -> None:
        """Store successful answers under their keys (errors are skipped); never raises."""
        if self._broken:
            return
        # ensure_ascii: a lone surrogate in a reply is stored as its `\ud83d` escape, which SQLite takes.
        rows = [(key, json.dumps({f: getattr(r, f) for f in ANSWER_FIELDS})) for key, r in answers if r.ok]
        if not rows:
            return
        try:
            with self._db:
                self._db.executemany("INSERT OR REPLACE INTO responses (key, answer) VALUES (?, ?)", rows)
        except (sqlite3.Error, ValueError) as exc:
            self._failed("a write", exc)

    def close(self) -> None:
        """Close the database."""
        try:
            self._db.close()
        except sqlite3.Error as exc:
            self._failed("closing", exc)


def _answer(text: str) -> dict[str, Any] | None:
    """An entry's fields, or None when it is not what `put_many` writes (a damaged or foreign row)."""
    try:
        fields = json.loads(text)
    except (ValueError, TypeError):
        return None
    if not isinstance(fields, dict) or not set(fields) <= set(ANSWER_FIELDS):
        return None
    return fields
