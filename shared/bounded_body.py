"""Reading an HTTP answer's body, decompressed, up to a number of bytes.

httpx decompresses each network chunk whole: one 64 KB chunk of a gzip bomb becomes 64 MB before the
caller can count it. Here the client asks only for the encodings zlib decodes (gzip, deflate) and
decodes them itself with `max_length`, so no more than the limit (plus one network chunk) is ever held.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Iterator

ACCEPT_ENCODING = "gzip, deflate"


class BodyTooLarge(Exception):
    """The body, decompressed, is longer than the limit."""


class UnreadableBody(Exception):
    """The body's encoding is not one the client asked for, or its compressed data is corrupt."""


class BoundedDecoder:
    """Feed it raw chunks; it returns decoded bytes and raises `BodyTooLarge` past `limit`."""

    def __init__(self, content_encoding: str, limit: int) -> None:
        encoding = content_encoding.strip().lower()
        if encoding not in ("", "identity", "gzip", "x-gzip", "deflate"):
            raise UnreadableBody(f"content encoding {content_encoding!r} was not asked for")
        self._limit = limit
        self._size = 0
        self._encoding = encoding
        # gzip: a gzip header (32 + 15 also accepts a zlib one); deflate: zlib, or raw as some servers send.
        self._zlib = zlib.decompressobj(47) if encoding in ("gzip", "x-gzip", "deflate") else None
        self._started = False

    def _count(self, data: bytes) -> bytes:
        self._size += len(data)
        if self._size > self._limit:
            raise BodyTooLarge
        return data

    def feed(self, chunk: bytes) -> bytes:
        if self._zlib is None:
            return self._count(chunk)
        first = not self._started
        self._started = self._started or bool(chunk)
        try:
            return self._inflate(chunk)
        except zlib.error as exc:
            if not (first and self._encoding == "deflate"):
                raise UnreadableBody(f"corrupt {self._encoding} data: {exc}") from None
        # "deflate" without the zlib header, as some servers send it.
        self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            return self._inflate(chunk)
        except zlib.error as exc:
            raise UnreadableBody(f"corrupt {self._encoding} data: {exc}") from None

    def _inflate(self, data: bytes) -> bytes:
        assert self._zlib is not None
        parts = []
        while data:
            room = self._limit - self._size + 1
            parts.append(self._count(self._zlib.decompress(data, room)))
            data = self._zlib.unconsumed_tail
        return b"".join(parts)

    def finish(self) -> bytes:
        if self._zlib is None:
            return b""
        if not self._zlib.eof and self._started:
            raise UnreadableBody(f"truncated {self._encoding} data")
        return self._count(self._zlib.flush())


def read_bounded(chunks: Iterator[bytes], content_encoding: str, limit: int, *, cut: bool = False) -> bytes:
    """The decoded body; past `limit`, `BodyTooLarge`, or with `cut` what was read until then."""
    decoder = BoundedDecoder(content_encoding, limit)
    body = bytearray()
    try:
        for chunk in chunks:
            body += decoder.feed(chunk)
        body += decoder.finish()
    except BodyTooLarge:
        if not cut:
            raise
    return bytes(body)


async def aread_bounded(
    chunks: AsyncIterator[bytes], content_encoding: str, limit: int, *, cut: bool = False
) -> bytes:
    decoder = BoundedDecoder(content_encoding, limit)
    body = bytearray()
    try:
        async for chunk in chunks:
            body += decoder.feed(chunk)
        body += decoder.finish()
    except BodyTooLarge:
        if not cut:
            raise
    return bytes(body)
