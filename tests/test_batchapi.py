"""The Batch API clients against the emulator over 127.0.0.1: submit, poll, download and read, for both APIs,
with expiry, cancels, refused files, all-failed batches, DashScope's error lines and recovery by tag."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from batchrun.emulator import DIRECTIVE_400, EmulatorServer
from batchrun.emulator.batchconfig import BatchConfig
from batchrun.errors import ErrorClass
from batchrun.inputs.render import encode
from batchrun.providers import make_provider
from batchrun.providers.batchapi import (
    BatchAPI,
    BatchInfo,
    LineResult,
    Part,
    Retry,
    Tag,
    limits_for,
    make_batch_api,
    split,
)
from batchrun.records import Reply, Request

Start = Callable[..., EmulatorServer]
FAST = Retry(attempts=3, total_s=10, base_s=0.001, max_s=0.01)
POLLS = 400  # x 20 ms at most
KINDS = ("openai", "anthropic")


def request(i: int, model: str = "qwen-max", prompt: str = "Review", custom_id: str | None = None) -> Request:
    """A prepared request (32-hex custom_id unless given)."""
    body = {"model": model, "messages": [{"role": "user", "content": f"{prompt} {i}"}], "max_tokens": 16}
    return Request(custom_id or f"{i:032x}", body, encode(body), 10, 8)


def base_url(server: EmulatorServer, kind: str) -> str:
    """Where a job of this kind points at the emulator."""
    return server.base_url if kind == "openai" else server.root_url


async def session(
    server: EmulatorServer, kind: str, work: Callable[[BatchAPI, httpx.AsyncClient], Awaitable[Any]]
) -> Any:
    """Run `work` with a Batch API client (and its httpx client) on the emulator."""
    base = base_url(server, kind)
    async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
        api = make_batch_api(client, make_provider(kind, base, "k", {}), base, "k", retry=FAST)
        return await work(api, client)


async def until_done(api: BatchAPI, info: BatchInfo) -> BatchInfo:
    """Poll (bounded) until the batch is over."""
    for _ in range(POLLS):
        if info.done:
            return info
        await anyio.sleep(0.02)
        info = await api.retrieve(info.id)
    raise AssertionError(f"batch never ended: {info}")


def parts_of(api: BatchAPI, requests: list[Request], folder: Path, **limits: int) -> list[Part]:
    """Split into parts (none refused)."""
    out = list(split(requests, api, limits_for(api.kind, "http://127.0.0.1", **limits), folder))
    assert all(isinstance(p, Part) for p in out)
    return [p for p in out if isinstance(p, Part)]


async def run_part(
    api: BatchAPI, part: Part, folder: Path, run: str = "run1"
) -> tuple[BatchInfo, list[LineResult]]:
    """Submit a part, wait for it, and read its results."""
    info = await until_done(api, await api.submit(part, Tag("job", run, part.index, len(part.custom_ids))))
    return info, list(api.read(await api.download(info, folder), part.custom_ids))


async def live_reply(client: httpx.AsyncClient, kind: str, server: EmulatorServer, req: Request) -> Reply:
    """The same request answered live, parsed by the live path's parser."""
    provider = make_provider(kind, base_url(server, kind), "k", {})
    response = await client.post(provider.url(), content=provider.content(req), headers=provider.headers())
    return provider.parse(response.content)


@pytest.mark.parametrize("kind", KINDS)
def test_a_batch_round_trip_parses_like_live_replies(emulator: Start, tmp_path: Path, kind: str) -> None:
    """Every answered line's Reply equals the live one; a 400 line is a row error; counts add up."""
    server = emulator()
    requests = [request(i) for i in range(10)] + [request(10, prompt=f"{DIRECTIVE_400} Review")]

    async def work(api: BatchAPI, client: httpx.AsyncClient) -> None:
        (part,) = parts_of(api, requests, tmp_path)
        info, results = await run_part(api, part, tmp_path)
        assert info.state == "completed"
        assert (info.counts.total, info.counts.succeeded, info.counts.failed) == (11, 10, 1)
        assert sorted(r.custom_id for r in results) == sorted(r.custom_id for r in requests)
        by_id = {r.custom_id: r for r in results}
        for req in requests[:3]:
            assert by_id[req.custom_id].reply == await live_reply(client, kind, server, req)
        error = by_id[requests[-1].custom_id].error
        assert error is not None
        assert (error.error_type, error.error_class) == ("bad_request", ErrorClass.ROW)

    anyio.run(session, server, kind, work)


