"""A lean gRPC client for the remote backend: unary calls as HTTP/2 streams on one connection
per endpoint, an asyncio protocol over the frame and HPACK code the front end uses
(backends/common/http2.py). It does what a KServe v2 call needs and no more (no TLS, no
compression, no retries, no name resolution of its own), which makes a call several times
cheaper on the event loop than grpc.aio's, whose every call also hops through its poller
thread: at concurrency 1 that cost was most of the remote hop (docs/backends/remote.md#speed).

Bounds: at most ``max_streams`` calls in flight on the connection (and no more than the server
allows; calls beyond wait), frames of at most MAX_FRAME bytes, header lists of at most
MAX_HEADER_LIST bytes, answers of at most ``max_body`` bytes. Flow control both ways: what is
sent waits for the server's windows, what is received is acknowledged as it is read. A
connection that breaks the protocol or fails is dropped with its calls; one told to go away
takes no new call, and the calls the server says it did not start (above GOAWAY's last stream,
REFUSED_STREAM) fail as RefusedCall."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from urllib.parse import unquote

from backends.common.deadlines import Deadlines
from backends.common.http2 import (
    DEFAULT_WINDOW,
    HEADER,
    MAX_WINDOW,
    PREFACE,
    ConnectionError_,
    ErrorCode,
    Flag,
    FrameType,
    HeaderDecoder,
    Setting,
    frame,
    goaway,
    literal,
    literal_indexed_name,
    rst_stream,
    settings_frame,
    strip_padding,
    window_update,
)
from backends.common.slots import Slots

MAX_FRAME = 1 << 20  # what the server may send in one frame (SETTINGS_MAX_FRAME_SIZE)
MAX_HEADER_LIST = 64 * 1024
STREAM_WINDOW = 8 << 20  # receive window per call: answers of a few MB arrive without a stop
CONNECTION_WINDOW = 32 << 20
STATUS_NAMES = (  # gRPC's status codes by number
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)  # fmt: skip
_LAST_STREAM_ID = 2**31 - 1
_MAX_DECODED = 64  # header blocks remembered per connection (a server sends few distinct ones)


class ProtocolError(Exception):
    """The server broke HTTP/2 or gRPC, or a bound; the call (or the connection) is dropped."""


class RefusedCall(ConnectionError):
    """The server did not start the call (GOAWAY, REFUSED_STREAM, a closed connection before
    the call was written): sending it again, here or elsewhere, is safe."""


class GrpcStatus(Exception):
    """The call ended with a gRPC status other than OK."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def request_head(path: str, authority: str, timeout_s: float) -> bytes:
    """The header block of every call to ``path``: static-table entries and literals, no
    dynamic table (so it is built once and the server's table never holds our state)."""
    timeout_ms = min(max(int(timeout_s * 1000), 1), 99_999_999)  # grpc-timeout: at most 8 digits
    return b"".join(
        (
            b"\x83",  # :method POST
            b"\x86",  # :scheme http
            literal_indexed_name(4, path.encode()),  # :path
            literal_indexed_name(1, authority.encode()),  # :authority
            literal_indexed_name(31, b"application/grpc"),  # content-type
            literal(b"te", b"trailers"),
            literal(b"grpc-timeout", f"{timeout_ms}m".encode()),
            literal_indexed_name(58, b"clipperd-remote"),  # user-agent
        )
    )


class _Call:
    """One stream: what was received of its answer, and its send window."""

    __slots__ = ("chunks", "future", "headers_seen", "send_window", "size", "unacked")

    def __init__(self, future: asyncio.Future[bytes], send_window: int) -> None:
        self.future = future
        self.send_window = send_window
        self.headers_seen = False
        self.chunks: list[bytes] = []
        self.size = 0
        self.unacked = 0


