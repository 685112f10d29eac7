"""Protobuf's wire format for the few messages written by hand on the hot path (a request's
contents, an answer without parameters): building a message only to serialize it costs several
microseconds a call. Tests compare every such writer with ``SerializeToString``."""

from __future__ import annotations

_UINT64 = (1 << 64) - 1


def varint(value: int) -> bytes:
    """Base-128 varint; a negative int64 as its two's complement, ten bytes, as protobuf does."""
    if 0 <= value < 0x80:  # lengths and dims under 128: one byte
        return bytes((value,))
    value &= _UINT64
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tag(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def length_delimited(field: int, payload: bytes) -> bytes:
    """A string, bytes or message field (wire type 2)."""
    return tag(field, 2) + varint(len(payload)) + payload


def string(field: int, text: str) -> bytes:
    """A string field; nothing when empty (proto3 leaves a default value out)."""
    return length_delimited(field, text.encode()) if text else b""


def repeated_bytes(field: int, values: list[bytes]) -> list[bytes]:
    """A repeated bytes field as parts to join: each value's tag and length, then the value
    itself (large contents are copied once, by the final join)."""
    key = tag(field, 2)
    parts: list[bytes] = []
    for value in values:
        parts += (key, varint(len(value)), value)
    return parts


def packed_varints(field: int, values: tuple[int, ...]) -> bytes:
    """A packed repeated integer field (proto3's default); nothing when empty."""
    if not values:
        return b""
    return length_delimited(field, b"".join(varint(v) for v in values))