@pytest.mark.parametrize("kind", KINDS)
def test_an_expired_batch_gives_partial_results_and_marks_the_rest(
    emulator: Start, tmp_path: Path, kind: str
) -> None:
    """Past the window: some replies, the rest `expired` (to resend), none missing."""
    server = emulator(batch=BatchConfig(validating_s=0, in_progress_s=0.4, expire_after_s=0.2))

    async def work(api: BatchAPI, client: httpx.AsyncClient) -> None:
        (part,) = parts_of(api, [request(i) for i in range(30)], tmp_path)
        info, results = await run_part(api, part, tmp_path)
        assert info.state == "expired"
        kinds = Counter("reply" if r.reply else r.unanswered for r in results)
        assert set(kinds) == {"reply", "expired"}
        assert sum(kinds.values()) == 30

    anyio.run(session, server, kind, work)


@pytest.mark.parametrize("kind", KINDS)
def test_cancel_is_idempotent_and_unrun_requests_are_marked_cancelled(
    emulator: Start, tmp_path: Path, kind: str
) -> None:
    """cancel -> cancelling -> cancelled; the requests read back `cancelled`; a second cancel is harmless."""
    server = emulator(batch=BatchConfig(validating_s=0, in_progress_s=3600, cancelling_s=0.05))

    async def work(api: BatchAPI, client: httpx.AsyncClient) -> None:
        (part,) = parts_of(api, [request(i) for i in range(4)], tmp_path)
        info = await api.submit(part, Tag("job", "run1", 0, 4))
        assert (await api.cancel(info.id)).state == "cancelling"
        info = await until_done(api, info)
        assert info.state == "cancelled"
        assert (await api.cancel(info.id)).state == "cancelled"
        results = list(api.read(await api.download(info, tmp_path), part.custom_ids))
        assert {r.unanswered for r in results} == {"cancelled"}

    anyio.run(session, server, kind, work)


def test_a_refused_file_fails_the_batch_with_a_row_error(emulator: Start, tmp_path: Path) -> None:
    """A model the server does not batch: the batch `failed`, its error a `batch_refused` naming the line."""
    server = emulator(batch=BatchConfig(models=("qwen-max",)))

    async def work(api: BatchAPI, client: httpx.AsyncClient) -> None:
        (part,) = parts_of(api, [request(i, "qwen3-max") for i in range(3)], tmp_path)
        info, results = await run_part(api, part, tmp_path)
        assert info.state == "failed"
        assert info.error is not None
        assert (info.error.error_type, info.error.error_class) == ("batch_refused", ErrorClass.ROW)
        assert "does not support batch inference" in info.error.message
        assert "(line 1)" in info.error.message
        assert {r.unanswered for r in results} == {"missing"}  # nothing ran: no file to read

    anyio.run(session, server, "openai", work)


def test_an_all_failed_batch_has_no_output_file_and_reads_as_errors(emulator: Start, tmp_path: Path) -> None:
    """output_file_id null: only the error file is downloaded; every line is a retryable server error."""
    server = emulator(batch=BatchConfig(line_error_rate=1.0))

    async def work(api: BatchAPI, client: httpx.AsyncClient) -> None:
        (part,) = parts_of(api, [request(i) for i in range(5)], tmp_path)
        info = await until_done(api, await api.submit(part, Tag("job", "run1", 0, 5)))
        assert info.output_file_id is None
        paths = await api.download(info, tmp_path)
        assert [p.name for p in paths] == [f"{info.id}.error.jsonl"]
        results = list(api.read(paths, part.custom_ids))
        assert {(r.error.error_type, r.error.retryable) for r in results if r.error} == {
            ("server_error", True)
        }
        assert len(results) == 5

    anyio.run(session, server, "openai", work)


