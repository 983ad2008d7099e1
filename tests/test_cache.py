"""The response cache never fails a row or a run, keeps its answers private, and sets a corrupt file aside."""

from __future__ import annotations

import json
import logging
import stat
from collections.abc import Callable
from pathlib import Path

import httpx
import polars as pl
import pytest

from batchrun.engines.run import run_job
from batchrun.errors import UsageError
from batchrun.job.loader import load_job
from batchrun.records import Request, Result
from batchrun.store.cache import ResponseCache

WriteJob = Callable[..., Path]

BASE_URL = "http://llm.test/v1"
MAX_REQUESTS = 100  # the two runs below need 40; a loop that resends fails instead of spinning


def request(custom_id: str) -> Request:
    """A small request whose payload depends on its id."""
    body = {"model": "m", "messages": [{"role": "user", "content": custom_id}]}
    return Request(custom_id, body, json.dumps(body).encode(), 5, 5)


def mode(path: Path) -> int:
    """The permission bits of `path`."""
    return stat.S_IMODE(path.stat().st_mode)


def test_a_reply_with_a_lone_surrogate_is_cached_and_served_on_every_rerun(
    write_job: WriteJob, reviews: Path, tmp_path: Path
) -> None:
    """A reply holding `\\ud83d` is journaled and cached; reruns are served from the cache, none crashes."""
    sent: list[str] = []

    def handler(http_request: httpx.Request) -> httpx.Response:
        assert len(sent) < MAX_REQUESTS
        sent.append(http_request.url.path)
        body = (
            b'{"id": "x", "model": "qwen3-max", "choices": [{"index": 0, "message": {"role": "assistant", '
            b'"content": "smile \\ud83d"}, "finish_reason": "stop"}], '
            b'"usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}'
        )
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})

    path = write_job(BASE_URL)
    overrides = ["cache.enabled=true", f'cache.path="{tmp_path / "cache"}"']
    first = run_job(load_job(path, overrides), transport=httpx.MockTransport(handler))
    assert (first.ok, len(sent)) == (40, 40)
    again = run_job(
        load_job(path, [*overrides, "params.temperature=0.5"]), transport=httpx.MockTransport(handler)
    )
    assert (again.ok, len(sent)) == (40, 80)  # a new request per row (temperature changed)
    fresh = load_job(path, [*overrides, "name=fresh"])  # another job (and output), the same requests
    third = run_job(fresh, transport=httpx.MockTransport(handler))
    assert (third.ok, len(sent)) == (40, 80)  # every row from the cache
    output = pl.read_parquet(tmp_path / "out" / "fresh.parquet")
    assert output["cached"].all()
    assert output["completion"][0].startswith("smile ")


def test_the_cache_folder_is_private_and_its_files_too(tmp_path: Path) -> None:
    """A new cache folder is 0700; the database and SQLite's log files are 0600, even an older 0644 one."""
    folder = tmp_path / "cache"
    cache = ResponseCache(folder, kind="openai", base_url=BASE_URL)
    cache.put_many([(cache.key(request("a")), Result("a", "ok", completion="x"))])
    assert mode(folder) == 0o700
    files = sorted(folder.iterdir())
    assert [f.name for f in files] == ["responses.sqlite", "responses.sqlite-shm", "responses.sqlite-wal"]
    assert all(mode(f) == 0o600 for f in files)
    cache.close()
    (folder / "responses.sqlite").chmod(0o644)
    ResponseCache(folder, kind="openai", base_url=BASE_URL).close()
    assert mode(folder / "responses.sqlite") == 0o600


def test_a_corrupt_cache_file_is_set_aside_and_a_new_one_begun(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cache file that is not a database is renamed `.corrupt-TIME`, with a warning; the cache works."""
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "responses.sqlite").write_bytes(b"\x00garbage" * 512)
    with caplog.at_level(logging.WARNING, logger="batchrun"):
        cache = ResponseCache(folder, kind="openai", base_url=BASE_URL)
    assert "is not a database" in caplog.text
    (kept,) = folder.glob("responses.sqlite.corrupt-*")
    assert kept.read_bytes().startswith(b"\x00garbage")
    cache.put_many([(cache.key(request("a")), Result("a", "ok", completion="x"))])
    assert cache.get_many([request("a")])["a"].completion == "x"
    cache.close()


def test_a_cache_that_fails_mid_run_is_dropped_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Reads and writes that fail (the database gone mid-run) warn once; lookups then miss, writes no-op."""
    cache = ResponseCache(tmp_path / "cache", kind="openai", base_url=BASE_URL)
    cache.put_many([(cache.key(request("a")), Result("a", "ok", completion="x"))])
    cache._db.close()  # what a broken disk or a deleted file looks like from here
    with caplog.at_level(logging.WARNING, logger="batchrun"):
        assert cache.get_many([request("a")]) == {}
        cache.put_many([(cache.key(request("b")), Result("b", "ok", completion="y"))])
    assert caplog.text.count("going on without it") == 1


def test_an_entry_the_cache_cannot_read_is_a_miss(tmp_path: Path) -> None:
    """A damaged or foreign entry is not served: its row is sent again."""
    cache = ResponseCache(tmp_path / "cache", kind="openai", base_url=BASE_URL)
    with cache._db:
        cache._db.execute("INSERT INTO responses VALUES (?, ?)", (cache.key(request("a")), "[1, 2]"))
        cache._db.execute("INSERT INTO responses VALUES (?, ?)", (cache.key(request("b")), '{"nope": 1}'))
    assert cache.get_many([request("a"), request("b")]) == {}
    cache.close()


def test_a_cache_folder_that_cannot_be_made_is_a_usage_error(tmp_path: Path) -> None:
    """A cache path under a file exits 2 before sending, naming the path and the way out."""
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(UsageError, match=r"cannot use the response cache .*\[cache\] enabled = false"):
        ResponseCache(tmp_path / "file" / "cache", kind="openai", base_url=BASE_URL)
