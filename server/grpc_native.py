"""gRPC over the project's own HTTP/2 connection: the KServe v2 service without grpc.aio.

grpc.aio spends about 250 µs of CPU per unary call on the event loop (its C core's completion
queue, the Cython bridge, a coroutine and a call object per RPC); on a 2-core machine that, not
the model, caps throughput. This front end parses the frames itself and runs the same handlers
(``server.grpc_service.method_handlers``: the same messages, statuses and error texts), at a
fraction of that cost. What it speaks of gRPC (https://github.com/grpc/grpc/blob/master/doc/
PROTOCOL-HTTP2.md): unary and bidirectional-streaming calls, length-prefixed messages,
``grpc-timeout`` deadlines, cancellation by RST_STREAM, gzip/deflate request messages,
Trailers-Only error answers, custom metadata in ``invocation_metadata``, TLS when given a
context (server/tls.py). Not spoken: compressed answers."""

from __future__ import annotations

import asyncio
import logging
import re
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any

import grpc

from server.http2_connection import Http2Server, Stream
from server.http2_frames import (
    CONTENT_TYPE_INDEX,
    STATUS_200,
    literal,
    literal_indexed_name,
    percent_encode,
)

log = logging.getLogger(__name__)

RESPONSE_HEADERS = STATUS_200 + literal_indexed_name(CONTENT_TYPE_INDEX, b"application/grpc")
OK_TRAILERS = literal(b"grpc-status", b"0")
_TIMEOUT = re.compile(r"^(\d{1,8})([HMSmun])$")
_UNIT_S = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_ROUTING = frozenset({"content-type", "grpc-encoding", "grpc-timeout"})
_RESERVED_NAMES = frozenset({"content-type", "te", "user-agent"})


class _Abort(grpc.aio.AbortError):  # type: ignore[misc]  # grpc ships no stubs for it
    """What ``context.abort`` raises: the call ends with this status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def trailers(code: grpc.StatusCode, details: str, headers_sent: bool) -> bytes:
    block = literal(b"grpc-status", str(code.value[0]).encode())
    if details:
        block += literal(b"grpc-message", percent_encode(details))
    return block if headers_sent else RESPONSE_HEADERS + block  # Trailers-Only


def http_error(status: int) -> bytes:
    """An answer for a request that is not gRPC at all (wrong method or content type)."""
    return literal_indexed_name(8, str(status).encode())


class CallContext:
    """The part of grpc.aio's ServicerContext that handlers use."""

    def __init__(self, call: GrpcCall) -> None:
        self._call = call

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        raise _Abort(code, details)

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
class Route:
    """A method's handler (grpc.RpcMethodHandler) with its codecs resolved once, not per call."""

    unary: Any  # async (request, context) -> reply, or None
    stream: Any  # async generator (requests, context) -> replies, or None
    deserialize: Callable[[bytes], Any]
    serialize: Callable[[Any], bytes]

    @classmethod
    def of(cls, handler: Any) -> Route:
        return cls(
            handler.unary_unary,
            handler.stream_stream,
            handler.request_deserializer or _same,
            handler.response_serializer or _same,
        )


