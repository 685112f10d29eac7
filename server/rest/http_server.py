"""HTTP/1.1 for the KServe v2 REST API: asyncio protocol, httptools parser (llhttp, as uvicorn
uses), one handler coroutine per request. A general web framework builds a request object with
parsed URL and multi-dict headers, runs a router, middlewares and a response object through a
writer for every request; on the small requests inference servers answer, that machinery costs
more than the inference. Here a request is a method, a path, a dict of headers and the body, and
an answer is written in one call.

Requests on a connection are answered in order (pipelining included); reading pauses while one
is being handled, so a client cannot queue unbounded work. Limits: request line and each header
8 KiB, 128 headers, the body size (413 from the declared length, before the body is read); and
those of server/rest/limits.py: head and body timeouts (408), the idle keep-alive timeout,
connections in all and per client, requests and body bytes held server-wide (503)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from ssl import SSLContext
from urllib.parse import unquote

import httptools

from server.rest.limits import RETRY_AFTER_S, Admission, HttpLimits
from server.tls import listen

log = logging.getLogger(__name__)

MAX_LINE = 8190  # aiohttp's and most servers' limit for the request line and each header
MAX_HEADERS = 128
SWEEP_BATCH = 1000  # connections whose timeouts are checked in one go (~1 ms)
_RECEIVING_RECHECK_S = 0.01  # on stop, how often a request still arriving is looked at
SERVER_NAME = b"clipperd"


class BodyBudget:
    """The bytes one request holds of the server's bound on request bodies in memory: its body as
    received, then what is made of it (the inflated body). Given back when it is answered."""

    __slots__ = ("admission", "held")

    def __init__(self, admission: Admission | None) -> None:
        self.admission = admission  # None: not counted (a request made outside a connection)
        self.held = 0

    def take(self, size: int) -> bool:
        if self.admission is not None and not self.admission.take_bytes(size):
            return False
        self.held += size
        return True

    def give_back(self, size: int) -> None:
        size = min(size, self.held)
        self.held -= size
        if self.admission is not None and size:
            self.admission.release(0, size)


@dataclass(slots=True)
class HttpRequest:
    method: str
    path: str  # percent-decoded, without the query
    headers: dict[str, str]  # names in lower case; a repeated header's values joined by ", "
    body: bytes
    params: dict[str, str] = field(default_factory=dict)  # the route's {placeholders}
    peer: str = ""  # the client's address (host only); "" when unknown
    budget: BodyBudget = field(default_factory=lambda: BodyBudget(None))


@dataclass(slots=True)
class HttpResponse:
    status: int = 200
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: a body sent as it comes (chunked), in place of ``body``: each item one chunk. It is
    #: pulled only while the client reads (back-pressure) and closed (``aclose``) when the
    #: client goes away, so what produces it stops
    stream: AsyncGenerator[bytes, None] | None = None


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


class RequestRejected(Exception):
    """A request the connection answers itself (too large, malformed, too slow) and then closes."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


_RETRY = {"Retry-After": str(RETRY_AFTER_S)}


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


_REASONS = {status.value: _reason(status.value) for status in HTTPStatus}
_REASONS[413] = b"Request Entity Too Large"  # the name clients know (newer Pythons say "Content Too Large")


class _Clock:
    """The Date header, formatted once a second."""

    def __init__(self) -> None:
        self._second = 0
        self._value = b""

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second, self._value = now, formatdate(now, usegmt=True).encode()
        return self._value


_CLOCK = _Clock()


def serialize_response(response: HttpResponse, keep_alive: bool, head: bool = False) -> bytes:
    lines = [b"HTTP/1.1 %d %s" % (response.status, _REASONS.get(response.status, b"Unknown"))]
    if response.content_type is not None:
        lines.append(b"Content-Type: " + response.content_type.encode("latin-1"))
    for name, value in response.headers.items():
        lines.append(name.encode("latin-1") + b": " + value.encode("latin-1"))
    lines.append(b"Content-Length: %d" % len(response.body))
    lines.append(b"Date: " + _CLOCK.date())
    lines.append(b"Server: " + SERVER_NAME)
    if not keep_alive:
        lines.append(b"Connection: close")
    lines.append(b"")
    lines.append(b"" if head else response.body)
    return b"\r\n".join(lines)


