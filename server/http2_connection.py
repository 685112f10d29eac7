"""An HTTP/2 server connection (RFC 9113) as an asyncio protocol: frames in, streams out.

Only what a gRPC server needs: no server push, no priorities (PRIORITY is read and ignored), no
HTTP/1.1 upgrade (clients speak HTTP/2 from the first byte, as gRPC clients do). Each stream is
handed to ``StreamHandler.open`` with its request headers; what it receives goes to the
``Receiver`` that returns, and it answers through ``Stream.send``. Flow control both ways: the
peer's windows bound what is sent (the rest waits for its WINDOW_UPDATE), and the receive
windows are topped up as data arrives (``Stream.consumed`` lets a receiver hold them back)."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from ssl import SSLContext
from typing import Protocol, cast

from server.http2_frames import (
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

log = logging.getLogger(__name__)

MAX_FRAME = 1 << 20  # the largest frame we accept (advertised): big tensors in few frames
MAX_HEADER_BLOCK = 64 * 1024  # HEADERS + CONTINUATION of one block, before decoding
MAX_HEADER_LIST = 16 * 1024  # decoded, as grpc's default
MAX_STREAMS = 4096
CONNECTION_WINDOW = 64 * 1024 * 1024


class Receiver(Protocol):
    def data(self, payload: bytes, end: bool) -> None: ...

    def reset(self) -> None: ...


class StreamHandler(Protocol):
    def open(self, stream: Stream, headers: list[tuple[str, str]], end: bool) -> Receiver: ...


class Stream:
    """One request/response exchange. ``send`` queues bytes of DATA (and, with ``trailers``, the
    closing HEADERS): they leave as far as the peer's windows allow."""

    __slots__ = ("closed", "connection", "id", "owed", "pending", "receiver", "remote_done", "send_window", "trailers")

    def __init__(self, stream_id: int, connection: Http2Connection) -> None:
        self.id = stream_id
        self.connection = connection
        self.send_window = connection.peer_initial_window
        self.pending = bytearray()
        self.trailers: bytes | None = None
        self.closed = False  # we sent END_STREAM or RST_STREAM
        self.remote_done = False  # the peer sent END_STREAM
        self.receiver: Receiver | None = None
        self.owed = 0  # bytes consumed and not yet returned to the peer's window

    def send(self, headers: bytes | None, data: bytes, trailers: bytes | None) -> None:
        self.connection.send(self, headers, data, trailers)

    def consumed(self, n: int) -> None:
        self.connection.consumed(self, n)

    def reset(self, code: ErrorCode) -> None:
        self.connection.reset_stream(self, code)