class H2Connection(asyncio.Protocol):
    """One HTTP/2 connection to a gRPC server, many calls at once."""

    def __init__(self, max_body: int) -> None:
        self._max_body = max_body
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buffer = bytearray()
        # no dynamic table (SETTINGS_HEADER_TABLE_SIZE 0): every header block means the same
        # whenever it comes, so the few the server sends are decoded once and then looked up
        self._decoder = HeaderDecoder(MAX_HEADER_LIST, max_table_bytes=0)
        self._decoded: dict[bytes, dict[str, str]] = {}
        self._calls: dict[int, _Call] = {}
        self._next_id = 1
        self._send_window = DEFAULT_WINDOW  # the connection's, as the server grants it
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = 16_384
        self.peer_max_streams = 100
        self._unacked = 0  # received on the connection, not yet given back by WINDOW_UPDATE
        self._window_opened = asyncio.Event()
        self._loop = asyncio.get_running_loop()  # made by loop.create_connection, on the loop
        self._deadlines: Deadlines[_Call] = Deadlines(self._loop, self._time_out)  # one timer, not one a call
        self._continuation: tuple[int, int, bytearray] | None = None  # stream, flags, block so far
        self._handlers: dict[int, Callable[[int, int, bytes], None]] = {
            FrameType.DATA: self._on_data,
            FrameType.HEADERS: self._on_headers,
            FrameType.CONTINUATION: self._on_continuation,
            FrameType.SETTINGS: self._on_settings,
            FrameType.WINDOW_UPDATE: self._on_window_update,
            FrameType.PING: self._on_ping,
            FrameType.RST_STREAM: self._on_rst_stream,
            FrameType.GOAWAY: self._on_goaway,
            FrameType.PUSH_PROMISE: self._on_push_promise,
        }

    # -- asyncio ----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP transport (uvloop's is no subclass)
        assert self.transport is not None
        settings = {
            Setting.HEADER_TABLE_SIZE: 0,
            Setting.ENABLE_PUSH: 0,
            Setting.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            Setting.MAX_FRAME_SIZE: MAX_FRAME,
            Setting.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
        }
        opening = window_update(0, CONNECTION_WINDOW - DEFAULT_WINDOW)
        self.transport.write(PREFACE + settings_frame(settings) + opening)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail_all(ConnectionResetError("the server closed the connection"))

    def data_received(self, data: bytes) -> None:
        try:
            if self._buffer:  # the rest of a frame begun earlier
                self._buffer += data
                del self._buffer[: self._read_frames(self._buffer)]
                return
            read = self._read_frames(data)  # whole frames, the usual case: read where they came
            if read < len(data) and not self.closed:
                self._buffer += memoryview(data)[read:]
        except ConnectionError_ as error:
            self._abort(error.code, str(error))

    # -- calls ------------------------------------------------------------------------------------

    async def call(self, head: bytes, message: bytes, within_s: float) -> bytes:
        """The answer's message bytes; GrpcStatus for a status other than OK, TimeoutError
        after ``within_s``, RefusedCall when the server did not take it, ProtocolError, OSError."""
        if not self.accepting:
            raise RefusedCall("the connection is closed")
        assert self.transport is not None
        loop = self._loop
        stream_id, self._next_id = self._next_id, self._next_id + 2
        call = _Call(loop.create_future(), self._peer_initial_window)
        self._calls[stream_id] = call
        self._deadlines.hold(call, loop.time() + within_s)
        try:
            body = struct.pack(">BI", 0, len(message)) + message
            headers = frame(FrameType.HEADERS, Flag.END_HEADERS, stream_id, head)
            await self._send_body(stream_id, call, body, headers)
            return _message(await call.future)
        except BaseException:
            if self._calls.pop(stream_id, None) is not None and not self.closed:
                self.transport.write(rst_stream(stream_id, ErrorCode.CANCEL))  # the server may stop
            raise
        finally:
            self._deadlines.drop(call)
            self._calls.pop(stream_id, None)
            if call.future.done() and not call.future.cancelled():
                call.future.exception()  # seen, whichever way the call ended
            if self._next_id > _LAST_STREAM_ID and not self._calls:
                self.close()  # told to go away (or out of stream ids), and the last call is over

    @property
    def accepting(self) -> bool:
        """Whether a new call may start here (not closed, not told to go away)."""
        return not self.closed and self._next_id <= _LAST_STREAM_ID

    async def _send_body(self, stream_id: int, call: _Call, body: bytes, headers: bytes) -> None:
        """``headers``, then DATA frames within the server's windows and frame size; the last
        ends the stream. The headers leave with the first DATA frame: one write, one segment."""
        assert self.transport is not None
        view = memoryview(body)
        while True:
            allowed = min(len(view), self._peer_max_frame, self._send_window, call.send_window)
            if allowed == len(view):  # the common case: the rest fits at once
                self._send_window -= allowed
                call.send_window -= allowed
                self.transport.writelines((headers, frame(FrameType.DATA, Flag.END_STREAM, stream_id, bytes(view))))
                return
            if allowed > 0:
                self._send_window -= allowed
                call.send_window -= allowed
                self.transport.writelines((headers, frame(FrameType.DATA, 0, stream_id, bytes(view[:allowed]))))
                headers = b""
                view = view[allowed:]
                continue
            if headers:  # no window yet: the headers go now, the server may answer without the body
                self.transport.write(headers)
                headers = b""
            if call.future.done():  # answered (or failed) before it was all sent
                return
            self._window_opened.clear()
            await self._window_opened.wait()
            if self.closed:
                raise ConnectionResetError("the connection closed while sending")

    def _time_out(self, call: _Call) -> None:
        if not call.future.done():
            call.future.set_exception(TimeoutError())
            self._window_opened.set()  # a sender waiting for a window sees it

    def close(self) -> None:
        self._deadlines.close()
        if not self.closed and self.transport is not None:
            self.transport.write(goaway(0, ErrorCode.NO_ERROR))
            self.transport.close()
        self.closed = True

    # -- frames -----------------------------------------------------------------------------------

    def _read_frames(self, source: bytes | bytearray) -> int:
        """Handles the whole frames at the start of ``source``; the bytes they took."""
        offset, size = 0, len(source)
        while size - offset >= 9:
            high, low, kind, flags, stream_id = HEADER.unpack_from(source, offset)
            length = (high << 8) | low
            if length > MAX_FRAME:
                raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, f"a frame of {length} bytes")
            end = offset + 9 + length
            if end > size:
                break
            payload = bytes(source[offset + 9 : end])  # of bytes: the slice itself, no second copy
            offset = end
            self._on_frame(kind, flags, stream_id & _LAST_STREAM_ID, payload)
            if self.closed:
                break
        return offset

    def _on_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continuation is not None and kind != FrameType.CONTINUATION:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "a header block left unfinished")
        handler = self._handlers.get(kind)
        if handler is not None:  # PRIORITY and unknown frame types are ignored, as RFC 9113 says
            handler(flags, stream_id, payload)

    def _on_ping(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not flags & Flag.ACK and len(payload) == 8:
            assert self.transport is not None
            self.transport.write(frame(FrameType.PING, Flag.ACK, 0, payload))

    def _on_push_promise(self, flags: int, stream_id: int, payload: bytes) -> None:
        raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "a push promise (push is off)")

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        self._unacked += len(payload)
        if self._unacked > CONNECTION_WINDOW:
            raise ConnectionError_(ErrorCode.FLOW_CONTROL_ERROR, "more data than the connection window")
        updates = b""
        if self._unacked >= CONNECTION_WINDOW // 2:
            updates += window_update(0, self._unacked)
            self._unacked = 0
        call = self._calls.get(stream_id)
        if call is not None and not call.future.done():
            data = strip_padding(flags, payload)
            call.size += len(data)
            if call.size > self._max_body + 5:
                self._fail_call(stream_id, ProtocolError(f"an answer exceeds {self._max_body} bytes"))
            else:
                call.chunks.append(data)
                call.unacked += len(payload)
                if call.unacked >= STREAM_WINDOW // 2 and not flags & Flag.END_STREAM:
                    updates += window_update(stream_id, call.unacked)
                    call.unacked = 0
                if flags & Flag.END_STREAM:
                    self._fail_call(stream_id, ProtocolError("the answer ended without a gRPC status"))
        if updates and self.transport is not None:
            self.transport.write(updates)

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        block = strip_padding(flags, payload)
        if flags & Flag.PRIORITY:
            block = block[5:]
        if flags & Flag.END_HEADERS:
            self._on_header_block(flags, stream_id, block)
        else:
            self._continuation = (stream_id, flags, bytearray(block))

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continuation is None or self._continuation[0] != stream_id:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "a CONTINUATION out of place")
        _, first_flags, block = self._continuation
        block += payload
        if len(block) > MAX_HEADER_LIST:
            raise ConnectionError_(ErrorCode.ENHANCE_YOUR_CALM, f"a header block over {MAX_HEADER_LIST} bytes")
        if flags & Flag.END_HEADERS:
            self._continuation = None
            self._on_header_block(first_flags, stream_id, bytes(block))

    def _on_header_block(self, flags: int, stream_id: int, block: bytes) -> None:
        fields = self._decoded.get(block)
        if fields is None:
            fields = dict(self._decoder.decode(block))
            if len(self._decoded) < _MAX_DECODED:
                self._decoded[block] = fields
        call = self._calls.get(stream_id)
        if call is None or call.future.done():
            return
        if not call.headers_seen:
            call.headers_seen = True
            status = fields.get(":status")
            if status != "200":
                self._fail_call(stream_id, ProtocolError(f"HTTP status {status} (not a gRPC server?)"))
                return
        if not flags & Flag.END_STREAM:
            if "grpc-status" in fields:
                raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "trailers that do not end the stream")
            return
        self._finish(stream_id, call, fields)

    def _finish(self, stream_id: int, call: _Call, trailers: dict[str, str]) -> None:
        code = trailers.get("grpc-status")
        if code is None:
            self._fail_call(stream_id, ProtocolError("the answer ended without a gRPC status"))
        elif code != "0":
            name = STATUS_NAMES[int(code)] if code.isdigit() and int(code) < len(STATUS_NAMES) else "UNKNOWN"
            message = unquote(trailers.get("grpc-message", ""), errors="replace")
            self._fail_call(stream_id, GrpcStatus(name, message or name))
        else:
            del self._calls[stream_id]
            call.future.set_result(b"".join(call.chunks))

    def _on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if flags & Flag.ACK:
            return
        if len(payload) % 6:
            raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "a SETTINGS frame of a bad length")
        for key, value in struct.iter_unpack(">HI", payload):
            if key == Setting.INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionError_(ErrorCode.FLOW_CONTROL_ERROR, "an initial window over 2^31-1")
                delta, self._peer_initial_window = value - self._peer_initial_window, value
                for call in self._calls.values():
                    call.send_window += delta
            elif key == Setting.MAX_FRAME_SIZE:
                if not 16_384 <= value <= 16_777_215:
                    raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, f"a max frame size of {value}")
                self._peer_max_frame = value
            elif key == Setting.MAX_CONCURRENT_STREAMS:
                self.peer_max_streams = value
        assert self.transport is not None
        self.transport.write(frame(FrameType.SETTINGS, Flag.ACK, 0))
        self._window_opened.set()

    def _on_window_update(self, flags: int, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "a WINDOW_UPDATE of a bad length")
        increment = struct.unpack(">I", payload)[0] & _LAST_STREAM_ID
        if stream_id == 0:
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise ConnectionError_(ErrorCode.FLOW_CONTROL_ERROR, "a connection window over 2^31-1")
        elif (call := self._calls.get(stream_id)) is not None:
            call.send_window += increment
        self._window_opened.set()

    def _on_rst_stream(self, flags: int, stream_id: int, payload: bytes) -> None:
        code = struct.unpack(">I", payload)[0] if len(payload) == 4 else ErrorCode.INTERNAL_ERROR
        call = self._calls.get(stream_id)
        if call is None:
            return
        refused = code == ErrorCode.REFUSED_STREAM
        name = ErrorCode(code).name if code in ErrorCode._value2member_map_ else str(code)
        error: Exception = (
            RefusedCall("the server refused the call") if refused else ProtocolError(f"RST_STREAM {name}")
        )
        self._fail_call(stream_id, error)

    def _on_goaway(self, flags: int, stream_id: int, payload: bytes) -> None:
        """No new calls; those above the last stream the server took never ran there."""
        if len(payload) < 8:
            raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "a GOAWAY of a bad length")
        last = struct.unpack_from(">I", payload)[0] & _LAST_STREAM_ID
        self._next_id = _LAST_STREAM_ID + 2  # no new stream on this connection
        for stream_id in [s for s in self._calls if s > last]:
            self._fail_call(stream_id, RefusedCall("the server is going away"))
        if not self._calls:
            self.close()

    # -- failures ---------------------------------------------------------------------------------

    def _fail_call(self, stream_id: int, error: Exception) -> None:
        call = self._calls.pop(stream_id, None)
        if call is not None and not call.future.done():
            call.future.set_exception(error)

    def _fail_all(self, error: Exception) -> None:
        self._deadlines.close()
        calls, self._calls = self._calls, {}
        for call in calls.values():
            if not call.future.done():
                call.future.set_exception(error)
        self._window_opened.set()  # senders waiting for a window see the connection closed

    def _abort(self, code: ErrorCode, message: str) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(goaway(0, code, message))
            self.transport.close()
        self.closed = True
        self._fail_all(ProtocolError(message))


