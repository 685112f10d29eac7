"""The project's HTTP/1.1 server on the wire: keep-alive, pipelining, HEAD, Expect: 100-continue,
HTTP/1.0, clients that stop reading; and the router on its own."""

from __future__ import annotations

import json
import socket
import time

import pytest

from server.rest.http_server import HttpRequest, HttpResponse
from server.rest.router import NoRoute, Route, Router
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.timeout(120)

BODY = json.dumps(
    {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": [float(i) for i in range(16)]}]}
).encode()


def infer_request(body: bytes = BODY, extra: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    head = b"POST /v2/models/identity_fp32/infer " + version + b"\r\nHost: x\r\n" + extra
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def connect(server: ServerProcess) -> socket.socket:
    host, port = server.http_url.split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def read_response(sock: socket.socket, buffer: bytearray) -> tuple[bytes, dict[str, str], bytes]:
    """One response off the connection (status line, headers, body by Content-Length)."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed; got {bytes(buffer)[:200]!r}"
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {k.decode().lower(): v.decode().strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside a body"
        rest += chunk
    buffer[:] = rest[length:]
    return lines[0], headers, rest[:length]


def test_keep_alive_and_pipelining_answer_in_order(example_server: ServerProcess) -> None:
    with connect(example_server) as sock:
        buffer = bytearray()
        requests = [infer_request(json.dumps({"id": str(i), **json.loads(BODY)}).encode()) for i in range(5)]
        sock.sendall(b"".join(requests))  # five at once: answered one after another, in order
        for i in range(5):
            status, headers, body = read_response(sock, buffer)
            assert status == b"HTTP/1.1 200 OK"
            assert json.loads(body)["id"] == str(i)
            assert "connection" not in headers
        sock.sendall(infer_request())  # the connection is still usable
        assert read_response(sock, buffer)[0] == b"HTTP/1.1 200 OK"


def test_head_has_the_headers_of_get_without_a_body(example_server: ServerProcess) -> None:
    with connect(example_server) as sock:
        buffer = bytearray()
        sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\n\r\n")
        get_body = read_response(sock, buffer)[2]
        sock.sendall(b"HEAD /v2 HTTP/1.1\r\nHost: x\r\n\r\n")
        while b"\r\n\r\n" not in buffer:
            buffer += sock.recv(65536)
        head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert f"Content-Length: {len(get_body)}".encode() in head
        assert rest == b""
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")  # no stray body bytes in between
        assert read_response(sock, bytearray())[0] == b"HTTP/1.1 200 OK"


def test_expect_100_continue(example_server: ServerProcess) -> None:
    """curl sends it for bodies over 1 KiB and waits a second for the interim answer."""
    with connect(example_server) as sock:
        head = infer_request(extra=b"Expect: 100-continue\r\n").split(b"\r\n\r\n")[0] + b"\r\n\r\n"
        sock.sendall(head)
        assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(BODY)
        assert read_response(sock, bytearray())[0] == b"HTTP/1.1 200 OK"


def test_http_1_0_closes_after_the_answer(example_server: ServerProcess) -> None:
    with connect(example_server) as sock:
        sock.sendall(infer_request(version=b"HTTP/1.0"))
        status, headers, _ = read_response(sock, bytearray())
        assert status == b"HTTP/1.1 200 OK"
        assert headers["connection"] == "close"
        assert sock.recv(10) == b""


def test_a_client_that_stops_reading_does_not_stop_the_others(example_server: ServerProcess) -> None:
    """Thousands of pipelined requests whose answers nobody reads: the server stops working
    for that connection once its send buffer is full, and serves everyone else."""
    greedy = connect(example_server)
    greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        greedy.setblocking(False)
        big = json.dumps(
            {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [64, 16], "data": [0.5] * 1024}]}
        ).encode()
        burst = infer_request(big) * 2000  # 2000 answers of ~5 KiB: more than any socket buffer holds
        sent = 0
        deadline = time.monotonic() + 5
        while sent < len(burst) and time.monotonic() < deadline:
            try:
                sent += greedy.send(burst[sent:])
            except BlockingIOError:
                time.sleep(0.01)
        for _ in range(20):
            with connect(example_server) as sock:
                sock.sendall(infer_request())
                assert read_response(sock, bytearray())[0] == b"HTTP/1.1 200 OK"
    finally:
        greedy.close()
    assert example_server.is_running()


async def _ok(request: HttpRequest) -> HttpResponse:
    return HttpResponse(200, request.params.get("name", "").encode())


def test_router() -> None:
    router = Router(
        [
            Route("GET", "/v2/models/stats", _ok),
            Route("GET", "/v2/models/{name}", _ok),
            Route("POST", "/v2/models/{name}/infer", _ok),
            Route("*", "/v2/cuda/{tail:*}", _ok),
        ]
    )
    assert router.resolve("GET", "/v2/models/stats")[1] == {}
    assert router.resolve("GET", "/v2/models/m1")[1] == {"name": "m1"}
    assert router.resolve("HEAD", "/v2/models/m1")[1] == {"name": "m1"}
    assert router.resolve("DELETE", "/v2/cuda/a/b")[1] == {"tail": "a/b"}
    with pytest.raises(NoRoute) as missing:
        router.resolve("GET", "/v2/models/m1/infer")
    assert missing.value.allowed == {"POST"}
    for path in ("/v2/models/", "/v2/models//infer", "/v2/models/m/x/infer", "/nothing", ""):
        with pytest.raises(NoRoute) as missing:
            router.resolve("POST", path)
        assert missing.value.allowed == set(), path
