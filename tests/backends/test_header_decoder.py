"""The HPACK decoder's shortcut for a header block it saw last (backends/common/http2.py
HeaderDecoder): a block that left the dynamic table as it was decodes the same next time, so it
is not decoded again; a block that changes the table (an insertion, a size update) ends that."""

from __future__ import annotations

from collections.abc import Iterable

import hpack
import pytest

from backends.common.http2 import ConnectionError_, ErrorCode, HeaderDecoder


def _string(text: bytes) -> bytes:
    assert len(text) < 127
    return bytes([len(text)]) + text


def not_indexed(name: bytes, value: bytes) -> bytes:
    """A literal field without indexing, new name (RFC 7541 §6.2.2): the table is left as it is."""
    return b"\x00" + _string(name) + _string(value)


def indexed_insert(name: bytes, value: bytes) -> bytes:
    """A literal field with incremental indexing, new name (§6.2.1): it becomes entry 62."""
    return b"\x40" + _string(name) + _string(value)


def indexed(index: int) -> bytes:
    return bytes([0x80 | index])


SIZE_ZERO = b"\x20"  # a dynamic table size update to 0 (§6.3): every entry evicted


class CountingDecoder(HeaderDecoder):
    """Counts the blocks that reach hpack's full decoder."""

    def __init__(self) -> None:
        super().__init__(64 * 1024)
        self.full = 0
        full_decode = self._decoder.decode

        def counted(data: bytes, raw: bool = False) -> Iterable[hpack.HeaderTuple]:
            self.full += 1
            return full_decode(data, raw=raw)

        self._decoder.decode = counted  # type: ignore[method-assign,assignment]


def test_a_block_of_literals_not_indexed_is_decoded_once() -> None:
    decoder = CountingDecoder()
    block = b"\x83\x86" + not_indexed(b"te", b"trailers") + not_indexed(b"grpc-timeout", b"5000m")
    first = decoder.decode(block)
    assert first == [(":method", "POST"), (":scheme", "http"), ("te", "trailers"), ("grpc-timeout", "5000m")]
    for _ in range(3):
        assert decoder.decode(block) == first
    assert decoder.full == 1


def test_a_block_that_inserts_is_decoded_every_time() -> None:
    decoder = CountingDecoder()
    block = indexed_insert(b"x-trace", b"1")
    decoder.decode(block)
    decoder.decode(block)
    assert decoder.full == 2  # each inserts again: the table changes, the block is never reused


def test_a_cached_block_follows_the_table_it_refers_to() -> None:
    """Entry 62 is whatever was inserted last: the same bytes mean another field after an insertion."""
    decoder = CountingDecoder()
    refers = indexed(62) + not_indexed(b"te", b"trailers")
    decoder.decode(indexed_insert(b"x-user", b"alice"))
    assert decoder.decode(refers) == [("x-user", "alice"), ("te", "trailers")]
    assert decoder.decode(refers) == [("x-user", "alice"), ("te", "trailers")]
    decoder.decode(indexed_insert(b"x-user", b"bob"))
    assert decoder.decode(refers) == [("x-user", "bob"), ("te", "trailers")]


def test_a_size_update_ends_the_cached_meaning() -> None:
    decoder = CountingDecoder()
    refers = indexed(62) + not_indexed(b"te", b"trailers")
    decoder.decode(indexed_insert(b"x-user", b"alice"))
    assert decoder.decode(refers)[0] == ("x-user", "alice")
    decoder.decode(SIZE_ZERO + b"\x83")  # the table emptied
    with pytest.raises(ConnectionError_) as raised:
        decoder.decode(refers)  # entry 62 is gone: the block no longer decodes
    assert raised.value.code == ErrorCode.COMPRESSION_ERROR


def test_an_oversized_list_is_refused_however_often_it_comes() -> None:
    decoder = HeaderDecoder(max_list_bytes=100)
    block = not_indexed(b"x-big", b"v" * 80)
    for _ in range(2):
        with pytest.raises(ConnectionError_) as raised:
            decoder.decode(block)
        assert raised.value.code == ErrorCode.ENHANCE_YOUR_CALM
