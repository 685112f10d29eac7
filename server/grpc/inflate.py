"""gzip/deflate request messages, inflated without stalling the event loop.

A small message (what gRPC clients compress in practice) inflates on the loop in one call: a
hop to a thread would cost more than the inflation. Whatever inflates to more than
``INLINE_INFLATE_BYTES`` is inflated again, whole, on a worker thread (zlib releases the GIL
while it inflates), up to the message limit: a gzip bomb costs the loop one slice, not seconds."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc

from server.grpc.calls import Abort

# Output inflated on the event loop per message: ~0.1 ms of CPU. Past it, a worker thread.
INLINE_INFLATE_BYTES = 256 * 1024
WORKER_SLICE_BYTES = 1024 * 1024  # output of one zlib call on a worker (a GIL hand-over between)
# Worker threads for larger messages; more wait for one (they are bounded by the calls in flight).
INFLATE_WORKERS = 2
_WBITS = {"gzip": 31, "deflate": 15}


class Inflater:
    def __init__(self, workers: int = INFLATE_WORKERS) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._workers = workers

    async def inflate(self, encoding: str, message: bytes | memoryview, limit: int) -> bytes | bytearray:
        """``message`` inflated, at most ``limit`` bytes of it (Abort past it or when invalid)."""
        wbits = _WBITS.get(encoding)
        if wbits is None:
            raise Abort(grpc.StatusCode.UNIMPLEMENTED, f"compression {encoding[:32]!r} is not supported")
        inflater = zlib.decompressobj(wbits)
        first = min(limit + 1, INLINE_INFLATE_BYTES)
        try:
            plain = inflater.decompress(message, first)
        except zlib.error:
            raise _invalid(encoding) from None
        eof = inflater.eof
        if not eof and len(plain) == first <= limit:  # the slice is full, more may come: off the loop
            whole, eof = await asyncio.get_running_loop().run_in_executor(
                self._executor(), _inflate_whole, message, wbits, limit
            )
            if whole is None:
                raise _too_large(limit)
            return _checked(whole, eof, encoding)
        if len(plain) > limit:
            raise _too_large(limit)
        return _checked(plain, eof, encoding)

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="grpc-inflate")
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _inflate_whole(message: bytes | memoryview, wbits: int, limit: int) -> tuple[bytearray | None, bool]:
    """On a worker, in slices, so that the GIL is taken only briefly between them (one inflation
    into one growing buffer ends with a copy of it all under the GIL: a stall of the event loop).
    None past ``limit``, found without joining what was inflated."""
    inflater = zlib.decompressobj(wbits)
    slices, total, tail = [], 0, message
    try:
        while total <= limit and not inflater.eof:
            piece = inflater.decompress(tail, min(WORKER_SLICE_BYTES, limit + 1 - total))
            tail = inflater.unconsumed_tail
            if not piece and not tail:
                break  # the input ends before the stream does: truncated
            slices.append(piece)
            total += len(piece)
    except zlib.error:
        return bytearray(), False
    if total > limit:
        slices.clear()
        _trim()
        return None, False
    out = bytearray(total)
    position = 0
    for piece in slices:  # one slice a step: the loop's thread may take the GIL in between
        out[position : position + len(piece)] = piece
        position += len(piece)
    slices.clear()
    _trim()
    return out, inflater.eof


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim: the slices freed on a worker stay in its thread's malloc arena (glibc
    keeps freed chunks below its mmap threshold, which grows to 32 MiB), so a bomb would leave up
    to the message limit resident per worker; trimming gives the pages back."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    return trim  # type: ignore[no-any-return]


_TRIM = _malloc_trim()


def _trim() -> None:
    if _TRIM is not None:
        _TRIM(0)  # ctypes releases the GIL for the call


def _checked(plain: bytes | bytearray, eof: bool, encoding: str) -> bytes | bytearray:
    if not eof:
        raise _invalid(encoding)
    return plain


def _too_large(limit: int) -> Abort:
    return Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"Received message larger than max (> {limit} bytes)")


def _invalid(encoding: str) -> Abort:
    return Abort(grpc.StatusCode.INTERNAL, f"the message is not valid {encoding}")
