"""One gRPC call on an HTTP/2 stream: its request messages gathered from DATA frames (each bounded
by its 5-byte prefix and the server's limits), its handler run as a task, its answer sent.

Bounds (what one client's bytes can make the server hold):
- a unary call buffers at most 5 + the length its prefix declares, itself at most
  ``--grpc-max-message-bytes``; one byte more ends the call (INTERNAL) and its stream is reset,
  so the rest is dropped unread;
- a streaming call's messages wait for the handler in a queue of ``STREAM_QUEUE_MESSAGES`` /
  ``STREAM_QUEUE_BYTES``; the window of a partial message is returned as it arrives (a message
  larger than the stream window still completes), and held while the queue is full;
- every message's bytes are reserved in the server's ``Admission`` from its prefix on: past the
  server-wide or per-connection bound the call is refused (RESOURCE_EXHAUSTED with a pushback).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from backends.common.http2 import CONTENT_TYPE_INDEX, STATUS_200, literal, literal_indexed_name, percent_encode
from server.grpc.http2.connection import Stream
from server.grpc.limits import RETRY_PUSHBACK_MS, STREAM_QUEUE_BYTES, STREAM_QUEUE_MESSAGES

if TYPE_CHECKING:
    from server.grpc.native import GrpcServer

log = logging.getLogger(__name__)

RESPONSE_HEADERS = STATUS_200 + literal_indexed_name(CONTENT_TYPE_INDEX, b"application/grpc")
OK_TRAILERS = literal(b"grpc-status", b"0")
PUSHBACK = literal(b"grpc-retry-pushback-ms", str(RETRY_PUSHBACK_MS).encode())
_RESERVED_NAMES = frozenset({"content-type", "te", "user-agent"})
DEADLINE_EXCEEDED = "Deadline Exceeded"
# A streaming call's answers waiting for the peer's windows: past this many bytes the handler's
# next answer is not taken until they drain (back-pressure up to the model's sends).
STREAM_PENDING_BYTES = 256 * 1024
BUSY = "the server holds too many request bytes in flight"


class Abort(grpc.aio.AbortError):  # type: ignore[misc]  # grpc ships no stubs for it
    """What ``context.abort`` raises: the call ends with this status."""

    def __init__(self, code: grpc.StatusCode, details: str, pushback: bool = False) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.pushback = pushback  # refused for load: the client may retry after a pause


def trailers(code: grpc.StatusCode, details: str, headers_sent: bool, pushback: bool = False) -> bytes:
    block = literal(b"grpc-status", str(code.value[0]).encode())
    if details:
        block += literal(b"grpc-message", percent_encode(details))
    if pushback:
        block += PUSHBACK
    return block if headers_sent else RESPONSE_HEADERS + block  # Trailers-Only


class CallContext:
    """The part of grpc.aio's ServicerContext that handlers use."""

    def __init__(self, call: GrpcCall) -> None:
        self._call = call

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        raise Abort(code, details)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return tuple(
            (n, v) for n, v in self._call.headers if not n.startswith((":", "grpc-")) and n not in _RESERVED_NAMES
        )

    def time_remaining(self) -> float | None:
        deadline = self._call.deadline
        return None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())

    def cancelled(self) -> bool:
        return self._call.cancelled

    def peer(self) -> str:
        transport = self._call.stream.connection.transport
        address = transport.get_extra_info("peername") if transport is not None else None
        return f"ipv4:{address[0]}:{address[1]}" if address else "unknown"


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True, slots=True)
class GrpcMethod:
    """A method's handler (grpc.RpcMethodHandler) with its codecs resolved once, not per call."""

    unary: Any  # async (request, context) -> reply, or None
    stream: Any  # async generator (requests, context) -> replies, or None
    deserialize: Callable[[Any], Any]
    serialize: Callable[[Any], bytes]

    @classmethod
    def of(cls, handler: Any) -> GrpcMethod:
        return cls(
            handler.unary_unary,
            handler.stream_stream,
            handler.request_deserializer or bytes,  # messages arrive as views of the frame
            handler.response_serializer or _same,
        )


