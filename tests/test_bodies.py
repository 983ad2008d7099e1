"""A reply's body decoded and capped: gzip bombs and oversized bodies fail as `bad_response`."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import AsyncIterator

import anyio
import pytest

from batchrun.errors import ProviderError
from batchrun.net import bodies

CAP = 2**20


def test_a_gzip_bomb_is_refused_without_inflating_past_the_cap() -> None:
    """A 64 MiB bomb against a 1 MiB cap: no more than the cap plus one byte is ever inflated."""
    bomb = gzip.compress(b"\0" * (64 * 2**20))
    decoder = bodies.Decoder({"content-encoding": "gzip"}, CAP, 200)

    def feed_all() -> None:
        for start in range(0, len(bomb), 4096):
            decoder.feed(bomb[start : start + 4096])

    with pytest.raises(ProviderError, match="max_reply_mib") as info:
        feed_all()
    assert decoder.size <= CAP + 1
    assert (info.value.error_type, info.value.status, info.value.retryable) == ("bad_response", 200, True)


def test_bodies_within_the_cap_decode_in_every_coding() -> None:
    """identity, gzip, x-gzip and deflate bodies under the cap come back whole."""
    data = b'{"choices": []}' * 100
    assert bodies.decode(data, {}, CAP, 200) is data
    assert bodies.decode(gzip.compress(data), {"content-encoding": "gzip"}, CAP, 200) == data
    assert bodies.decode(gzip.compress(data), {"content-encoding": "x-gzip"}, CAP, 200) == data
    assert bodies.decode(zlib.compress(data), {"content-encoding": "deflate"}, CAP, 200) == data


def test_a_content_length_past_the_cap_fails_before_any_byte_is_read() -> None:
    """A declared length over the cap is refused at once."""
    with pytest.raises(ProviderError, match="max_reply_mib"):
        bodies.Decoder({"content-length": str(CAP + 1)}, CAP, 200)


@pytest.mark.parametrize(
    ("body", "headers", "match"),
    [
        (b"\x8b\x00", {"content-encoding": "br"}, "'br' coding"),
        (b"not gzip at all", {"content-encoding": "gzip"}, "corrupt"),
        (gzip.compress(b"x" * 1000)[:-12], {"content-encoding": "gzip"}, "ends before its coding"),
    ],
)
def test_an_unreadable_2xx_body_is_bad_response_and_an_error_reply_keeps_its_raw_body(
    body: bytes, headers: dict[str, str], match: str
) -> None:
    """Unknown or corrupt codings fail a 2xx as `bad_response`; a 429's raw body is kept for its status."""
    with pytest.raises(ProviderError, match=match):
        bodies.decode(body, headers, CAP, 200)
    assert bodies.decode(body, headers, CAP, 429) == body


def test_a_streamed_body_stops_at_the_cap() -> None:
    """Pieces of an endless stream are passed on until the cap, then the read fails."""

    got: list[int] = []

    async def pieces() -> AsyncIterator[bytes]:
        for _ in range(1000):
            yield b"x" * 65536

    async def read_all() -> None:
        async for piece in bodies.decoded(pieces(), {}, CAP, 200):
            got.append(len(piece))

    with pytest.raises(ProviderError, match="max_reply_mib"):
        anyio.run(read_all)
    assert sum(got) <= CAP
