"""DuckDB, opened one way for batchrun's out-of-core steps: the output's assembly, resume, the summary."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb


@contextmanager
def connect(memory_mb: int, spill: Path | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory database capped at `memory_mb`, on one thread, spilling to `spill` (removed after).

    One thread: a table keeps its rows' insertion order in `rowid` (the journal's line order is how the
    latest answer is found), and the cap is spent on that one thread.
    """
    import duckdb

    config: dict[str, str | bool | int | float | list[str]] = {"memory_limit": f"{memory_mb}MB", "threads": 1}
    if spill is not None:
        config["temp_directory"] = str(spill)
    try:
        with duckdb.connect(":memory:", config=config) as db:
            db.execute("SET enable_progress_bar = false")  # stderr belongs to batchrun's own progress
            yield db
    finally:
        if spill is not None:
            shutil.rmtree(spill, ignore_errors=True)


def text(path: Path) -> str:
    """A path inside a single-quoted SQL string."""
    return str(path).replace("'", "''")