NO_METHOD = GrpcMethod(None, None, bytes, _same)  # the call of a request that is answered at once

Body = bytes | bytearray


class GrpcCall:
    """One call: gathers its request messages from DATA frames, runs the handler as a task and
    answers on its stream."""

    __slots__ = (
        "buffer",
        "cancelled",
        "deadline",
        "deadline_passed",
        "done",
        "encoding",
        "end_queued",
        "ended",
        "expected",
        "headers",
        "headers_sent",
        "held",
        "queue",
        "queued_bytes",
        "reserved",
        "route",
        "server",
        "stream",
        "task",
        "timed",
    )  # fmt: skip

    def __init__(self, server: GrpcServer, stream: Stream, route: GrpcMethod, headers: list[tuple[str, str]]) -> None:
        self.server = server
        self.stream = stream
        self.route = route
        self.headers = headers
        self.encoding = "identity"
        self.buffer = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.queue: asyncio.Queue[tuple[bytes, int] | None] | None = None
        self.deadline: float | None = None
        self.timed = False  # held by the connection's deadlines
        self.cancelled = False
        self.headers_sent = False
        self.done = False  # answered (or reset): nothing more is sent or run
        self.ended = False  # the client's half of the stream ended: nothing more is read
        self.deadline_passed = False
        self.expected = -1  # the size, prefix included, of the message being received (-1: prefix not read)
        self.reserved = 0  # request bytes this call holds in the server's Admission
        self.held = 0  # streaming: bytes received whose window is not yet returned
        self.queued_bytes = 0  # streaming: bytes of the messages waiting for the handler
        self.end_queued = False

    # --- from the connection ------------------------------------------------------------------

    def start(self, timeout_s: float | None, end: bool) -> None:
        self.ended = end
        if timeout_s is not None and not self._arm_deadline(timeout_s):
            return
        if self.route.stream is not None:
            self.queue = asyncio.Queue()
            self.task = self.stream.connection.loop.create_task(self._guarded(self._streaming()))
            if end:
                self._pump()
        elif end:
            self._unary_ready(b"")

    def data(self, payload: bytes, end: bool) -> None:
        if self.ended:
            return  # nothing counts after the request's end: a request never runs twice
        self.ended = end
        if self.done:
            return  # answered already: the bytes are dropped and their window is not returned
        if self.queue is not None:
            self.buffer += payload
            self.held += len(payload)
            self._pump()
        elif end and not self.buffer:
            self._unary_ready(payload)  # the whole request in one frame: no copy, O(1) checks
        else:
            self._unary_data(payload, end)

    def reset(self) -> None:
        """The client cancelled (RST_STREAM) or the connection closed: the handler is cancelled."""
        self.cancelled = True
        self.ended = True
        self._finish_quietly()

    # --- admission ------------------------------------------------------------------------------

    def _admit(self, length: int) -> bool:
        """A message's prefix was read: refuse it over the limit or when the server holds too many
        request bytes; else reserve its bytes before any of its body is buffered."""
        server = self.server
        if length > server.max_message_bytes:
            self._too_large(length)
            return False
        size = 5 + length
        if not server.admission.reserve(self.stream.connection, size):
            self.exhausted(BUSY)
            return False
        self.reserved += size
        self.expected = size
        return True

    def _release(self, n: int) -> None:
        self.reserved -= n
        self.server.admission.release(self.stream.connection, n)

    def exhausted(self, why: str) -> None:
        """Refused for load: RESOURCE_EXHAUSTED with a retry hint; the stream's rest is dropped."""
        self._fail(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{why}: retry later", pushback=True)

    def _fail(self, code: grpc.StatusCode, details: str, pushback: bool = False) -> None:
        """Answered now; a handler already running is cancelled (its status is this one)."""
        self.finish(code, details, pushback)
        if self.task is not None:
            self.task.cancel()

    # --- unary ----------------------------------------------------------------------------------

    def _unary_data(self, payload: bytes, end: bool) -> None:
        buffer = self.buffer
        if 0 <= self.expected < len(buffer) + len(payload):
            self._more_than_one()
            return
        buffer += payload
        if self.expected < 0 and len(buffer) >= 5:
            if not self._admit(int.from_bytes(buffer[1:5], "big")):
                return
            if len(buffer) > self.expected:
                self._more_than_one()
                return
        self.stream.consumed(len(payload))  # bounded by the prefix: the window may reopen
        if end:
            self._unary_ready(buffer)

    def _more_than_one(self) -> None:
        self.finish(grpc.StatusCode.INTERNAL, "a unary call carried more than one message")

    def _unary_ready(self, body: Body) -> None:
        if len(body) < 5:
            self.finish(grpc.StatusCode.INTERNAL, "the request carried no message")
            return
        if self.expected < 0 and not self._admit(int.from_bytes(body[1:5], "big")):
            return
        if len(body) != self.expected:
            what = "more than one message" if len(body) > self.expected else "a partial message"
            self.finish(grpc.StatusCode.INTERNAL, f"a unary call carried {what}")
            return
        self.task = self.stream.connection.loop.create_task(self._unary(body[0], memoryview(body)[5:]))

    async def _unary(self, flag: int, message: memoryview) -> None:
        """A unary call's handler, guarded as ``_guarded`` guards (without a second coroutine
        a call)."""
        route = self.route
        try:
            request = route.deserialize(await self._inflated(flag, message) if flag else message)
            reply = await route.unary(request, CallContext(self))
            self.reply(route.serialize(reply), last=True)
        except (Exception, asyncio.CancelledError) as error:
            self._ended_by(error)

    async def _inflated(self, flag: int, message: memoryview) -> bytes | bytearray:
        if flag != 1:
            raise Abort(grpc.StatusCode.INTERNAL, f"invalid message compression flag {flag}")
        server = self.server
        plain = await server.inflater.inflate(self.encoding, message, server.max_message_bytes)
        if self.queue is None:  # a unary call holds its inflated message until it ends: counted
            if not server.admission.reserve(self.stream.connection, len(plain)):
                raise Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{BUSY}: retry later", pushback=True)
            self.reserved += len(plain)
        return plain

    async def _guarded(self, work: Awaitable[None]) -> None:
        """Runs a call's handler; what it raises becomes the call's status."""
        try:
            await work
        except (Exception, asyncio.CancelledError) as error:
            self._ended_by(error)

    def _ended_by(self, error: BaseException) -> None:
        if isinstance(error, Abort):
            self.finish(error.code, error.details, error.pushback)
        elif isinstance(error, asyncio.CancelledError):
            self._after_cancel()
        else:
            log.error("internal error in a gRPC handler", exc_info=error)
            self.finish(grpc.StatusCode.UNKNOWN, "Unexpected error in handler")

    # --- streaming ------------------------------------------------------------------------------

    def _pump(self) -> None:
        """Moves whole messages from the buffer to the handler's queue while it has room. With
        room, the window of what arrived is returned (a partial message is bounded by its
        prefix); with the queue full it is held, so the client waits, not the server's memory."""
        queue, buffer = self.queue, self.buffer
        assert queue is not None
        while queue.qsize() < STREAM_QUEUE_MESSAGES and self.queued_bytes < STREAM_QUEUE_BYTES:
            if len(buffer) < 5:
                break
            if self.expected < 0 and not self._admit(int.from_bytes(buffer[1:5], "big")):
                return
            size = self.expected
            if len(buffer) < size:
                break
            queue.put_nowait((bytes(memoryview(buffer)[:size]), size))
            del buffer[:size]
            self.queued_bytes += size
            self.expected = -1
        else:
            return  # full: the window stays held until the handler takes a message
        if self.held:
            self.stream.consumed(self.held)
            self.held = 0
        if self.ended and not self.end_queued:
            if buffer:
                self._fail(grpc.StatusCode.INTERNAL, "the request stream ended inside a message")
                return
            self.end_queued = True
            queue.put_nowait(None)

    async def _requests(self) -> AsyncIterator[Any]:
        queue = self.queue
        assert queue is not None
        deserialize = self.route.deserialize
        while (item := await queue.get()) is not None and not self.done:
            message, size = item
            self.queued_bytes -= size
            self._release(size)
            self._pump()  # room again: the next messages, and the window they wait behind
            flag, body = message[0], memoryview(message)[5:]
            yield deserialize(await self._inflated(flag, body) if flag else body)

    async def _streaming(self) -> None:
        route = self.route
        async for reply in route.stream(self._requests(), CallContext(self)):
            self.reply(route.serialize(reply), last=False)
            if len(self.stream.pending) >= STREAM_PENDING_BYTES:
                await self.stream.drained(STREAM_PENDING_BYTES)  # a slow reader holds the next answer back
        self.finish(grpc.StatusCode.OK, "")

    # --- answering ------------------------------------------------------------------------------

    def reply(self, message: bytes, last: bool) -> None:
        if self.done:
            return
        limit = self.server.max_message_bytes
        if len(message) > limit:
            details = f"Sent message larger than max ({len(message)} vs. {limit})"
            self.finish(grpc.StatusCode.RESOURCE_EXHAUSTED, details)
            return
        headers = None if self.headers_sent else RESPONSE_HEADERS
        self.headers_sent = True
        data = b"\x00" + len(message).to_bytes(4, "big") + message
        if not last:
            self.stream.send(headers, data, None)
            return
        self.done = True  # nothing more is sent on it
        self.stream.send(headers, data, OK_TRAILERS)
        self._close()  # its bookkeeping once the answer has left

    def finish(self, code: grpc.StatusCode, details: str, pushback: bool = False) -> None:
        """The call's status; sent before the request ended, it also resets the stream (NO_ERROR,
        RFC 9113 8.1), so what the client still sends on it is dropped."""
        if self.done:
            return
        self._close()
        if self.queue is not None:
            self.queue.put_nowait(None)
        self.stream.send(None, b"", trailers(code, details, self.headers_sent, pushback))

    def _too_large(self, length: int) -> None:
        limit = self.server.max_message_bytes
        self._fail(grpc.StatusCode.RESOURCE_EXHAUSTED, f"Received message larger than max ({length} vs. {limit})")

    def _arm_deadline(self, timeout_s: float) -> bool:
        if timeout_s <= 0:  # already passed: answered now, nothing runs
            self.deadline_passed = True
            self.finish(grpc.StatusCode.DEADLINE_EXCEEDED, DEADLINE_EXCEEDED)
            return False
        connection = self.stream.connection
        self.deadline = connection.loop.time() + timeout_s
        connection.deadlines.hold(self, self.deadline)  # the connection's one timer
        self.timed = True
        return True

    def out_of_time(self) -> None:
        """Its deadline came (the connection's ``deadlines``): answered at once, whatever the
        call's state (its body not yet in, its handler not yet started); then the handler is
        cancelled (a queued request leaves its queue)."""
        self.timed = False
        self.deadline_passed = True
        task = self.task
        self.finish(grpc.StatusCode.DEADLINE_EXCEEDED, DEADLINE_EXCEEDED)
        if task is not None and not task.done():
            task.cancel()

    def _after_cancel(self) -> None:
        if self.deadline_passed:
            self.finish(grpc.StatusCode.DEADLINE_EXCEEDED, DEADLINE_EXCEEDED)
        else:
            self.finish(grpc.StatusCode.CANCELLED, "Cancelled")

    def _finish_quietly(self) -> None:
        self._close()
        if self.task is not None:
            self.task.cancel()
        if self.queue is not None:
            self.queue.put_nowait(None)

    def _close(self) -> None:
        self.done = True
        if self.timed:
            self.stream.connection.deadlines.drop(self)
            self.timed = False
        self.server.calls.discard(self)
        if self.reserved:
            self._release(self.reserved)
        if self.buffer:
            self.buffer = bytearray()
