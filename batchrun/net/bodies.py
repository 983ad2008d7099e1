"""A reply's body: decoded from its content coding, and never larger than a cap.

No JSON completion needs 64 MiB, so a reply past `[limits] max_reply_mib` (decoded) is not an answer: the
attempt fails as `bad_response` (see `batchrun.limits.retry`). The cap is checked as bytes arrive, and
decoding never inflates more than the room left under it, so a 2 MiB gzip body that would expand to 2 GiB
costs 64 MiB at most, and a body that never ends stops at the cap rather than at `timeout_s`.

Every transport path (the lean HTTP/1.1 client, aiohttp, a test's mock) reads through `Decoder`.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Mapping

from batchrun.errors import ProviderError
from batchrun.limits.retry import bad_response

MIB = 2**20
DEFAULT_MAX_REPLY_BYTES = 64 * MIB
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class Decoder:
    """Decodes one body piece by piece (identity, gzip or deflate); fails past `cap` bytes, raw or decoded."""

    def __init__(self, headers: Mapping[str, str], cap: int, status: int) -> None:
        self.cap = cap
        self.status = status
        self.size = 0  # decoded bytes so far
        self._raw = 0
        coding = headers.get("content-encoding", "identity").strip().lower()
        self._zlib: zlib._Decompress | None = None
        if coding not in ("", "identity"):
            wbits = _WBITS.get(coding)
            if wbits is None:
                raise bad_response(
                    f"the server sent a body in the {coding!r} coding, which batchrun cannot read", status
                )
            self._zlib = zlib.decompressobj(wbits)
        length = headers.get("content-length", "").strip()
        if length.isdigit() and int(length) > cap:
            raise self.too_large()

    def feed(self, chunk: bytes) -> bytes:
        """The decoded bytes of the next raw piece."""
        self._raw += len(chunk)
        if self._raw > self.cap:
            raise self.too_large()
        if self._zlib is None:
            out = chunk
        else:
            try:
                # At most one byte past the room left: inflating further would only be thrown away.
                out = self._zlib.decompress(chunk, self.cap - self.size + 1)
            except zlib.error as exc:
                raise bad_response(f"the server's compressed body is corrupt: {exc}", self.status) from None
        self.size += len(out)
        if self.size > self.cap:
            raise self.too_large()
        return out

    def finish(self) -> bytes:
        """What is left once the raw body has ended; a compressed body must end where its coding says."""
        if self._zlib is None:
            return b""
        out = self._zlib.flush()
        self.size += len(out)
        if self.size > self.cap:
            raise self.too_large()
        if not self._zlib.eof:
            raise bad_response("the server's compressed body ends before its coding does", self.status)
        return out

    def too_large(self) -> ProviderError:
        """The error of this body past the cap."""
        return too_large(self.cap, self.status)


def too_large(cap: int, status: int) -> ProviderError:
    """The error of a body past `cap` bytes."""
    return bad_response(
        f"the reply is larger than {cap / MIB:g} MiB ([limits] max_reply_mib): not a completion", status
    )


def decode(body: bytes, headers: Mapping[str, str], cap: int, status: int) -> bytes:
    """A whole raw body, decoded and checked against `cap`.

    An error reply (not 2xx) whose coding cannot be read keeps its raw body: its status (and Retry-After)
    say what matters.
    """
    if len(body) <= cap and "content-encoding" not in headers:
        return body  # the usual case, once per row: nothing to decode, nothing to copy
    try:
        decoder = Decoder(headers, cap, status)
        return decoder.feed(body) + decoder.finish()
    except ProviderError:
        if 200 <= status < 300:
            raise
        return body


async def decoded(
    chunks: AsyncIterator[bytes], headers: Mapping[str, str], cap: int, status: int
) -> AsyncIterator[bytes]:
    """The decoded pieces of a raw body as they arrive, failing as soon as it passes `cap`."""
    decoder = Decoder(headers, cap, status)
    async for chunk in chunks:
        if out := decoder.feed(chunk):
            yield out
    if out := decoder.finish():
        yield out
