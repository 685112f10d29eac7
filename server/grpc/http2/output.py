"""The sending half of an HTTP/2 connection and its streams' bookkeeping: answers leave within
the peer's windows (the rest waits, bounded by ``max_queued_output``), frames of one turn of the
event loop leave in one write, the receive windows go back to the peer as receivers consume, and
streams are forgotten once both halves are closed. ``Http2Connection`` (the reading half) is
built on it."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from backends.common.http2 import ErrorCode, Flag, FrameType, frame, goaway, rst_stream, window_update
from server.grpc.http2.limits import (
    ANSWER_CREDIT,
    CLOSE_GRACE_S,
    CONNECTION_WINDOW,
    MAX_STREAMS,
    Http2Limits,
    RateBudget,
)
from server.grpc.http2.stream import Stream

if TYPE_CHECKING:
    from server.grpc.http2.connection import Http2Server

log = logging.getLogger("server.grpc.http2.connection")


class Http2Output(asyncio.Protocol):
    """State both halves share; ``Http2Connection.__init__`` sets it."""

    server: Http2Server
    limits: Http2Limits
    control: RateBudget
    transport: asyncio.Transport | None
    loop: asyncio.AbstractEventLoop
    outgoing: list[bytes]
    streams: dict[int, Stream]
    early_closed: dict[int, None]
    last_stream_id: int
    peer_max_frame: int
    send_window: int
    received: int
    credit: int
    queued: int
    blocked: dict[int, Stream]
    idle_since: float | None
    stalled_since: float | None
    write_paused: bool
    going_away: bool
    stopping: bool
    closed: bool
    lost: bool

    def _credit(self, n: int) -> None:
        """``n`` received bytes are consumed or dropped: the peer gets them back, half a window at a
        time. The connection's window is returned as receivers consume, so it bounds what waits
        unconsumed on all its streams (RFC 9113 §6.9; CVE-2019-9517 class)."""
        self.credit += n
        if self.credit >= CONNECTION_WINDOW // 2:
            self._write(window_update(0, self.credit))
            self.received -= self.credit
            self.credit = 0

    # --- sending ------------------------------------------------------------------------------

    def send(self, stream: Stream, headers: bytes | None, data: bytes, trailers: bytes | None) -> None:
        """Header block (HEADERS), message bytes (DATA) and the closing block (HEADERS with
        END_STREAM), each optional; DATA beyond the windows waits; trailers wait for it. Past
        ``max_queued_output`` bytes waiting for a peer that does not read, the stream is reset."""
        if stream.closed or self.closed:
            return
        if data and self.queued and self._over_output_bound(len(data)):
            self.reset_stream(stream, ErrorCode.ENHANCE_YOUR_CALM)
            if stream.receiver is not None:  # not from inside the sender's own call
                self.loop.call_soon(stream.receiver.reset)
            return
        out: list[bytes] = []
        if headers is not None:
            out.append(self._header_frames(stream.id, headers, end=False))
        if data:
            stream.pending += data
            self._queue(len(data))
            self.control.tokens += ANSWER_CREDIT  # the peer acknowledges it with a WINDOW_UPDATE or two
        if trailers is not None:
            stream.trailers = trailers
        self._flush(stream, out)

    def _over_output_bound(self, more: int) -> bool:
        """One answer always fits; more wait only up to the bound, of the connection and of all
        connections together (CVE-2019-9517 class)."""
        transport = self.transport
        buffered = transport.get_write_buffer_size() if transport is not None else 0
        if self.queued + buffered + more > self.limits.max_queued_output:
            return True
        return self.server.queued_output + more > self.limits.max_queued_output_total

    def _queue(self, n: int) -> None:
        """``n`` bytes more (or fewer) wait for the peer, counted for the server too."""
        self.queued += n
        self.server.queued_output += n

    def _flush(self, stream: Stream, out: list[bytes] | None = None) -> None:
        out = [] if out is None else out
        pending = stream.pending
        sent = 0
        while pending and not self.write_paused:  # past the transport's high water, DATA waits here
            n = min(len(pending), stream.send_window, self.send_window, self.peer_max_frame)
            if n <= 0:
                break
            out.append(frame(FrameType.DATA, 0, stream.id, bytes(pending[:n])))
            del pending[:n]
            stream.send_window -= n
            self.send_window -= n
            sent += n
        if sent:
            self._queue(-sent)
            if not self.write_paused:
                self.stalled_since = None
        if pending:
            self._waiting(stream)
        elif stream.trailers is not None:
            self._close_with_trailers(stream, out)
        if out:
            self._write(b"".join(out), stream.closed)
        if stream.drain is not None:
            stream.wake_drain()  # it looks at what is still pending itself
        if stream.closed:
            self._forget_if_done(stream)

    def _waiting(self, stream: Stream) -> None:
        """``stream`` has DATA the windows (or a full transport) do not let out: the stall clock
        starts."""
        if self.send_window <= 0 or self.write_paused:
            self.blocked[stream.id] = stream
        if self.stalled_since is None:
            self.stalled_since = self.loop.time()

    def _close_with_trailers(self, stream: Stream, out: list[bytes]) -> None:
        assert stream.trailers is not None
        out.append(self._header_frames(stream.id, stream.trailers, end=True))
        stream.trailers = None
        stream.closed = True
        if not stream.remote_done:  # answered before the request ended: the rest is not wanted
            out.append(rst_stream(stream.id, ErrorCode.NO_ERROR))
            stream.remote_done = True
            self._remember_early(stream.id)

    def _flush_blocked(self) -> None:
        for stream in list(self.blocked.values()):
            if self.send_window <= 0 or self.write_paused:
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
        """Returns ``n`` received bytes of ``stream`` to the peer's windows, once half of one is used."""
        if stream.gone:
            return  # what it held went back to the connection when it ended
        self.credit += n
        if self.credit >= CONNECTION_WINDOW // 2:
            self._credit(0)
        stream.owed += n
        if stream.owed >= self.server.stream_window // 2 and not stream.remote_done:
            self._write(window_update(stream.id, stream.owed))
            stream.recv_window += stream.owed
            stream.owed = 0

    def reset_stream(self, stream: Stream, code: ErrorCode) -> None:
        if not stream.closed:
            stream.closed = True
            self._write(rst_stream(stream.id, code))
        if not stream.remote_done:
            stream.remote_done = True
            self._remember_early(stream.id)
        self._drop(stream)

    def _drop(self, stream: Stream) -> None:
        """The stream leaves the connection with whatever it still had to send."""
        if stream.pending:
            self._queue(-len(stream.pending))
            stream.pending = bytearray()
        stream.wake_drain()
        self._leave(stream)

    def _remember_early(self, stream_id: int) -> None:
        """Streams we ended before the peer did, so that its frames in flight are dropped, not
        taken for frames on a closed stream; the oldest are forgotten past MAX_STREAMS."""
        early = self.early_closed
        early[stream_id] = None
        if len(early) > MAX_STREAMS:
            del early[next(iter(early))]

    def _forget_if_done(self, stream: Stream) -> None:
        """A stream is forgotten once both halves are closed; a graceful stop ends the
        connection with its last stream."""
        if stream.closed and stream.remote_done:
            self._leave(stream)

    def _leave(self, stream: Stream) -> None:
        """The stream is forgotten; bytes it received and never consumed go back to the connection."""
        if stream.gone:
            return
        stream.gone = True
        self.streams.pop(stream.id, None)
        held = self.server.stream_window - stream.recv_window - stream.owed
        if held:
            self._credit(held)
        if self.blocked:
            self.blocked.pop(stream.id, None)
        if not self.streams:
            self.idle_since = self.loop.time()  # not self.now: the last read may be long past
            if self.stopping or self.going_away:
                self.close()

    def _write(self, data: bytes, last: bool = False) -> None:
        """Frames written in one turn of the event loop leave in one send: a batch's answers to a
        client that multiplexes its calls on one connection cost one system call, not one each.
        A stream's ``last`` frames with no other stream open (nothing could join them) leave now,
        a turn of the loop sooner."""
        transport = self.transport
        if transport is None or self.closed:
            return
        if last and not self.outgoing and len(self.streams) <= 1 and not transport.is_closing():
            transport.write(data)
            return
        self.outgoing.append(data)
        if len(self.outgoing) == 1:
            self.loop.call_soon(self._send_outgoing)

    def _send_outgoing(self) -> None:
        if self.outgoing and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.outgoing))
        self.outgoing.clear()

    # --- ending -------------------------------------------------------------------------------

    def fail(self, code: ErrorCode, message: str) -> None:
        log.debug("HTTP/2 connection error %s: %s", code.name, message)
        self._write(goaway(self.last_stream_id, code, message))
        self.close()

    def close(self) -> None:
        """Sends what is queued, then closes; a peer that does not read it is cut off after
        CLOSE_GRACE_S (a close waits for the buffer to drain)."""
        transport = self.transport
        if transport is not None and not self.closed:
            self._send_outgoing()
            transport.close()
            if transport.get_write_buffer_size():
                self.loop.call_later(CLOSE_GRACE_S, self.abort)
        self.closed = True

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None and not self.lost:
            self.transport.abort()

    def go_away(self) -> None:
        """Graceful: no new streams; the open ones may finish."""
        if not self.stopping:
            self.going_away = self.stopping = True
            self._write(goaway(self.last_stream_id, ErrorCode.NO_ERROR))
        if not self.streams:
            self.close()
