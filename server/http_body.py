"""An HTTP request body after its Content-Encoding: gzip or deflate inflated only up to the
decompressed limit, so a small compressed body cannot grow past it in memory before anything
checks it. (The size as sent is limited by the HTTP server, before the body is read.)"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

from backends.common.errors import InvalidArgument
from backends.common.errors import ResourceExhausted as PayloadTooLarge  # HTTP 413
from server.http_codec import parse_json
from server.http_server import HttpRequest


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


def decoded_body(request: HttpRequest, limits: BodyLimits) -> bytes:
    encoding = request.headers.get("content-encoding")
    if encoding is None:
        return request.body
    encoding = encoding.strip().lower()
    if encoding in ("identity", ""):
        return request.body
    if encoding in ("gzip", "x-gzip"):
        return _inflate(request.body, _GZIP_WBITS, "gzip", limits.max_decompressed_bytes)
    if encoding == "deflate":
        return _inflate_deflate(request.body, limits.max_decompressed_bytes)
    raise InvalidArgument(f"Content-Encoding {encoding[:32]!r} is not supported: send gzip, deflate or identity")


def _inflate_deflate(body: bytes, limit: int) -> bytes:
    """HTTP's "deflate" is the zlib format, but some clients send raw deflate: accept both."""
    if len(body) >= 2 and (body[0] * 256 + body[1]) % 31 == 0 and body[0] & 0x0F == 8:
        return _inflate(body, _ZLIB_WBITS, "deflate", limit)
    return _inflate(body, _RAW_WBITS, "deflate", limit)


def _inflate(body: bytes, wbits: int, name: str, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits)
    try:
        # one byte past the limit tells "exactly at the limit" from "over it" without inflating the rest
        data = inflater.decompress(body, limit + 1)
    except zlib.error as error:
        raise InvalidArgument(f"request body is not valid {name} data: {error}") from None
    if len(data) > limit:
        raise PayloadTooLarge(f"request body inflates to more than the {limit}-byte decompressed limit")
    if not inflater.eof:
        raise InvalidArgument(f"request body is truncated {name} data")
    if inflater.unused_data and wbits != _GZIP_WBITS:
        raise InvalidArgument(f"request body has {len(inflater.unused_data)} bytes after the {name} stream")
    if inflater.unused_data:
        return data + _inflate(inflater.unused_data, wbits, name, limit - len(data))  # gzip allows several members
    return data
