"""HTTP/1.1 for the KServe v2 REST API: asyncio protocol, httptools parser (llhttp, as uvicorn
uses), one handler coroutine per request. A general web framework builds a request object with
parsed URL and multi-dict headers, runs a router, middlewares and a response object through a
writer for every request; on the small requests inference servers answer, that machinery costs
more than the inference. Here a request is a method, a path, a dict of headers and the body, and
an answer is written in one call.

Requests on a connection are answered in order (pipelining included); reading pauses while one
is being handled, so a client cannot queue unbounded work. Limits: request line and each header
8 KiB, 128 headers, the body size (413 from the declared length, before the body is read)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from ssl import SSLContext
from urllib.parse import unquote

import httptools

log = logging.getLogger(__name__)

MAX_LINE = 8190  # aiohttp's and most servers' limit for the request line and each header
MAX_HEADERS = 128
IDLE_TIMEOUT_S = 75.0  # keep-alive connections with no request for this long are closed
SERVER_NAME = b"clipperd"


@dataclass(slots=True)
class HttpRequest:
    method: str
    path: str  # percent-decoded, without the query
    headers: dict[str, str]  # names in lower case; a repeated header's values joined by ", "
    body: bytes
    params: dict[str, str] = field(default_factory=dict)  # the route's {placeholders}
    peer: str = ""  # the client's address (host only); "" when unknown


@dataclass(slots=True)
class HttpResponse:
    status: int = 200
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


class RequestRejected(Exception):
    """A request the connection answers itself (too large, malformed) and then closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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


def encode_response(response: HttpResponse, keep_alive: bool, head: bool = False) -> bytes:
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


class HttpConnection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.pending: deque[tuple[HttpRequest, bool]] = deque()
        self.worker: asyncio.Task[None] | None = None
        self.last_active = time.monotonic()
        self.peer = ""
        self.closing = False
        self.writable = asyncio.Event()  # cleared while the transport's write buffer is full
        self.writable.set()
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.header_list: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.body_size = 0
        self.failure: RequestRejected | None = None

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport (uvloop's is no subclass)
        self.peer = str(address[0]) if isinstance(address := transport.get_extra_info("peername"), tuple) else ""
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.closing = True
        self.pending.clear()
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()  # a client that does not read its answers gets no more work done

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
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
        declared = next((v for n, v in self.header_list if n.lower() == b"content-length"), None)
        limit = self.server.max_body_bytes
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            self._fail(413, f"request body of {int(declared)} bytes is over the {limit}-byte limit")
        expect = next((v for n, v in self.header_list if n.lower() == b"expect"), None)
        if expect is not None and expect.lower() == b"100-continue" and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > self.server.max_body_bytes:
            self._fail(413, f"request body is over the {self.server.max_body_bytes}-byte limit")
        self.body.append(body)

    def on_message_complete(self) -> None:
        request = HttpRequest(
            self.parser.get_method().decode("latin-1"),
            self._path(),
            self._headers(),
            b"".join(self.body) if len(self.body) != 1 else self.body[0],
            peer=self.peer,
        )
        self.pending.append((request, self.parser.should_keep_alive()))
        self._reset()
        if self.worker is None or self.worker.done():
            self.worker = asyncio.get_running_loop().create_task(self._work())
        elif self.transport is not None:
            self.transport.pause_reading()  # answered in order: read more once these are done

    # ---- helpers

    def _fail(self, status: int, message: str) -> None:
        self.failure = RequestRejected(status, message)
        raise self.failure

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
        self.pending.clear()
        if self.transport is not None and not self.transport.is_closing():
            answer = self.server.error(failure.status, failure.message)
            self.transport.write(encode_response(answer, keep_alive=False))
            self.transport.close()
        self.closing = True

    async def _work(self) -> None:
        while self.pending and not self.closing:
            if not self.writable.is_set():
                await self.writable.wait()
                continue
            request, keep_alive = self.pending.popleft()
            response = await self.server.answer(request)
            if self.transport is None or self.transport.is_closing():
                return
            keep_alive = keep_alive and not self.server.stopping
            self.transport.write(encode_response(response, keep_alive, head=request.method == "HEAD"))
            self.last_active = time.monotonic()
            if not keep_alive:
                self.transport.close()
                self.closing = True
                return
        if self.transport is not None and not self.transport.is_closing():
            if not self.writable.is_set():
                await self.writable.wait()
            self.transport.resume_reading()

    def close_if_idle(self, now: float, idle_s: float) -> None:
        busy = self.worker is not None and not self.worker.done()
        if not busy and now - self.last_active > idle_s and self.transport is not None:
            self.transport.close()


class HttpServer:
    """Listens, keeps the connections, and hands complete requests to ``handler``."""

    def __init__(
        self,
        handler: Handler,
        error: Callable[[int, str], HttpResponse],
        max_body_bytes: int,
    ) -> None:
        self.handler = handler
        self.error = error
        self.max_body_bytes = max_body_bytes
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
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            lambda: HttpConnection(self),
            host,
            port,
            reuse_address=True,
            ssl=ssl,
            ssl_handshake_timeout=handshake_timeout if ssl is not None else None,
        )
        self._sweeper = loop.create_task(self._sweep())
        return int(self._listener.sockets[0].getsockname()[1])

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(IDLE_TIMEOUT_S / 5)
            now = time.monotonic()
            for connection in list(self.connections):
                connection.close_if_idle(now, IDLE_TIMEOUT_S)

    async def stop(self, grace_s: float) -> None:
        """No new connections; requests in flight may finish for ``grace_s``; then all close."""
        self.stopping = True
        if self._listener is not None:
            self._listener.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        workers = [c.worker for c in self.connections if c.worker is not None and not c.worker.done()]
        if workers:
            await asyncio.wait(workers, timeout=grace_s)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
        if self._listener is not None:
            await self._listener.wait_closed()