class Http2Connection(asyncio.Protocol):
    def __init__(self, server: Http2Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.outgoing: list[bytes] = []  # frames to send at the end of this turn of the loop
        self.preface_seen = False
        self.streams: dict[int, Stream] = {}
        self.last_stream_id = 0
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = DEFAULT_FRAME
        self.send_window = DEFAULT_WINDOW
        self.received = 0  # connection-level bytes not yet returned to the peer
        self.blocked: dict[int, Stream] = {}  # streams waiting for the connection's window
        self.headers_in_progress: tuple[int, int, bytearray] | None = None
        self.decoder = HeaderDecoder(MAX_HEADER_LIST)
        self.going_away = False  # no new streams (either side said GOAWAY)
        self.stopping = False  # we said GOAWAY: close when the last stream ends
        self.closed = False
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
        self.server.connections.add(self)
        ours = {
            Setting.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
            Setting.INITIAL_WINDOW_SIZE: self.server.stream_window,
            Setting.MAX_FRAME_SIZE: MAX_FRAME,
            Setting.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
        }
        self.transport.write(settings_frame(ours) + window_update(0, CONNECTION_WINDOW - DEFAULT_WINDOW))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            if stream.receiver is not None:
                stream.receiver.reset()

    def pause_writing(self) -> None:
        # a client that does not read its answers gets no new requests read either
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
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
        try:
            while end - position >= 9 and not self.closed:
                length = (buffer[position] << 16) | (buffer[position + 1] << 8) | buffer[position + 2]
                if length > MAX_FRAME:
                    raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, f"frame of {length} bytes")
                if end - position - 9 < length:
                    break
                kind, flags = buffer[position + 3], buffer[position + 4]
                stream_id = int.from_bytes(buffer[position + 5 : position + 9], "big") & 0x7FFFFFFF
                payload = bytes(buffer[position + 9 : position + 9 + length])
                position += 9 + length
                if self.headers_in_progress is not None and kind != FrameType.CONTINUATION:
                    raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "a header block was interrupted")
                handler = self._dispatch.get(kind)
                if handler is not None:  # unknown frame types are ignored (RFC 9113 5.5)
                    handler(flags, stream_id, payload)
        finally:
            del buffer[:position]

    # --- frames -------------------------------------------------------------------------------

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        self.received += len(payload)
        if self.received >= CONNECTION_WINDOW // 2:
            self._write(window_update(0, self.received))
            self.received = 0
        data = strip_padding(flags, payload)
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_done:
            if stream_id > self.last_stream_id:
                raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            return  # a stream we already closed: frames still in flight are dropped
        end = bool(flags & Flag.END_STREAM)
        if len(payload) > len(data):
            self.consumed(stream, len(payload) - len(data))
        if end:
            stream.remote_done = True
        if stream.receiver is not None:
            stream.receiver.data(data, end)
        if end:
            self._forget_if_done(stream)

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "HEADERS on stream 0")
        payload = strip_padding(flags, payload)
        if flags & Flag.PRIORITY:
            payload = payload[5:]
        if flags & Flag.END_HEADERS:
            self._headers_complete(stream_id, flags, payload)
        else:
            self.headers_in_progress = (stream_id, flags, bytearray(payload))

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        progress = self.headers_in_progress
        if progress is None or progress[0] != stream_id:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "CONTINUATION without a header block")
        progress[2].extend(payload)
        if len(progress[2]) > MAX_HEADER_BLOCK:
            raise ConnectionError_(ErrorCode.ENHANCE_YOUR_CALM, "header block too large")
        if flags & Flag.END_HEADERS:
            self.headers_in_progress = None
            self._headers_complete(stream_id, progress[1], bytes(progress[2]))

    def _headers_complete(self, stream_id: int, flags: int, block: bytes) -> None:
        headers = self.decoder.decode(block)  # always: the table must stay in step
        end = bool(flags & Flag.END_STREAM)
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers from the client end its half of the stream
            if not end:
                raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "a second HEADERS without END_STREAM")
            stream.remote_done = True
            if stream.receiver is not None:
                stream.receiver.data(b"", True)
            self._forget_if_done(stream)
            return
        if stream_id % 2 == 0 or stream_id <= self.last_stream_id:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, f"HEADERS on stream {stream_id}: not a new client stream")
        self.last_stream_id = stream_id
        if self.going_away or len(self.streams) >= MAX_STREAMS:
            self._write(rst_stream(stream_id, ErrorCode.REFUSED_STREAM))
            return
        stream = Stream(stream_id, self)
        stream.remote_done = end
        self.streams[stream_id] = stream
        stream.receiver = self.server.handler.open(stream, headers, end)
        self._forget_if_done(stream)

    def _on_priority(self, flags: int, stream_id: int, payload: bytes) -> None:
        if len(payload) != 5:
            raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "PRIORITY of the wrong size")

    def _on_rst_stream(self, flags: int, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM of the wrong size")
        if stream_id == 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        stream = self.streams.pop(stream_id, None)
        self.blocked.pop(stream_id, None)
        if stream is not None:
            stream.closed = True
            if stream.receiver is not None:
                stream.receiver.reset()

    def _on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & Flag.ACK:
            if payload:
                raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS of the wrong size")
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            self._apply_setting(key, value)
        self._write(frame(FrameType.SETTINGS, Flag.ACK, 0))

    def _apply_setting(self, key: int, value: int) -> None:
        if key == Setting.INITIAL_WINDOW_SIZE:
            if value > MAX_WINDOW:
                raise ConnectionError_(ErrorCode.FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE too large")
            delta, self.peer_initial_window = value - self.peer_initial_window, value
            for stream in self.streams.values():
                stream.send_window += delta
            if delta > 0:
                self._flush_blocked()
        elif key == Setting.MAX_FRAME_SIZE:
            if not DEFAULT_FRAME <= value < 1 << 24:
                raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range")
            self.peer_max_frame = value
        elif key == Setting.ENABLE_PUSH and value > 1:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "ENABLE_PUSH must be 0 or 1")
        # HEADER_TABLE_SIZE: our encoder uses no dynamic table; the rest do not bind a server

    def _on_push_promise(self, flags: int, stream_id: int, payload: bytes) -> None:
        raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "clients cannot push")

    def _on_ping(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "PING of the wrong size")
        if not flags & Flag.ACK:
            self._write(frame(FrameType.PING, Flag.ACK, 0, payload))

    def _on_goaway(self, flags: int, stream_id: int, payload: bytes) -> None:
        self.going_away = True  # the client opens no more streams; those open finish

    def _on_window_update(self, flags: int, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong size")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise ConnectionError_(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise ConnectionError_(ErrorCode.FLOW_CONTROL_ERROR, "connection window overflow")
            self._flush_blocked()
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if increment == 0 or stream.send_window + increment > MAX_WINDOW:
            self.reset_stream(stream, ErrorCode.FLOW_CONTROL_ERROR)
            return
        stream.send_window += increment
        self._flush(stream)

    # --- sending ------------------------------------------------------------------------------

    def send(self, stream: Stream, headers: bytes | None, data: bytes, trailers: bytes | None) -> None:
        """Header block (HEADERS), message bytes (DATA) and the closing block (HEADERS with
        END_STREAM), each optional; DATA beyond the windows waits; trailers wait for it."""
        if stream.closed or self.closed:
            return
        out: list[bytes] = []
        if headers is not None:
            out.append(self._header_frames(stream.id, headers, end=False))
        if data:
            stream.pending += data
        if trailers is not None:
            stream.trailers = trailers
        self._flush(stream, out)

    def _flush(self, stream: Stream, out: list[bytes] | None = None) -> None:
        out = [] if out is None else out
        pending = stream.pending
        while pending:
            n = min(len(pending), stream.send_window, self.send_window, self.peer_max_frame)
            if n <= 0:
                break
            out.append(frame(FrameType.DATA, 0, stream.id, bytes(pending[:n])))
            del pending[:n]
            stream.send_window -= n
            self.send_window -= n
        if pending:
            if self.send_window <= 0:
                self.blocked[stream.id] = stream
        elif stream.trailers is not None:
            out.append(self._header_frames(stream.id, stream.trailers, end=True))
            stream.trailers = None
            stream.closed = True
            if not stream.remote_done:  # answered before the request ended: the rest is not wanted
                out.append(rst_stream(stream.id, ErrorCode.NO_ERROR))
                stream.remote_done = True
        if out:
            self._write(b"".join(out))
        if stream.closed:
            self._forget_if_done(stream)

    def _flush_blocked(self) -> None:
        for stream in list(self.blocked.values()):
            if self.send_window <= 0:
                return
            del self.blocked[stream.id]
            self._flush(stream)

    def _header_frames(self, stream_id: int, block: bytes, end: bool) -> bytes:
        end_flag = Flag.END_STREAM if end else 0
        size = self.peer_max_frame
        if len(block) <= size:
            return frame(FrameType.HEADERS, end_flag | Flag.END_HEADERS, stream_id, block)
        parts = [block[i : i + size] for i in range(0, len(block), size)]
        frames = [frame(FrameType.HEADERS, end_flag, stream_id, parts[0])]
        frames += [frame(FrameType.CONTINUATION, 0, stream_id, p) for p in parts[1:-1]]
        frames.append(frame(FrameType.CONTINUATION, Flag.END_HEADERS, stream_id, parts[-1]))
        return b"".join(frames)

    def consumed(self, stream: Stream, n: int) -> None:
        """Returns ``n`` received bytes of ``stream`` to the peer's window, once half of it is used."""
        stream.owed += n
        if stream.owed >= self.server.stream_window // 2 and not stream.remote_done:
            self._write(window_update(stream.id, stream.owed))
            stream.owed = 0

    def reset_stream(self, stream: Stream, code: ErrorCode) -> None:
        if not stream.closed:
            stream.closed = True
            self._write(rst_stream(stream.id, code))
        self.streams.pop(stream.id, None)
        self.blocked.pop(stream.id, None)

    def _forget_if_done(self, stream: Stream) -> None:
        """A stream is forgotten once both halves are closed; a graceful stop ends the
        connection with its last stream."""
        if stream.closed and stream.remote_done:
            self.streams.pop(stream.id, None)
            self.blocked.pop(stream.id, None)
            if self.stopping and not self.streams:
                self.close()

    def _write(self, data: bytes) -> None:
        """Frames written in one turn of the event loop leave in one send: a batch's answers to a
        client that multiplexes its calls on one connection cost one system call, not one each."""
        if self.transport is None or self.closed:
            return
        self.outgoing.append(data)
        if len(self.outgoing) == 1:
            asyncio.get_running_loop().call_soon(self._send_outgoing)

    def _send_outgoing(self) -> None:
        if self.outgoing and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.outgoing))
        self.outgoing.clear()

    def fail(self, code: ErrorCode, message: str) -> None:
        log.debug("HTTP/2 connection error %s: %s", code.name, message)
        self._write(goaway(self.last_stream_id, code, message))
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self._send_outgoing()
            self.transport.close()
        self.closed = True

    def go_away(self) -> None:
        """Graceful: no new streams; the open ones may finish."""
        if not self.stopping:
            self.going_away = self.stopping = True
            self._write(goaway(self.last_stream_id, ErrorCode.NO_ERROR))
        if not self.streams:
            self.close()


class Http2Server:
    def __init__(self, handler: StreamHandler, stream_window: int) -> None:
        self.handler = handler
        self.stream_window = min(max(stream_window, DEFAULT_WINDOW), MAX_WINDOW)
        self.connections: set[Http2Connection] = set()
        self._listener: asyncio.Server | None = None

    async def start(
        self, host: str, port: int, ssl: SSLContext | None = None, handshake_timeout: float | None = None
    ) -> int:
        """Listens; with ``ssl``, over TLS (server/tls.py), a handshake not done in ``handshake_timeout`` s cut."""
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            lambda: Http2Connection(self),
            host,
            port,
            reuse_address=True,
            ssl=ssl,
            ssl_handshake_timeout=handshake_timeout if ssl is not None else None,
        )
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
