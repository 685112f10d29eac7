"""An HTTP request body after its Content-Encoding: gzip or deflate inflated only up to the
decompressed limit, so a small compressed body cannot grow past it in memory before anything
checks it. (The size as sent is limited by the HTTP server, before the body is read.)"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from backends.common.errors import InvalidArgument, Unavailable
from backends.common.errors import ResourceExhausted as PayloadTooLarge  # HTTP 413
from server.rest.codec import parse_json
from server.rest.http_server import HttpRequest


class Overloaded(Unavailable):
    """503 with Retry-After: the server holds as much as it may; the client may retry."""


@dataclass(frozen=True)
class BodyLimits:
    max_body_bytes: int  # as sent, compressed or not
    max_decompressed_bytes: int  # after Content-Encoding is undone


def json_body(request: HttpRequest, limits: BodyLimits) -> dict[str, Any]:
    """A control request's JSON object body ({} when empty)."""
    return parse_json(decoded_body(request, limits))


# zlib's wbits: 16+ reads the gzip wrapper, plain MAX_WBITS the zlib one, negative raw deflate.
_GZIP_WBITS = 16 + zlib.MAX_WBITS
_ZLIB_WBITS = zlib.MAX_WBITS
_RAW_WBITS = -zlib.MAX_WBITS


INFLATE_SLICE = 128 * 1024  # bytes inflated between yields to the event loop (~0.4 ms of CPU on the dev VM)


async def decode_content(request: HttpRequest, limits: BodyLimits, starts_with: bytes = b"") -> None:
    """Undoes the request's Content-Encoding in place (the header goes with it), a slice at a time
    with the event loop served between slices: a bomb that inflates for seconds must not stall
    the other clients for that long. The inflated bytes count in the request's budget (the
    server's bound on request bodies in memory): past it, 503. A body whose first byte other
    than whitespace is not ``starts_with`` is refused as soon as that byte is inflated (a bomb of
    zeros is 400 after one slice, not after the limit)."""
    steps = _decoding(request, limits)
    if steps is None:
        return
    out: list[bytes] = []
    budget = request.budget
    for _ in steps(out):
        if not budget.take(len(out[-1])):
            raise Overloaded("the server holds as many request bytes as it may: retry later")
        if starts_with and (first := out[-1].lstrip()[:1]):
            if first != starts_with:
                raise InvalidArgument(f"request body is not valid JSON: it must start with {starts_with.decode()!r}")
            starts_with = b""
        await asyncio.sleep(0)
    joined = sum(map(len, out)) if len(out) > 1 else 0
    if joined and not budget.take(joined):  # the joined copy, while the slices still exist
        raise Overloaded("the server holds as many request bytes as it may: retry later")
    compressed = len(request.body)
    request.body = b"".join(out) if joined else out[0]
    out.clear()
    budget.give_back(compressed + joined)  # the compressed body and the slices are gone
    del request.headers["content-encoding"]


def decoded_body(request: HttpRequest, limits: BodyLimits) -> bytes:
    """The body with its Content-Encoding undone, all at once (decode_content has done it for
    requests the REST API dispatches)."""
    steps = _decoding(request, limits)
    if steps is None:
        return request.body
    out: list[bytes] = []
    for _ in steps(out):
        pass
    return b"".join(out)


Steps = Callable[[list[bytes]], Iterator[None]]


def _decoding(request: HttpRequest, limits: BodyLimits) -> Steps | None:
    """How to inflate the body (a generator of slices), or None when it is not encoded."""
    encoding = request.headers.get("content-encoding")
    if encoding is None:
        return None
    encoding = encoding.strip().lower()
    if encoding in ("identity", ""):
        return None
    body, limit = request.body, limits.max_decompressed_bytes
    if encoding in ("gzip", "x-gzip"):
        return lambda out: _inflate(body, _GZIP_WBITS, "gzip", limit, out)
    if encoding == "deflate":
        # HTTP's "deflate" is the zlib format, but some clients send raw deflate: accept both
        zlib_header = len(body) >= 2 and (body[0] * 256 + body[1]) % 31 == 0 and body[0] & 0x0F == 8
        wbits = _ZLIB_WBITS if zlib_header else _RAW_WBITS
        return lambda out: _inflate(body, wbits, "deflate", limit, out)
    raise InvalidArgument(f"Content-Encoding {encoding[:32]!r} is not supported: send gzip, deflate or identity")


def _inflate(body: bytes, wbits: int, name: str, limit: int, out: list[bytes]) -> Iterator[None]:
    """Inflates into ``out`` at most INFLATE_SLICE bytes per step; gzip may have several members."""
    total, data = 0, body
    while True:
        inflater = zlib.decompressobj(wbits)
        while not inflater.eof:
            try:
                # one byte past the limit tells "exactly at the limit" from "over it"
                chunk = inflater.decompress(data, min(INFLATE_SLICE, limit + 1 - total))
            except zlib.error as error:
                raise InvalidArgument(f"request body is not valid {name} data: {error}") from None
            total += len(chunk)
            if total > limit:
                raise PayloadTooLarge(f"request body inflates to more than the {limit}-byte decompressed limit")
            out.append(chunk)
            data = inflater.unconsumed_tail
            if not data and not chunk and not inflater.eof:
                raise InvalidArgument(f"request body is truncated {name} data")
            yield
        data = inflater.unused_data
        if not data:
            return
        if wbits != _GZIP_WBITS:
            raise InvalidArgument(f"request body has {len(data)} bytes after the {name} stream")