def serialize_head(response: HttpResponse, keep_alive: bool) -> bytes:
    """The head of an answer whose body is streamed in chunks."""
    lines = [b"HTTP/1.1 %d %s" % (response.status, _REASONS.get(response.status, b"Unknown"))]
    if response.content_type is not None:
        lines.append(b"Content-Type: " + response.content_type.encode("latin-1"))
    for name, value in response.headers.items():
        lines.append(name.encode("latin-1") + b": " + value.encode("latin-1"))
    lines += [b"Transfer-Encoding: chunked", b"Date: " + _CLOCK.date(), b"Server: " + SERVER_NAME]
    if not keep_alive:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


@dataclass(slots=True)
class _Item:
    """A complete request waiting for its answer (it holds a request slot, and its body bytes in
    its budget), or the answer a refused request gets without being handled."""

    request: HttpRequest | HttpResponse
    keep_alive: bool

    def release(self, admission: Admission) -> None:
        if isinstance(self.request, HttpRequest):
            admission.release(1, 0)
            self.request.budget.give_back(self.request.budget.held)


class HttpConnection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.client: str | None = None  # the peer's address, once counted in the server's admission
        self.parser = httptools.HttpRequestParser(self)
        self.pending: deque[_Item] = deque()
        self.handling: _Item | None = None
        self.worker: asyncio.Task[None] | None = None
        self.receiving = False  # between a request's first byte and its last: in flight for a drain
        self.last_active = time.monotonic()  # the connection's start or its last answer
        self.peer = ""  # the client's address (host only); "" when unknown
        self.closing = False
        self.reading = True  # False while the server paused reading (answers in order)
        self.writable = asyncio.Event()  # cleared while the transport's write buffer is full
        self.writable.set()
        self.streaming = False  # an answer's body is being streamed (server-sent events)
        self.slots = 0  # of the message being received: a request slot taken (0 or 1)
        self.budget = BodyBudget(server.admission)  # its body bytes, counted in the server's admission
        self._reset()
        self.head_since: float | None = self.last_active  # a new connection owes its first head

    def _reset(self) -> None:
        """Forgets the message being received, and gives back what it held."""
        if self.slots:
            self.server.admission.release(self.slots, 0)
        self.budget.give_back(self.budget.held)
        self.url = b""
        self.header_list: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.slots = 0
        self.failure: RequestRejected | None = None
        self.refusal: HttpResponse | None = None  # set: the body is dropped and this is the answer
        self.head_since = None  # when the head's first byte came, until the head is complete
        self.body_since: float | None = None  # the body's current rate window began
        self.window_bytes = 0

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport (uvloop's is no subclass)
        peer = transport.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if not self.server.admission.connect(client):
            self._refuse_connection(client)
            return
        self.client = client
        self.peer = client
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.connections.add(self)

    def _refuse_connection(self, client: str) -> None:
        """Over the connection bounds: 503 before any request, and closed (DEBUG log only: a
        flood must not flood the log too)."""
        log.debug("HTTP connection from %s refused: connection limit reached", client[:64])
        self.closing = True
        self.head_since = None
        if self.transport is not None:
            answer = self.server.error(503, "too many connections: retry later")
            answer.headers.update(_RETRY)
            self.transport.write(serialize_response(answer, keep_alive=False))
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self.client is not None:
            self.server.admission.disconnect(self.client)
            self.client = None
        self.closing = True
        self.receiving = False
        self._drop_pending()
        self._reset()  # releases what the message being received held
        self.writable.set()
        if self.streaming and self.worker is not None:
            self.worker.cancel()  # the streamed answer's producer (a model) stops with it

    def pause_writing(self) -> None:
        self.writable.clear()  # a client that does not read its answers gets no more work done

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            failure = self.failure or RequestRejected(400, "malformed request")
            self._reject(failure)
        except httptools.HttpParserUpgrade:
            self._reject(RequestRejected(400, "protocol upgrades are not supported"))
        except httptools.HttpParserError as error:
            self._reject(RequestRejected(400, f"malformed HTTP request: {str(error)[:100]}"))

    # ---- httptools callbacks

    def on_message_begin(self) -> None:
        self._reset()
        self.receiving = True
        self.head_since = time.monotonic()

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > MAX_LINE:
            self._fail(414, f"request target longer than {MAX_LINE} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > MAX_LINE:
            self._fail(431, f"a header longer than {MAX_LINE} bytes")
        self.header_list.append((name, value))
        if len(self.header_list) > MAX_HEADERS:
            self._fail(431, f"more than {MAX_HEADERS} headers")

    def on_headers_complete(self) -> None:
        self.head_since = None
        self.body_since = time.monotonic()  # cleared when the message completes (at once, without a body)
        declared = next((v for n, v in self.header_list if n.lower() == b"content-length"), None)
        limit = self.server.max_body_bytes
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            self._fail(413, f"request body of {int(declared)} bytes is over the {limit}-byte limit")
        expect = next((v for n, v in self.header_list if n.lower() == b"expect"), None)
        continues = expect is not None and expect.lower() == b"100-continue"
        if self.server.admission.admit_request():
            self.slots = 1
        else:
            self._overloaded("the server holds as many requests as it may")
            if continues:  # the client waits for our word before sending the body: refuse now
                self._fail(503, "the server is overloaded: retry later", _RETRY)
        if continues and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.window_bytes += len(body)
        if self.refusal is not None:
            return  # refused: read to its end (so the connection stays usable) and dropped
        if self.budget.held + len(body) > self.server.max_body_bytes:
            self._fail(413, f"request body is over the {self.server.max_body_bytes}-byte limit")
        if not self.budget.take(len(body)):
            self._overloaded("request bodies held by the server are at their limit")
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.receiving = False
        if self.refusal is not None:
            item = _Item(self.refusal, self.parser.should_keep_alive())
        else:
            request = HttpRequest(
                self.parser.get_method().decode("latin-1"),
                self._path(),
                self._headers(),
                b"".join(self.body) if len(self.body) != 1 else self.body[0],
                budget=self.budget,
                peer=self.peer,
            )
            item = _Item(request, self.parser.should_keep_alive())
            self.slots, self.budget = 0, BodyBudget(self.server.admission)  # the item holds them now
        self.pending.append(item)
        self._reset()
        if self.worker is None or self.worker.done():
            self.worker = asyncio.get_running_loop().create_task(self._work())
        elif self.transport is not None:
            self.transport.pause_reading()  # answered in order: read more once these are done
            self.reading = False

    # ---- helpers

    def _fail(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self.failure = RequestRejected(status, message, headers)
        raise self.failure

    def _overloaded(self, why: str) -> None:
        """Answers this request 503 without handling it; what it held is given back at once."""
        log.debug("HTTP request refused: %s", why)
        if self.slots:
            self.server.admission.release(self.slots, 0)
            self.slots = 0
        self.budget.give_back(self.budget.held)
        self.body = []
        answer = self.server.error(503, "the server is overloaded: retry later")
        answer.headers.update(_RETRY)
        self.refusal = answer

    def _drop_pending(self) -> None:
        for item in self.pending:
            item.release(self.server.admission)
        self.pending.clear()

    def _path(self) -> str:
        raw = self.url.split(b"?", 1)[0].split(b"#", 1)[0]
        return unquote(raw.decode("latin-1"), errors="replace") if b"%" in raw else raw.decode("latin-1")

    def _headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name, value in self.header_list:
            key, text = name.decode("latin-1").lower(), value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        return headers

    def _reject(self, failure: RequestRejected) -> None:
        """Answers a request the parser or a limit refused, and closes: the stream cannot be
        trusted past it."""
        log.debug("rejected HTTP request: %s", failure.message)
        self._drop_pending()
        if self.transport is not None and not self.transport.is_closing():
            answer = self.server.error(failure.status, failure.message)
            answer.headers.update(failure.headers)
            self.transport.write(serialize_response(answer, keep_alive=False))
            self.transport.close()
        self.closing = True
        self.receiving = False
        self.head_since = self.body_since = None

    async def _work(self) -> None:
        while self.pending and not self.closing:
            if not self.writable.is_set():
                await self.writable.wait()
                continue
            item = self.handling = self.pending.popleft()
            request = item.request
            try:
                response = request if isinstance(request, HttpResponse) else await self.server.answer(request)
            finally:
                self.handling = None
                item.release(self.server.admission)
            if self.transport is None or self.transport.is_closing():
                return
            keep_alive = item.keep_alive and not self.server.stopping
            head = isinstance(request, HttpRequest) and request.method == "HEAD"
            if response.stream is not None:
                await self._stream(response, response.stream, keep_alive)
                if self.transport is None or self.transport.is_closing():
                    return
            else:
                self.transport.write(serialize_response(response, keep_alive, head=head))
            self.last_active = time.monotonic()
            if not keep_alive:
                self.transport.close()
                self.closing = True
                return
        if self.transport is not None and not self.transport.is_closing():
            if not self.writable.is_set():
                await self.writable.wait()
            self._resume()

    async def _stream(self, response: HttpResponse, chunks: AsyncGenerator[bytes, None], keep_alive: bool) -> None:
        """A chunked body, each chunk written once the client has read enough of the ones before."""
        assert self.transport is not None
        self.streaming = True
        try:
            self.transport.write(serialize_head(response, keep_alive))
            async for chunk in chunks:
                if not self.writable.is_set():
                    await self.writable.wait()
                if self.transport.is_closing():
                    return
                if chunk:
                    self.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                self.last_active = time.monotonic()
            self.transport.write(b"0\r\n\r\n")
        finally:
            self.streaming = False
            await chunks.aclose()

    def _resume(self) -> None:
        assert self.transport is not None
        if not self.reading:
            # the client could not send while we did not read: its head or body clock restarts
            now = time.monotonic()
            self.head_since = now if self.head_since is not None else None
            if self.body_since is not None:
                self.body_since, self.window_bytes = now, 0
            self.reading = True
        self.transport.resume_reading()

    # ---- timeouts (the server's sweeper calls this every HttpLimits.sweep_interval_s)

    def sweep(self, now: float, limits: HttpLimits) -> None:
        if self.transport is None or self.closing:
            return
        if not self.reading:
            return  # the server holds this connection's requests: none of its clocks run
        if self.head_since is not None:
            if now - self.head_since > limits.header_timeout_s:
                why = f"the request head did not arrive within {limits.header_timeout_s:g} s"
                self._reject(RequestRejected(408, why))
        elif self.body_since is not None:
            if now - self.body_since >= limits.body_timeout_s:
                if self.window_bytes < limits.body_bytes_per_window():
                    why = f"the request body came slower than {limits.body_min_rate} bytes/s"
                    self._reject(RequestRejected(408, why))
                else:
                    self.body_since, self.window_bytes = now, 0
        elif self.streaming:
            return  # an answer is being sent: the connection is not idle
        elif not self.pending and self.handling is None and now - self.last_active > limits.idle_timeout_s:
            log.debug("closing an HTTP connection idle for %.0f s", now - self.last_active)
            self.closing = True
            self.transport.close()


class HttpServer:
    """Listens, keeps the connections, and hands complete requests to ``handler``."""

    def __init__(
        self,
        handler: Handler,
        error: Callable[[int, str], HttpResponse],
        max_body_bytes: int,
        limits: HttpLimits | None = None,
    ) -> None:
        self.handler = handler
        self.error = error
        self.max_body_bytes = max_body_bytes
        self.limits = limits or HttpLimits()
        self.admission = Admission(self.limits)
        self.connections: set[HttpConnection] = set()
        self.stopping = False
        self._listener: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def answer(self, request: HttpRequest) -> HttpResponse:
        try:
            return await self.handler(request)
        except Exception:
            log.exception("internal error in %s %s", request.method, request.path[:200])
            return self.error(500, "internal error")

    async def start(
        self, host: str, port: int, ssl: SSLContext | None = None, handshake_timeout: float | None = None
    ) -> int:
        """Listens; with ``ssl``, over TLS (server/tls.py), a handshake not done in ``handshake_timeout`` s cut."""
        self._listener = await listen(lambda: HttpConnection(self), host, port, ssl, handshake_timeout)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        return int(self._listener.sockets[0].getsockname()[1])

    async def _sweep(self) -> None:
        interval = self.limits.sweep_interval_s()
        while True:
            await asyncio.sleep(interval)
            connections = list(self.connections)
            for start in range(0, len(connections), SWEEP_BATCH):
                if start:
                    await asyncio.sleep(0)  # thousands of connections: the others are served between batches
                now = time.monotonic()
                for connection in connections[start : start + SWEEP_BATCH]:
                    connection.sweep(now, self.limits)

    async def stop(self, grace_s: float) -> None:
        """No new connections; requests in flight may finish for ``grace_s``; then all close."""
        self.stopping = True
        if self._listener is not None:
            self._listener.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self._drain(grace_s)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
        if self._listener is not None:
            await self._listener.wait_closed()

    async def _drain(self, grace_s: float) -> None:
        """Until no request is being received or answered, or ``grace_s`` runs out. A request is
        in flight from its first byte: one whose body is still arriving has no worker yet, so
        it is looked at again every few milliseconds until it has one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while (left := deadline - loop.time()) > 0:
            busy = [c for c in self.connections if c.receiving or (c.worker is not None and not c.worker.done())]
            if not busy:
                return
            workers = [c.worker for c in busy if c.worker is not None and not c.worker.done()]
            if len(workers) == len(busy) and not any(c.receiving for c in busy):
                await asyncio.wait(workers, timeout=left)
            else:
                await asyncio.sleep(min(left, _RECEIVING_RECHECK_S))
