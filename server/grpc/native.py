"""gRPC over the project's own HTTP/2 connection: the KServe v2 service without grpc.aio.

grpc.aio spends about 250 µs of CPU per unary call on the event loop (its C core's completion
queue, the Cython bridge, a coroutine and a call object per RPC); on a 2-core machine that, not
the model, caps throughput. This front end parses the frames itself and runs the same handlers
(``server.grpc.service.method_handlers``: the same messages, statuses and error texts), at a
fraction of that cost. What it speaks of gRPC (https://github.com/grpc/grpc/blob/master/doc/
PROTOCOL-HTTP2.md): unary and bidirectional-streaming calls, length-prefixed messages,
``grpc-timeout`` deadlines, cancellation by RST_STREAM, gzip/deflate request messages,
Trailers-Only error answers, custom metadata in ``invocation_metadata``, TLS when given a
context (server/tls.py). Not spoken: compressed answers."""

from __future__ import annotations

import asyncio
from ssl import SSLContext
from typing import Any

import grpc

from backends.common.http2 import literal_indexed_name
from server.grpc.calls import NO_METHOD, GrpcCall, GrpcMethod
from server.grpc.http2.connection import Http2Server, Stream
from server.grpc.inflate import Inflater
from server.grpc.limits import Admission, CallLimits

_UNIT_S = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_RECEIVING_RECHECK_S = 0.01  # on stop, how often a call still receiving its message is looked at


def http_error(status: int) -> bytes:
    """An answer for a request that is not gRPC at all (wrong method or content type)."""
    return literal_indexed_name(8, str(status).encode())


class GrpcServer:
    """Routes each new HTTP/2 stream to the handler of its ``:path`` (/service/method)."""

    def __init__(self, services: dict[str, dict[str, Any]], limits: CallLimits, stream_window: int) -> None:
        self.routes = {
            f"/{service}/{name}": GrpcMethod.of(handler)
            for service, handlers in services.items()
            for name, handler in handlers.items()
        }
        self.max_message_bytes = limits.max_message_bytes
        self.max_calls = limits.max_calls
        self.admission = Admission(limits)
        self.inflater = Inflater()
        self.http2 = Http2Server(self, stream_window)
        self.calls: set[GrpcCall] = set()  # in flight: admitted, not yet answered

    async def start(
        self, host: str, port: int, ssl: SSLContext | None = None, handshake_timeout: float | None = None
    ) -> int:
        return await self.http2.start(host, port, ssl, handshake_timeout)

    def open(self, stream: Stream, headers: list[tuple[str, str]], end: bool) -> Any:
        # every field, though only pseudo-headers and routing ones are read: dict() in C costs
        # a third of filtering in Python; a name sent twice keeps its last value either way
        pseudo = dict(headers)
        route = self.routes.get(pseudo.get(":path", ""))
        call = GrpcCall(self, stream, route or NO_METHOD, headers)
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
        if len(self.calls) >= self.max_calls:  # overload: refused at once, never queued
            call.exhausted(f"the server has {self.max_calls} calls in flight")
            return call
        self.calls.add(call)
        call.start(timeout, end)
        return call

    async def stop(self, grace: float) -> None:
        """No new calls; those in flight may finish for ``grace`` seconds; then all close."""
        self.http2.stop_accepting()
        await self._drain(grace)
        self.http2.close_all()
        await self.http2.wait_closed()
        self.inflater.close()

    async def _drain(self, grace: float) -> None:
        """Until every admitted call is answered, or ``grace`` runs out. A call is in flight from
        its HEADERS on: one whose message is still arriving (a large tensor, a slow link) has no
        task yet, so it is looked at again every few milliseconds until its task exists."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.calls and (left := deadline - loop.time()) > 0:
            calls = list(self.calls)
            tasks = [c.task for c in calls if c.task is not None and not c.task.done()]
            if tasks and len(tasks) == len(calls):
                await asyncio.wait(tasks, timeout=left)
            else:
                await asyncio.sleep(min(left, _RECEIVING_RECHECK_S))


def _timeout_s(value: str | None) -> float | None:
    """grpc-timeout: at most 8 ASCII digits and a unit (string tests, not a regular expression:
    this runs on every call that carries a deadline)."""
    if value is None:
        return None
    digits, unit = value[:-1], value[-1:]
    if not (0 < len(digits) <= 8 and digits.isascii() and digits.isdigit()) or unit not in _UNIT_S:
        raise ValueError(f"invalid grpc-timeout {value[:32]!r}")
    return int(digits) * _UNIT_S[unit]