NO_ROUTE = Route(None, None, _same, _same)  # the call of a request that is answered at once


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
        "headers",
        "headers_sent",
        "queue",
        "route",
        "server",
        "stream",
        "task",
        "timer",
    )  # fmt: skip

    def __init__(self, server: GrpcServer, stream: Stream, route: Route, headers: list[tuple[str, str]]) -> None:
        self.server = server
        self.stream = stream
        self.route = route
        self.headers = headers
        self.encoding = "identity"
        self.buffer = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.queue: asyncio.Queue[tuple[bytes, int] | None] | None = None
        self.deadline: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.cancelled = False
        self.headers_sent = False
        self.done = False
        self.deadline_passed = False

    # --- from the connection ------------------------------------------------------------------

    def start(self, timeout_s: float | None, end: bool) -> None:
        loop = asyncio.get_running_loop()
        if timeout_s is not None:
            self.deadline = loop.time() + timeout_s
            self.timer = loop.call_later(timeout_s, self._deadline_passed)
        if self.route.stream is not None:
            self.queue = asyncio.Queue()
            self.task = loop.create_task(self._guarded(self._streaming()))
            if end:
                self.queue.put_nowait(None)
        elif end:
            self._unary_ready()

    def data(self, payload: bytes, end: bool) -> None:
        if self.done:
            return
        if self.queue is not None:
            self._stream_data(payload, end)
            return
        self.buffer += payload
        self.stream.consumed(len(payload))
        if len(self.buffer) >= 5 and int.from_bytes(self.buffer[1:5], "big") > self.server.max_message_bytes:
            self._too_large(int.from_bytes(self.buffer[1:5], "big"))
        elif end:
            self._unary_ready()

    def reset(self) -> None:
        """The client cancelled (RST_STREAM) or the connection closed: the handler is cancelled."""
        self.cancelled = True
        self._finish_quietly()

    # --- unary ----------------------------------------------------------------------------------

    def _unary_ready(self) -> None:
        try:
            message = self._single_message()
        except _Abort as abort:
            self.finish(abort.code, abort.details)
            return
        self.task = asyncio.get_running_loop().create_task(self._guarded(self._unary(message)))

    def _single_message(self) -> bytes:
        buffer = self.buffer
        if len(buffer) < 5:
            raise _Abort(grpc.StatusCode.INTERNAL, "the request carried no message")
        length = int.from_bytes(buffer[1:5], "big")
        if len(buffer) != 5 + length:
            raise _Abort(grpc.StatusCode.INTERNAL, "a unary call carried a partial message or more than one")
        return self._decompress(buffer[0], bytes(buffer[5:]))

    async def _unary(self, message: bytes) -> None:
        route = self.route
        reply = await route.unary(route.deserialize(message), CallContext(self))
        self.reply(route.serialize(reply), last=True)

    async def _guarded(self, work: Awaitable[None]) -> None:
        """Runs a call's handler; what it raises becomes the call's status."""
        try:
            await work
        except _Abort as abort:
            self.finish(abort.code, abort.details)
        except asyncio.CancelledError:
            self._after_cancel()
        except Exception:
            log.exception("internal error in a gRPC handler")
            self.finish(grpc.StatusCode.UNKNOWN, "Unexpected error in handler")

    # --- streaming ------------------------------------------------------------------------------

    def _stream_data(self, payload: bytes, end: bool) -> None:
        assert self.queue is not None
        self.buffer += payload
        buffer = self.buffer
        while len(buffer) >= 5:
            length = int.from_bytes(buffer[1:5], "big")
            if length > self.server.max_message_bytes:
                self._too_large(length)
                return
            if len(buffer) < 5 + length:
                break
            self.queue.put_nowait((bytes(buffer[: 5 + length]), 5 + length))
            del buffer[: 5 + length]
        if end:
            self.queue.put_nowait(None)

    async def _requests(self) -> AsyncIterator[Any]:
        assert self.queue is not None
        deserialize = self.route.deserialize
        while (item := await self.queue.get()) is not None:
            message, size = item
            self.stream.consumed(size)  # the window reopens as the handler takes messages
            yield deserialize(self._decompress(message[0], message[5:]))

    async def _streaming(self) -> None:
        route = self.route
        async for reply in route.stream(self._requests(), CallContext(self)):
            self.reply(route.serialize(reply), last=False)
        self.finish(grpc.StatusCode.OK, "")

    # --- answering ------------------------------------------------------------------------------

    def reply(self, message: bytes, last: bool) -> None:
        if self.done:
            return
        if len(message) > self.server.max_message_bytes:
            self.finish(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Sent message larger than max ({len(message)} vs. {self.server.max_message_bytes})",
            )
            return
        headers = None if self.headers_sent else RESPONSE_HEADERS
        self.headers_sent = True
        data = b"\x00" + len(message).to_bytes(4, "big") + message
        if last:
            self._close()
        self.stream.send(headers, data, OK_TRAILERS if last else None)

    def finish(self, code: grpc.StatusCode, details: str) -> None:
        if self.done:
            return
        self._close()
        if self.queue is not None:
            self.queue.put_nowait(None)
        self.stream.send(None, b"", trailers(code, details, self.headers_sent))

    def _too_large(self, length: int) -> None:
        limit = self.server.max_message_bytes
        self.buffer.clear()
        if self.task is not None:
            self.task.cancel()
        self.finish(grpc.StatusCode.RESOURCE_EXHAUSTED, f"Received message larger than max ({length} vs. {limit})")

    def _decompress(self, flag: int, message: bytes) -> bytes:
        if flag == 0:
            return message
        if flag != 1:
            raise _Abort(grpc.StatusCode.INTERNAL, f"invalid message compression flag {flag}")
        wbits = {"gzip": 31, "deflate": 15}.get(self.encoding)
        if wbits is None:
            raise _Abort(grpc.StatusCode.UNIMPLEMENTED, f"compression {self.encoding[:32]!r} is not supported")
        limit = self.server.max_message_bytes
        try:
            inflater = zlib.decompressobj(wbits)
            plain = inflater.decompress(message, limit + 1)
        except zlib.error:
            raise _Abort(grpc.StatusCode.INTERNAL, f"the message is not valid {self.encoding}") from None
        if len(plain) > limit:
            raise _Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"Received message larger than max (> {limit} bytes)")
        return plain

    def _deadline_passed(self) -> None:
        self.timer = None
        self.deadline_passed = True
        if self.task is not None and not self.task.done():
            self.task.cancel()  # its CancelledError answers DEADLINE_EXCEEDED
        else:
            self.finish(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")

    def _after_cancel(self) -> None:
        if self.deadline_passed:
            self.finish(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
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
        self._stop_timer()
        self.server.calls.discard(self)

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class GrpcServer:
    """Routes each new HTTP/2 stream to the handler of its ``:path`` (/service/method)."""

    def __init__(self, services: dict[str, dict[str, Any]], max_message_bytes: int, stream_window: int) -> None:
        self.routes = {
            f"/{service}/{name}": Route.of(handler)
            for service, handlers in services.items()
            for name, handler in handlers.items()
        }
        self.max_message_bytes = max_message_bytes
        self.http2 = Http2Server(self, stream_window)
        self.calls: set[GrpcCall] = set()

    async def start(
        self, host: str, port: int, ssl: SSLContext | None = None, handshake_timeout: float | None = None
    ) -> int:
        return await self.http2.start(host, port, ssl, handshake_timeout)

    def open(self, stream: Stream, headers: list[tuple[str, str]], end: bool) -> Any:
        pseudo = dict(h for h in headers if h[0].startswith(":") or h[0] in _ROUTING)
        route = self.routes.get(pseudo.get(":path", ""))
        call = GrpcCall(self, stream, route or NO_ROUTE, headers)
        if pseudo.get(":method") != "POST":
            stream.send(None, b"", http_error(405))
            call.done = True
            return call
        if not pseudo.get("content-type", "").startswith("application/grpc"):
            stream.send(None, b"", http_error(415))
            call.done = True
            return call
        if route is None:
            call.finish(grpc.StatusCode.UNIMPLEMENTED, f"Method not found: {pseudo.get(':path', '')[:200]}")
            return call
        call.encoding = pseudo.get("grpc-encoding", "identity")
        try:
            timeout = _timeout_s(pseudo.get("grpc-timeout"))
        except ValueError as error:
            call.finish(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            return call
        self.calls.add(call)
        call.start(timeout, end)
        return call

    async def stop(self, grace: float) -> None:
        """No new calls; those in flight may finish for ``grace`` seconds; then all close."""
        self.http2.stop_accepting()
        tasks = [c.task for c in self.calls if c.task is not None and not c.task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        self.http2.close_all()
        await self.http2.wait_closed()


def _timeout_s(value: str | None) -> float | None:
    if value is None:
        return None
    match = _TIMEOUT.match(value)
    if match is None:
        raise ValueError(f"invalid grpc-timeout {value[:32]!r}")
    return int(match.group(1)) * _UNIT_S[match.group(2)]