def _message(body: bytes) -> bytes:
    """The one message of a unary answer (gRPC's length-prefixed framing, uncompressed)."""
    if len(body) < 5:
        raise ProtocolError("an answer without a gRPC message")
    compressed, length = struct.unpack_from(">BI", body)
    if compressed:
        raise ProtocolError("a compressed answer (none was offered)")
    if length != len(body) - 5:
        raise ProtocolError(f"a gRPC message of {length} bytes in {len(body) - 5}")
    return body[5:]


class H2Channel:
    """One connection to ``host:port`` at a time, made when first needed and again after it
    fails; at most ``max_streams`` calls in flight on it."""

    def __init__(self, host: str, port: int, max_streams: int, max_body: int) -> None:
        self._host, self._port = host, port
        self._max_body = max_body
        self._slots = Slots(max_streams)
        self._connection: H2Connection | None = None
        self._connecting: asyncio.Future[H2Connection] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def call(self, head: bytes, message: bytes, within_s: float) -> bytes:
        loop = self._loop = self._loop or asyncio.get_running_loop()  # asked once: a system call on 3.11
        deadline = loop.time() + within_s
        if not self._slots.take_now():  # every stream busy: wait for one, within the time
            await self._slots.take(within_s)
        try:
            connection = self._connection
            if connection is None or not connection.accepting:
                connection = await self._connect(deadline - loop.time())
            return await connection.call(head, message, deadline - loop.time())
        finally:
            self._slots.give()

    async def _connect(self, within_s: float) -> H2Connection:
        """One connection attempt however many calls want it at once."""
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open(within_s))
            self._connecting.add_done_callback(self._connected)
        return await asyncio.shield(self._connecting)

    async def _open(self, within_s: float) -> H2Connection:
        loop = asyncio.get_running_loop()
        connect = loop.create_connection(lambda: H2Connection(self._max_body), self._host, self._port)
        _, protocol = await asyncio.wait_for(connect, within_s)
        return protocol

    def _connected(self, attempt: asyncio.Future[H2Connection]) -> None:
        self._connecting = None
        if not attempt.cancelled() and attempt.exception() is None:
            self._connection = attempt.result()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
