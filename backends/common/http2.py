"""HTTP/2 frames (RFC 9113) and header blocks (HPACK, RFC 7541), for the gRPC front end
(server/grpc/http2) and the remote backend's gRPC client (backends/remote/h2.py).

Decoding keeps the peer's dynamic table (the ``hpack`` package, with a fast path for the blocks
gRPC clients send once their headers are indexed: one byte per header). Encoding never uses the
dynamic table: the few headers a gRPC server sends are literals or static-table entries, built
once as bytes."""

from __future__ import annotations

import enum
import struct
from urllib.parse import quote

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADER = struct.Struct(">HBBBI")  # 24-bit length as 16 + 8 bits, type, flags, stream id
MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65_535
DEFAULT_FRAME = 16_384


class FrameType:  # plain ints, not enums: these are read on every frame
    DATA = 0
    HEADERS = 1
    PRIORITY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PUSH_PROMISE = 5
    PING = 6
    GOAWAY = 7
    WINDOW_UPDATE = 8
    CONTINUATION = 9


class Flag:
    END_STREAM = 0x1
    ACK = 0x1
    END_HEADERS = 0x4
    PADDED = 0x8
    PRIORITY = 0x20


class ErrorCode(enum.IntEnum):
    NO_ERROR = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2
    FLOW_CONTROL_ERROR = 3
    STREAM_CLOSED = 5
    FRAME_SIZE_ERROR = 6
    REFUSED_STREAM = 7
    CANCEL = 8
    COMPRESSION_ERROR = 9
    ENHANCE_YOUR_CALM = 11


class Setting(enum.IntEnum):
    HEADER_TABLE_SIZE = 1
    ENABLE_PUSH = 2
    MAX_CONCURRENT_STREAMS = 3
    INITIAL_WINDOW_SIZE = 4
    MAX_FRAME_SIZE = 5
    MAX_HEADER_LIST_SIZE = 6


class ConnectionError_(Exception):
    """A violation that ends the connection: GOAWAY with ``code``, then close."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return HEADER.pack(n >> 8, n & 0xFF, kind, flags, stream_id) + payload


def settings_frame(values: dict[Setting, int]) -> bytes:
    payload = b"".join(struct.pack(">HI", key, value) for key, value in values.items())
    return frame(FrameType.SETTINGS, 0, 0, payload)


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(FrameType.WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment))


def rst_stream(stream_id: int, code: ErrorCode) -> bytes:
    return frame(FrameType.RST_STREAM, 0, stream_id, struct.pack(">I", code))


def goaway(last_stream_id: int, code: ErrorCode, debug: str = "") -> bytes:
    payload = struct.pack(">II", last_stream_id, code) + debug.encode()[:256]
    return frame(FrameType.GOAWAY, 0, 0, payload)


def strip_padding(flags: int, payload: bytes) -> bytes:
    if not flags & Flag.PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - payload[0]]


# --- HPACK -----------------------------------------------------------------------------------


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(text: bytes) -> bytes:
    return _integer(len(text), 7, 0) + text  # no Huffman coding: these are short and built once


def literal(name: bytes, value: bytes) -> bytes:
    """A header field as 'literal without indexing, new name': touches no table."""
    return b"\x00" + _string(name) + _string(value)


def literal_indexed_name(index: int, value: bytes) -> bytes:
    return _integer(index, 4, 0x00) + _string(value)


STATUS_200 = b"\x88"  # static table entry 8, ':status: 200'
CONTENT_TYPE_INDEX = 31  # static table name 'content-type'


def percent_encode(message: str) -> bytes:
    """grpc-message's encoding: printable ASCII except '%' as is, everything else %XX of UTF-8."""
    return quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~", encoding="utf-8").encode()


class HeaderDecoder:
    """The peer's header blocks, with its dynamic table. Raises ConnectionError_ on a block that
    cannot be decoded (the table is then out of step with the peer's: the connection ends), and
    on a decoded header list over ``max_list_bytes`` (RFC 7541 §4.1 sizes: name + value + 32 a
    field) whatever the path: decoding stops at the limit, the list is never materialised."""

    def __init__(self, max_list_bytes: int, max_table_bytes: int = 4096) -> None:
        self._decoder = hpack.Decoder(max_header_list_size=max_list_bytes)
        self._decoder.max_allowed_table_size = max_table_bytes  # size updates above it: COMPRESSION_ERROR
        if max_table_bytes < self._decoder.header_table_size:
            self._decoder.header_table_size = max_table_bytes  # as announced (SETTINGS_HEADER_TABLE_SIZE)
        self._table = self._decoder.header_table
        self._max_list = max_list_bytes
        self._max_fields = max_list_bytes // 32  # no field is smaller than 32 bytes
        # the last block that left the table as it was (indexed fields, literals not indexed) and
        # its fields: a gRPC client sends the same one every call, and it means the same until
        # the table changes (only the full decoder changes it, and it clears this then)
        self._last_block = b""
        self._last_fields: tuple[tuple[str, str], ...] = ()

    def decode(self, block: bytes) -> list[tuple[str, str]]:
        if block == self._last_block:
            return list(self._last_fields)
        if block and min(block) >= 0x81 and max(block) < 0xFF:
            if len(block) > self._max_fields:  # one byte a field: over the limit before any lookup
                raise self._too_large()
            fast = self._indexed_only(block)
            if fast is not None:
                self._last_block, self._last_fields = block, tuple(fast)
                return fast
        self._last_block = b""
        table = self._table
        before = (table.maxsize, tuple(table.dynamic_entries))
        try:
            fields = [(str(n), str(v)) for n, v in self._decoder.decode(block, raw=False)]
        except hpack.OversizedHeaderListError:
            raise self._too_large() from None
        except hpack.HPACKError as error:
            raise ConnectionError_(ErrorCode.COMPRESSION_ERROR, f"header block: {error}") from None
        if (table.maxsize, tuple(table.dynamic_entries)) == before:
            # literals without indexing (a client that keeps no table, as the remote backend's):
            # the same block next time is the same list, without hpack's ~150 calls a block
            self._last_block, self._last_fields = block, tuple(fields)
        return fields

    def _too_large(self) -> ConnectionError_:
        return ConnectionError_(ErrorCode.ENHANCE_YOUR_CALM, f"header list over {self._max_list} bytes")

    def _indexed_only(self, block: bytes) -> list[tuple[str, str]] | None:
        """Each byte an 'indexed header field' below 127: lookups only, no state change."""
        get = self._table.get_by_index
        try:
            fields = [get(b & 0x7F) for b in block]
        except hpack.InvalidTableIndex:
            return None  # let the full decoder report it
        if 32 * len(fields) + sum([len(n) + len(v) for n, v in fields]) > self._max_list:
            raise self._too_large()
        return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in fields]
