"""An HTTP/2 server connection (RFC 9113) as an asyncio protocol: frames in, streams out.

Only what a gRPC server needs: no server push, no priorities (PRIORITY is checked and ignored),
no HTTP/1.1 upgrade (clients speak HTTP/2 from the first byte, as gRPC clients do). Each stream
is handed to ``StreamHandler.open`` with its request headers; what it receives goes to the
``Receiver`` that returns, and it answers through ``Stream.send``. Flow control both ways: the
peer's windows bound what is sent (the rest waits for its WINDOW_UPDATE), and the receive
windows we advertise are enforced and topped up as data arrives (``Stream.consumed`` lets a
receiver hold them back). Every bound a hostile peer could push on is named in
``server.grpc.http2.limits``; the frame rules are RFC 9113 §5.1 (stream states) and §6."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from ssl import SSLContext
from typing import cast

from backends.common.deadlines import Deadlines
from backends.common.http2 import (
    DEFAULT_FRAME,
    DEFAULT_WINDOW,
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
    rst_stream,
    settings_frame,
    strip_padding,
    window_update,
)
from server.grpc.http2.limits import (
    CONNECTION_WINDOW,
    CONTROL_BURST,
    CONTROL_RATE,
    HEADERS_COST,
    MAX_CONTINUATIONS,
    MAX_FRAME,
    MAX_FRAMES_PER_TURN,
    MAX_HEADER_BLOCK,
    MAX_HEADER_LIST,
    MAX_HEADER_TABLE,
    MAX_SETTINGS_ENTRIES,
    MAX_STREAMS,
    RESET_BURST,
    RESET_RATE,
    SETTINGS_BURST,
    SETTINGS_RATE,
    STREAM_CREDIT,
    Http2Limits,
    RateBudget,
)
from server.grpc.http2.output import Http2Output
from server.grpc.http2.stream import Receiver, Stream, StreamHandler
from server.tls import listen

__all__ = [
    "CONNECTION_WINDOW",
    "MAX_FRAME",
    "MAX_HEADER_BLOCK",
    "MAX_HEADER_LIST",
    "MAX_STREAMS",
    "Http2Connection",
    "Http2Server",
    "Receiver",
    "Stream",
    "StreamHandler",
]

log = logging.getLogger(__name__)


class _HeaderBlock:
    """A header block being received: HEADERS then CONTINUATION frames until END_HEADERS."""

    __slots__ = ("block", "continuations", "flags", "started", "stream_id")

    def __init__(self, stream_id: int, flags: int, block: bytes, started: float) -> None:
        self.stream_id = stream_id
        self.flags = flags
        self.block = bytearray(block)
        self.continuations = 0
        self.started = started


class Http2Connection(Http2Output):
    def __init__(self, server: Http2Server) -> None:
        self.server = server
        self.limits = server.limits
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.now = self.loop.time()  # read once per event: the time of this batch of frames
        self.opened_at = self.now
        self.peer = ""
        self.buffer = bytearray()
        self.outgoing: list[bytes] = []  # frames to send at the end of this turn of the loop
        self.preface_seen = False
        self.settings_seen = False  # the client preface ends with its SETTINGS (RFC 9113 §3.4)
        self.streams: dict[int, Stream] = {}
        self.early_closed: dict[int, None] = {}  # streams we ended first: their frames in flight are dropped
        self.last_stream_id = 0
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = DEFAULT_FRAME
        self.send_window = DEFAULT_WINDOW
        self.received = 0  # bytes received and not yet returned to the peer's connection window
        self.credit = 0  # of those, bytes consumed (or dropped): returned once half the window
        self.queued = 0  # DATA bytes waiting in streams for the peer's windows
        self.blocked: dict[int, Stream] = {}  # streams waiting for the connection's window
        self.headers_in_progress: _HeaderBlock | None = None
        self.decoder = HeaderDecoder(MAX_HEADER_LIST, MAX_HEADER_TABLE)
        self.control = RateBudget(CONTROL_BURST, CONTROL_RATE, self.now)
        self.resets = RateBudget(RESET_BURST, RESET_RATE, self.now)
        self.settings_budget = RateBudget(SETTINGS_BURST, SETTINGS_RATE, self.now)
        self.idle_since: float | None = self.now
        self.stalled_since: float | None = None  # output waiting and none of it leaving since then
        self.write_paused = False
        self.yielded = False  # reading paused until the next turn (MAX_FRAMES_PER_TURN reached)
        self.going_away = False  # no new streams (either side said GOAWAY)
        self.stopping = False  # we said GOAWAY: close when the last stream ends
        self.closed = False
        self.lost = False
        self._timer: asyncio.TimerHandle | None = None
        # the receivers' deadlines (gRPC's grpc-timeout) on one timer, not one a call
        self.deadlines: Deadlines[Receiver] = Deadlines(self.loop, _deadline_passed)
        self._dispatch: dict[int, Callable[[int, int, bytes], None]] = {
            FrameType.DATA: self._on_data,
            FrameType.HEADERS: self._on_headers,
            FrameType.PRIORITY: self._on_priority,
            FrameType.RST_STREAM: self._on_rst_stream,
            FrameType.SETTINGS: self._on_settings,
            FrameType.PUSH_PROMISE: self._on_push_promise,
            FrameType.PING: self._on_ping,
            FrameType.GOAWAY: self._on_goaway,
            FrameType.WINDOW_UPDATE: self._on_window_update,
            FrameType.CONTINUATION: self._on_continuation,
        }

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else ""
        ours = {
            Setting.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
            Setting.INITIAL_WINDOW_SIZE: self.server.stream_window,
            Setting.MAX_FRAME_SIZE: MAX_FRAME,
            Setting.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
        }
        preface = settings_frame(ours) + window_update(0, CONNECTION_WINDOW - DEFAULT_WINDOW)
        if not self.server.admit(self):
            self.transport.write(preface + goaway(0, ErrorCode.ENHANCE_YOUR_CALM, "too many connections"))
            self.closed = True
            self.transport.close()
            return
        self.transport.write(preface)
        self._timer = self.loop.call_later(self.limits.tick_s(), self._tick)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = self.lost = True
        self.server.release(self)
        self.deadlines.close()  # its receivers are reset below
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        streams, self.streams = self.streams, {}
        self.blocked.clear()
        self._queue(-self.queued)  # what waited for this peer no longer counts for the server
        for stream in streams.values():
            stream.pending = bytearray()
            if stream.receiver is not None:
                stream.receiver.reset()

    def pause_writing(self) -> None:
        # a client that does not read its answers gets no new requests read either
        self.write_paused = True
        if self.stalled_since is None:
            self.stalled_since = self.loop.time()
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.stalled_since = None
        if self.blocked and not self.closed:
            self._flush_blocked()  # the DATA that waited for the transport to drain
        if self.transport is not None and not self.closed and not self.yielded:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.now = self.loop.time()
        self.buffer += data
        try:
            if not self.preface_seen and not self._read_preface():
                return
            self._read_frames()
        except ConnectionError_ as error:
            self.fail(error.code, str(error))

    def _read_preface(self) -> bool:
        got = bytes(self.buffer[: len(PREFACE)])
        if not PREFACE.startswith(got):
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "not an HTTP/2 client (gRPC needs HTTP/2)")
        if len(got) < len(PREFACE):
            return False
        del self.buffer[: len(PREFACE)]
        self.preface_seen = True
        return True

    def _read_frames(self) -> None:
        buffer = self.buffer
        position, end = 0, len(buffer)
        budget = MAX_FRAMES_PER_TURN
        try:
            while end - position >= 9 and not self.closed:
                length = (buffer[position] << 16) | (buffer[position + 1] << 8) | buffer[position + 2]
                if length > MAX_FRAME:
                    raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, f"frame of {length} bytes")
                if end - position - 9 < length:
                    break
                kind, flags = buffer[position + 3], buffer[position + 4]
                budget -= HEADERS_COST if kind == 1 else 1  # HEADERS starts a call: it weighs more
                if budget < 0:  # the rest waits for the next turn of the loop: others run first
                    self._yield_reading()
                    break
                stream_id = int.from_bytes(buffer[position + 5 : position + 9], "big") & 0x7FFFFFFF
                payload = bytes(buffer[position + 9 : position + 9 + length])
                position += 9 + length
                if self.headers_in_progress is not None and kind != FrameType.CONTINUATION:
                    raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "a header block was interrupted")
                if not self.settings_seen:
                    self._first_frame(kind, flags)
                handler = self._dispatch.get(kind)
                if handler is not None:
                    handler(flags, stream_id, payload)
                else:  # unknown frame types are ignored (RFC 9113 §5.5), within the control budget
                    self._spend_control()
        finally:
            del buffer[:position]

    def _yield_reading(self) -> None:
        if self.transport is not None and not self.yielded:
            self.yielded = True
            self.transport.pause_reading()
            self.loop.call_soon(self._resume_frames)

    def _resume_frames(self) -> None:
        self.yielded = False
        if self.closed:
            return
        self.now = self.loop.time()
        try:
            self._read_frames()
        except ConnectionError_ as error:
            self.fail(error.code, str(error))
            return
        if not self.yielded and not self.write_paused and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def _first_frame(self, kind: int, flags: int) -> None:
        if kind != FrameType.SETTINGS or flags & Flag.ACK:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "the client preface must end with SETTINGS")
        self.settings_seen = True

    def _spend_control(self) -> None:
        """A frame that costs us work and moves nothing forward (CVE-2019-9512/9515/9518)."""
        if not self.control.spend(self.now):
            raise ConnectionError_(ErrorCode.ENHANCE_YOUR_CALM, "too many control frames")

    # --- frames -------------------------------------------------------------------------------

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        self.received += size  # padding and DATA on closed streams count too (§6.9)
        if self.received > CONNECTION_WINDOW:
            raise ConnectionError_(ErrorCode.FLOW_CONTROL_ERROR, "DATA past the connection window")
        end = bool(flags & Flag.END_STREAM)
        if size == 0 and not end:
            self._spend_control()
        data = strip_padding(flags, payload)
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_done:
            self._credit(size)
            self._data_not_open(stream_id, stream)
            return
        stream.recv_window -= size
        if stream.recv_window < 0:
            self._stream_error(stream_id, ErrorCode.FLOW_CONTROL_ERROR, stream)
            return
        if size > len(data):
            self.consumed(stream, size - len(data))
        if end:
            stream.remote_done = True
        if stream.receiver is not None:
            stream.receiver.data(data, end)
        if end:
            self._forget_if_done(stream)

    def _data_not_open(self, stream_id: int, stream: Stream | None) -> None:
        if stream_id > self.last_stream_id:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
        if stream is None and stream_id in self.early_closed:
            return  # we ended it first: frames still in flight are dropped
        self._stream_error(stream_id, ErrorCode.STREAM_CLOSED, stream)  # its half is closed (§5.1)

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "HEADERS on stream 0")
        if len(payload) > MAX_HEADER_BLOCK:
            raise ConnectionError_(ErrorCode.ENHANCE_YOUR_CALM, "header block too large")
        payload = strip_padding(flags, payload)
        if flags & Flag.PRIORITY:
            if len(payload) < 5:
                raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            if int.from_bytes(payload[:4], "big") & 0x7FFFFFFF == stream_id:
                flags |= _SELF_DEPENDENT
            payload = payload[5:]
        if flags & Flag.END_HEADERS:
            self._headers_complete(stream_id, flags, payload)
        else:
            self.headers_in_progress = _HeaderBlock(stream_id, flags, payload, self.now)

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        progress = self.headers_in_progress
        if progress is None or progress.stream_id != stream_id:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "CONTINUATION without a header block")
        progress.continuations += 1
        if progress.continuations > MAX_CONTINUATIONS:
            raise ConnectionError_(ErrorCode.ENHANCE_YOUR_CALM, "too many CONTINUATION frames")
        if not payload and not flags & Flag.END_HEADERS:
            self._spend_control()
        progress.block += payload
        if len(progress.block) > MAX_HEADER_BLOCK:
            raise ConnectionError_(ErrorCode.ENHANCE_YOUR_CALM, "header block too large")
        if flags & Flag.END_HEADERS:
            self.headers_in_progress = None
            self._headers_complete(stream_id, progress.flags, bytes(progress.block))

    def _headers_complete(self, stream_id: int, flags: int, block: bytes) -> None:
        headers = self.decoder.decode(block)  # always: the table must stay in step
        end = bool(flags & Flag.END_STREAM)
        stream = self.streams.get(stream_id)
        if stream is not None or stream_id in self.early_closed:
            self._more_headers(stream_id, stream, end)
            return
        if stream_id % 2 == 0 or stream_id <= self.last_stream_id:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, f"HEADERS on stream {stream_id}: not a new client stream")
        self.last_stream_id = stream_id
        if flags & _SELF_DEPENDENT:
            self._stream_error(stream_id, ErrorCode.PROTOCOL_ERROR, None)
            return
        if self.going_away or len(self.streams) >= MAX_STREAMS:
            self._stream_error(stream_id, ErrorCode.REFUSED_STREAM, None)
            return
        stream = Stream(stream_id, self)
        stream.remote_done = end
        self.streams[stream_id] = stream
        self.idle_since = None
        self.control.tokens += STREAM_CREDIT  # a call's own WINDOW_UPDATEs, PINGs, late frames
        stream.receiver = self.server.handler.open(stream, headers, end)
        self._forget_if_done(stream)

    def _more_headers(self, stream_id: int, stream: Stream | None, end: bool) -> None:
        """Trailers end the client's half; anything else on the stream breaks its state (§5.1,
        §8.1): a request never runs twice."""
        if stream is None:
            return  # we ended the stream first: its trailers were in flight
        if stream.remote_done:
            self._stream_error(stream_id, ErrorCode.STREAM_CLOSED, stream)
        elif not end:
            self._stream_error(stream_id, ErrorCode.PROTOCOL_ERROR, stream)
        else:
            stream.remote_done = True
            if stream.receiver is not None:
                stream.receiver.data(b"", True)
            self._forget_if_done(stream)

    def _on_priority(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0")
        self._spend_control()
        if len(payload) != 5:
            self._stream_error(stream_id, ErrorCode.FRAME_SIZE_ERROR, self.streams.get(stream_id))
        elif int.from_bytes(payload[:4], "big") & 0x7FFFFFFF == stream_id:
            self._stream_error(stream_id, ErrorCode.PROTOCOL_ERROR, self.streams.get(stream_id))

    def _on_rst_stream(self, flags: int, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM of the wrong size")
        if stream_id == 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if stream_id > self.last_stream_id:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")
        stream = self.streams.get(stream_id)
        if stream is None:
            self._spend_control()
            return
        if not stream.closed and not self.resets.spend(self.now):  # work thrown away: Rapid Reset
            raise ConnectionError_(ErrorCode.ENHANCE_YOUR_CALM, "too many stream resets")
        stream.closed = stream.remote_done = True
        self._drop(stream)
        if stream.receiver is not None:
            stream.receiver.reset()

    def _on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & Flag.ACK:
            if payload:
                raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            self._spend_control()
            return
        if len(payload) % 6:
            raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS of the wrong size")
        if len(payload) > 6 * MAX_SETTINGS_ENTRIES:
            raise ConnectionError_(ErrorCode.ENHANCE_YOUR_CALM, f"more than {MAX_SETTINGS_ENTRIES} settings")
        if not self.settings_budget.spend(self.now):  # each may walk every stream (INITIAL_WINDOW_SIZE)
            raise ConnectionError_(ErrorCode.ENHANCE_YOUR_CALM, "too many SETTINGS frames")
        window = None
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == Setting.INITIAL_WINDOW_SIZE:
                window = value  # the last one counts: every stream is walked once a frame, not once an entry
            self._apply_setting(key, value)
        # acknowledged before a larger window is used: grpc's C-core applies its new window when
        # the ACK arrives, and resets the stream for DATA that comes ahead of it
        self._write(frame(FrameType.SETTINGS, Flag.ACK, 0))
        if window is not None:
            self._initial_window(window)

    def _apply_setting(self, key: int, value: int) -> None:
        if key == Setting.INITIAL_WINDOW_SIZE and value > MAX_WINDOW:
            raise ConnectionError_(ErrorCode.FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE too large")
        if key == Setting.MAX_FRAME_SIZE:
            if not DEFAULT_FRAME <= value < 1 << 24:
                raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range")
            self.peer_max_frame = value
        elif key == Setting.ENABLE_PUSH and value > 1:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "ENABLE_PUSH must be 0 or 1")
        # HEADER_TABLE_SIZE: our encoder uses no dynamic table; the rest do not bind a server

    def _initial_window(self, value: int) -> None:
        delta, self.peer_initial_window = value - self.peer_initial_window, value
        if delta == 0:
            return
        for stream in self.streams.values():
            stream.send_window += delta
            if stream.send_window > MAX_WINDOW:
                raise ConnectionError_(ErrorCode.FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE overflows a window")
        if delta > 0:
            for stream in [s for s in self.streams.values() if s.pending]:
                self._flush(stream)

    def _on_push_promise(self, flags: int, stream_id: int, payload: bytes) -> None:
        raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "clients cannot push")

    def _on_ping(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "PING of the wrong size")
        self._spend_control()
        if not flags & Flag.ACK:
            self._write(frame(FrameType.PING, Flag.ACK, 0, payload))

    def _on_goaway(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "GOAWAY too short")
        self.going_away = True  # the client opens no more streams; those open finish
        if not self.streams:
            self.close()

    def _on_window_update(self, flags: int, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong size")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if stream_id == 0:
            self._connection_window_update(increment)
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self.last_stream_id:
                raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {stream_id}")
            self._spend_control()
            return
        if increment == 0:
            self._stream_error(stream_id, ErrorCode.PROTOCOL_ERROR, stream)
        elif stream.send_window + increment > MAX_WINDOW:
            self._stream_error(stream_id, ErrorCode.FLOW_CONTROL_ERROR, stream)
        else:
            stream.send_window += increment
            if stream.pending:
                self._flush(stream)
            else:
                self._spend_control()

    def _connection_window_update(self, increment: int) -> None:
        if increment == 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
        self.send_window += increment
        if self.send_window > MAX_WINDOW:
            raise ConnectionError_(ErrorCode.FLOW_CONTROL_ERROR, "connection window overflow")
        if self.blocked:
            self._flush_blocked()
        else:
            self._spend_control()

    # --- stream errors (RFC 9113 §5.4.2) -------------------------------------------------------

    def _stream_error(self, stream_id: int, code: ErrorCode, stream: Stream | None) -> None:
        """RST_STREAM with ``code``; the stream's receiver is reset. Each costs us a frame: within
        the control budget."""
        self._spend_control()
        if stream is None:
            self._write(rst_stream(stream_id, code))
            self._remember_early(stream_id)  # its frames in flight are dropped, not answered again
            return
        self.reset_stream(stream, code)
        if stream.receiver is not None:
            stream.receiver.reset()

    # --- timeouts (slowloris, idle, stalled output) -------------------------------------------

    def _tick(self) -> None:
        self._timer = None
        if self.closed:
            return
        now = self.loop.time()
        reason = self._expired(now)
        if reason is not None:
            code, message = reason
            log.debug("HTTP/2 connection from %s closed: %s", self.peer, message)
            if code is None:
                self.abort()
                return
            self.fail(code, message)
            return
        self._timer = self.loop.call_later(self.limits.tick_s(), self._tick)

    def _expired(self, now: float) -> tuple[ErrorCode | None, str] | None:
        limits = self.limits
        if not self.settings_seen and now - self.opened_at > limits.handshake_timeout_s:
            return ErrorCode.NO_ERROR, "handshake timeout"
        block = self.headers_in_progress
        if block is not None and now - block.started > limits.handshake_timeout_s:
            return ErrorCode.ENHANCE_YOUR_CALM, "header block timeout"
        if self.stalled_since is not None:
            if not self.queued and not self.write_paused:
                self.stalled_since = None
            elif now - self.stalled_since > limits.stall_timeout_s:
                return None, "output stalled"  # the peer reads nothing: a GOAWAY would not leave either
        if self.idle_since is not None and not self.streams and now - self.idle_since > limits.idle_timeout_s:
            return ErrorCode.NO_ERROR, "idle timeout"
        return None


_SELF_DEPENDENT = 0x100  # not a wire flag: marks a HEADERS whose priority names its own stream


class Http2Server:
    """Accepts connections within ``limits`` (in all and per client address) and runs each."""

    def __init__(self, handler: StreamHandler, stream_window: int, limits: Http2Limits | None = None) -> None:
        self.handler = handler
        self.stream_window = min(max(stream_window, DEFAULT_WINDOW), MAX_WINDOW)
        self.limits = limits or Http2Limits()
        self.connections: set[Http2Connection] = set()
        self.per_client: dict[str, int] = {}
        self.queued_output = 0  # DATA bytes waiting for their peers, all connections together
        self._listener: asyncio.Server | None = None

    def admit(self, connection: Http2Connection) -> bool:
        """False past ``max_connections`` in all or ``max_connections_per_client`` from its address."""
        peer = connection.peer
        count = self.per_client.get(peer, 0)
        if len(self.connections) >= self.limits.connection_cap() or count >= self.limits.max_connections_per_client:
            return False
        self.per_client[peer] = count + 1
        self.connections.add(connection)
        return True

    def release(self, connection: Http2Connection) -> None:
        if connection not in self.connections:
            return
        self.connections.discard(connection)
        count = self.per_client.pop(connection.peer, 1) - 1
        if count > 0:
            self.per_client[connection.peer] = count

    async def start(
        self, host: str, port: int, ssl: SSLContext | None = None, handshake_timeout: float | None = None
    ) -> int:
        """Listens; with ``ssl``, over TLS (server/tls.py), a handshake not done in ``handshake_timeout`` s cut."""
        self._listener = await listen(lambda: Http2Connection(self), host, port, ssl, handshake_timeout)
        return int(self._listener.sockets[0].getsockname()[1])

    def stop_accepting(self) -> None:
        if self._listener is not None:
            self._listener.close()
        for connection in list(self.connections):
            connection.go_away()

    def close_all(self) -> None:
        for connection in list(self.connections):
            connection.close()

    async def wait_closed(self) -> None:
        if self._listener is not None:
            await self._listener.wait_closed()


def _deadline_passed(receiver: Receiver) -> None:
    receiver.out_of_time()