@pytest.mark.parametrize("expire_after_s", [None, 0.2])
def test_dashscope_error_lines_are_read(
    emulator: Start, tmp_path: Path, expire_after_s: float | None
) -> None:
    """error.error_code lines: a 400 is read from its response; `batch_expired` ones come back expired."""
    config = BatchConfig(
        validating_s=0, in_progress_s=0.4, expire_after_s=expire_after_s, error_shape="dashscope"
    )
    server = emulator(batch=config)
    requests = [request(0, prompt=f"{DIRECTIVE_400} Review")] + [request(i) for i in range(1, 30)]

    async def work(api: BatchAPI, client: httpx.AsyncClient) -> None:
        (part,) = parts_of(api, requests, tmp_path)
        _, results = await run_part(api, part, tmp_path)
        if expire_after_s is None:
            (failed,) = [r.error for r in results if r.error is not None]
            assert (failed.status, failed.error_type) == (400, "bad_request")
        else:
            assert Counter(r.unanswered for r in results)["expired"] > 0

    anyio.run(session, server, "openai", work)


@pytest.mark.parametrize("keys", [None, ("ds_name", "ds_description")])
def test_batches_are_found_again_by_their_tag(
    emulator: Start, tmp_path: Path, keys: tuple[str, ...] | None
) -> None:
    """find() gives each part's batch by metadata, or by DashScope's ds_name when only that is kept."""
    server = emulator(batch=BatchConfig(metadata_keys=keys))

    async def work(api: BatchAPI, client: httpx.AsyncClient) -> None:
        parts = parts_of(api, [request(i) for i in range(5)], tmp_path, max_requests=2)
        tags = [Tag("nightly labels", "r7", p.index, len(p.custom_ids)) for p in parts]
        made = [await api.submit(p, t) for p, t in zip(parts, tags, strict=True)]
        other = await api.submit(parts[0], Tag("nightly labels", "r8", 0, 2))  # another run's batch
        found = await api.find(tags, since=0)
        assert {key: [i.id for i in infos] for key, infos in found.items()} == {
            t.key: [m.id] for t, m in zip(tags, made, strict=True)
        }
        assert other.id not in {i.id for infos in found.values() for i in infos}
        assert await api.find(tags, since=0, exclude={m.id for m in made}) == {}

    anyio.run(session, server, "openai", work)


def test_anthropic_batches_are_found_by_size_and_time(emulator: Start, tmp_path: Path) -> None:
    """Without metadata, a batch is recognised by its request count since the intent; known ids excluded."""
    server = emulator()

    async def work(api: BatchAPI, client: httpx.AsyncClient) -> None:
        parts = parts_of(api, [request(i, "claude-x") for i in range(5)], tmp_path, max_requests=3)
        tags = [Tag("job", "r1", p.index, len(p.custom_ids)) for p in parts]
        made = [await api.submit(p, t) for p, t in zip(parts, tags, strict=True)]
        found = await api.find(tags, since=0)
        assert [i.id for i in found[tags[0].key]] == [made[0].id]
        assert [i.id for i in found[tags[1].key]] == [made[1].id]
        assert tags[0].key not in await api.find(tags, since=0, exclude={made[0].id})

    anyio.run(session, server, "anthropic", work)


def test_anthropic_maps_custom_ids_it_cannot_take_and_back(emulator: Start, tmp_path: Path) -> None:
    """Ids with spaces or over 64 characters are sent mapped, and read back under their own names."""
    server = emulator()
    ids = ["row 1", "x" * 80, "plain_id"]
    requests = [request(i, "claude-x", custom_id=c) for i, c in enumerate(ids)]

    async def work(api: BatchAPI, client: httpx.AsyncClient) -> None:
        (part,) = parts_of(api, requests, tmp_path)
        _, results = await run_part(api, part, tmp_path)
        assert sorted(r.custom_id for r in results if r.reply) == sorted(ids)

    anyio.run(session, server, "anthropic", work)
