"""A response cache shared across jobs: the same request to the same endpoint is paid for once.

Opt-in per job (`[cache] enabled = true`). A local SQLite database (stdlib, safe for several processes at
once) maps a hash of (wire format, endpoint, rendered request) to the answer. The rendered request holds
the model and every parameter, so an evaluation sweep that changes one variant sends only what changed.
Only successful answers are stored; errors are never cached.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

from batchrun.records import Request, Result

# The answer's fields worth keeping; the row-specific ones (custom_id, latency, attempts) are not.
ANSWER_FIELDS = (
    "completion", "finish_reason", "reasoning", "tool_calls", "prompt_tokens", "completion_tokens",
    "cached_tokens", "reasoning_tokens", "total_tokens", "model", "response_id", "completions", "json",
)  # fmt: skip
_SCHEMA = "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, answer TEXT NOT NULL)"
_LOOKUP_CHUNK = 500  # SQLite limits the number of bound parameters in one statement


class ResponseCache:
    """Answers by request, in `folder/responses.sqlite`, scoped to one wire format and endpoint."""

    def __init__(self, folder: Path, *, kind: str, base_url: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "responses.sqlite"
        self._scope = f"{kind}\0{base_url.rstrip('/')}\0".encode()
        # Autocommit off (the default): each put_many is one transaction. WAL lets readers and one
        # writer from several jobs work at once; a 30 s busy timeout rides out another job's commit.
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level="DEFERRED")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._db.commit()

    def key(self, request: Request) -> str:
        """The cache key of a request: its endpoint and its exact bytes on the wire."""
        return hashlib.blake2b(self._scope + request.payload, digest_size=20).hexdigest()

    def get_many(self, requests: Sequence[Request]) -> dict[str, Result]:
        """Cached answers by custom_id, as rows marked `cached` that cost nothing on this run."""
        # Rows with the same request (duplicate prompts) share one key and one answer.
        keys: dict[str, list[str]] = {}
        for request in requests:
            keys.setdefault(self.key(request), []).append(request.custom_id)
        found: dict[str, Result] = {}
        key_list = list(keys)
        for start in range(0, len(key_list), _LOOKUP_CHUNK):
            chunk = key_list[start : start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT key, answer FROM responses WHERE key IN ({marks})", chunk)
            for key, answer in rows:
                fields = json.loads(answer)
                for custom_id in keys[key]:
                    found[custom_id] = Result(custom_id, "ok", cost_usd=0.0, cached=True, **fields)
        return found

    def put_many(self, answers: Iterable[tuple[str, Result]]) -> None:
        """Store successful answers under their keys (errors are skipped)."""
        rows = [
            (key, json.dumps({f: getattr(r, f) for f in ANSWER_FIELDS}, ensure_ascii=False))
            for key, r in answers
            if r.ok
        ]
        if rows:
            with self._db:
                self._db.executemany("INSERT OR REPLACE INTO responses (key, answer) VALUES (?, ?)", rows)

    def close(self) -> None:
        """Close the database."""
        self._db.close()
