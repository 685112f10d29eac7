"""One HTTP/2 stream and the interfaces between the connection and what runs above it (gRPC).

``StreamHandler.open`` gets each new stream with its request headers and returns the stream's
``Receiver``; the receiver gets the stream's DATA and its end, or ``reset`` when the peer
cancels, breaks a rule of the stream, or the connection closes."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from backends.common.http2 import ErrorCode

if TYPE_CHECKING:
    from server.grpc.http2.connection import Http2Connection


class Receiver(Protocol):
    def data(self, payload: bytes, end: bool) -> None: ...

    def reset(self) -> None: ...

    def out_of_time(self) -> None:
        """The deadline it gave the connection's ``deadlines`` has come."""


class StreamHandler(Protocol):
    def open(self, stream: Stream, headers: list[tuple[str, str]], end: bool) -> Receiver: ...


class Stream:
    """One request/response exchange. ``send`` queues bytes of DATA (and, with ``trailers``, the
    closing HEADERS): they leave as far as the peer's windows allow."""

    __slots__ = (
        "closed",
        "connection",
        "drain",
        "gone",
        "id",
        "owed",
        "pending",
        "receiver",
        "recv_window",
        "remote_done",
        "send_window",
        "trailers",
    )  # fmt: skip

    def __init__(self, stream_id: int, connection: Http2Connection) -> None:
        self.id = stream_id
        self.connection = connection
        self.send_window = connection.peer_initial_window
        self.recv_window = connection.server.stream_window  # what we advertised: DATA past it is an error
        self.pending = bytearray()
        self.trailers: bytes | None = None
        self.closed = False  # we sent END_STREAM or RST_STREAM
        self.remote_done = False  # the peer sent END_STREAM (or the stream was reset)
        self.receiver: Receiver | None = None
        self.owed = 0  # bytes consumed and not yet returned to the peer's window
        self.gone = False  # the connection forgot it (both halves closed, or reset)
        self.drain: asyncio.Future[None] | None = None  # a sender waiting for pending to go out

    async def drained(self, below: int) -> None:
        """Until fewer than ``below`` bytes wait for the peer's windows (or the stream is gone):
        a streaming answer's producer waits here, so a slow reader slows it down."""
        while len(self.pending) >= below and not (self.closed or self.gone):
            self.drain = self.connection.loop.create_future()
            await self.drain

    def wake_drain(self) -> None:
        drain, self.drain = self.drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    def send(self, headers: bytes | None, data: bytes, trailers: bytes | None) -> None:
        self.connection.send(self, headers, data, trailers)

    def consumed(self, n: int) -> None:
        self.connection.consumed(self, n)

    def reset(self, code: ErrorCode) -> None:
        self.connection.reset_stream(self, code)
