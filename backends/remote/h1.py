"""A lean HTTP/1.1 client for the remote backend: keep-alive connections to one endpoint, each an
asyncio protocol that parses its answers with httptools. It does what a KServe v2 call needs and
no more (no redirects, cookies, proxies, compression), which makes a call several times cheaper
on the event loop than aiohttp's or grpc.aio's (the latter also hops through its poller thread):
at concurrency 1 that cost is most of the remote hop (docs/backends/remote.md#speed).

Bounds: at most ``limit`` connections (calls beyond wait for one), answers of at most
``max_body`` bytes, header blocks of at most MAX_HEAD_BYTES; a connection that fails, times out
or is told to close is dropped, never reused."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

import httptools

from backends.common.deadlines import Deadlines
from backends.common.slots import Slots

MAX_HEAD_BYTES = 64 * 1024  # status line and headers of one answer


class ProtocolError(Exception):
    """The answer broke HTTP/1.1 or a bound; the connection is dropped."""


class Answer:
    """One answer: its status, headers (names lowercased), body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class _Connection(asyncio.Protocol):
    """One keep-alive connection, one call at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_body: int, deadlines: Deadlines[_Connection]) -> None:
        self._loop = loop
        self._max_body = max_body
        self._deadlines = deadlines  # the pool's: one timer for all its calls
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Answer] | None = None
        self._reset()

    def _reset(self) -> None:
        self._headers: dict[str, str] = {}
        self._chunks: list[bytes] = []
        self._size = 0
        self._head = 0
        self._name = b""

    # -- asyncio ----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP transport (uvloop's is no subclass)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionResetError("the server closed the connection"))

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            bound = error.__context__  # a callback's ProtocolError comes wrapped
            self._fail(bound if isinstance(bound, ProtocolError) else ProtocolError(f"bad HTTP answer: {error}"))

    # -- httptools ------------------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head += len(name) + len(value)
        if self._head > MAX_HEAD_BYTES:
            raise ProtocolError(f"the answer's headers exceed {MAX_HEAD_BYTES} bytes")
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        length = self._headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self._max_body:
            raise ProtocolError(f"an answer of {length} bytes exceeds {self._max_body}")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._max_body:
            raise ProtocolError(f"an answer exceeds {self._max_body} bytes")
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        answer = Answer(self._parser.get_status_code(), self._headers, b"".join(self._chunks))
        if not self._parser.should_keep_alive():
            self.close()
        self._reset()
        waiter = self._end_call()
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

    # -- calls ----------------------------------------------------------------------------------

    def send(self, data: bytes, deadline: float) -> asyncio.Future[Answer]:
        """The answer's future; TimeoutError (and the connection closed) at ``deadline`` (loop
        time), kept by the pool's shared timer: not asyncio.timeout, nor a timer per call."""
        assert self.transport is not None
        assert self._waiter is None, "one call at a time"
        self._waiter = self._loop.create_future()
        self._deadlines.hold(self, deadline)
        self.transport.write(data)
        return self._waiter

    def time_out(self) -> None:
        self._fail(TimeoutError())

    def _end_call(self) -> asyncio.Future[Answer] | None:
        self._deadlines.drop(self)
        waiter, self._waiter = self._waiter, None
        return waiter

    def _fail(self, error: Exception) -> None:
        self.close()
        waiter = self._end_call()
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class H1Pool:
    """Up to ``limit`` keep-alive connections to ``host:port``."""

    def __init__(self, host: str, port: int, limit: int, max_body: int) -> None:
        self._host, self._port = host, port
        self._authority = f"{host}:{port}".encode()
        self._max_body = max_body
        self._slots = Slots(limit)
        self._idle: deque[_Connection] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadlines: Deadlines[_Connection] | None = None

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: Sequence[bytes], within_s: float
    ) -> Answer:
        """One call with the body's parts (joined once, with the head), all of it within
        ``within_s`` (else TimeoutError); OSError when the connection fails, ProtocolError for a
        broken answer. A cancelled or failed call drops its connection."""
        head = [f"{method} {path} HTTP/1.1\r\nHost: ".encode(), self._authority]
        head.append(f"\r\nContent-Length: {sum(len(part) for part in body)}\r\n".encode())
        head.extend(f"{k}: {v}\r\n".encode() for k, v in headers.items())
        head.append(b"\r\n")
        loop = self._loop = self._loop or asyncio.get_running_loop()  # asked once: a system call on 3.11
        deadline = loop.time() + within_s
        if not self._slots.take_now():  # every connection busy: wait for one, within the time
            await self._slots.take(within_s)
        try:
            connection = await self._connection(loop, deadline - loop.time())
            try:
                answer = await connection.send(b"".join([*head, *body]), deadline)
            except BaseException:
                connection.close()
                raise
        finally:
            self._slots.give()
        if not connection.closed:
            self._idle.append(connection)
        return answer

    async def _connection(self, loop: asyncio.AbstractEventLoop, within_s: float) -> _Connection:
        while self._idle:
            connection = self._idle.pop()  # the most recently used: the least likely to be stale
            if not connection.closed:
                return connection
        if self._deadlines is None:
            self._deadlines = Deadlines(loop, _Connection.time_out)
        deadlines = self._deadlines
        connect = loop.create_connection(lambda: _Connection(loop, self._max_body, deadlines), self._host, self._port)
        _, protocol = await asyncio.wait_for(connect, within_s)
        return protocol

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
