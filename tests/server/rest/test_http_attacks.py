"""Slow and greedy HTTP/1.1 clients, on raw sockets, against real servers (issue 14: findings 9
and 11, overload item 6): a head or a body trickled (slowloris), an idle keep-alive connection,
more connections than a client may hold, a gzip bomb, more requests and body bytes than the
server holds at once. Each case asserts the action stated for it (408 and closed within the
timeout + 2 s, 503 with Retry-After, 413), and that the server stayed alive, kept serving others
(tests/adversary.py's probe and its own loop-lag histogram: no stall over 250 ms), grew its RSS
by at most 100 MB, and still serves curl and tritonclient.http afterwards."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import select
import shutil
import socket
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.adversary import Watch
from tests.serverproc import EXAMPLES, ServerProcess, running

pytestmark = pytest.mark.timeout(300)

TIMEOUT_S = 2.0  # the short head, body and idle timeouts of the slow-client server
GRACE_S = 2.0  # the bound: closed within the timeout plus this
MIN_RATE = 1000  # bytes a second a body must average over each TIMEOUT_S window
PER_CLIENT = 32  # connections per client address on the limited server
ALL_CONNECTIONS = 48
MAX_REQUESTS = 16
MAX_BUFFERED = 32 << 20  # request-body bytes the limited server holds, inflated ones included
MAX_INFLATED = 8 << 20

INFER = "/v2/models/identity_fp32/infer"
VALUES = [float(i) for i in range(16)]
GOOD_BODY = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": VALUES}]})


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Only the model the probe and these tests call: quick to start on a busy machine."""
    root = tmp_path_factory.mktemp("attack-repo")
    shutil.copytree(EXAMPLES / "identity_fp32", root / "identity_fp32")
    return root


@pytest.fixture(scope="module")
def slow_server(repository: Path, logs_dir: Path) -> Iterator[ServerProcess]:
    args = ["--http-header-timeout-secs", str(TIMEOUT_S), "--http-body-timeout-secs", str(TIMEOUT_S)]
    args += ["--http-body-min-rate", str(MIN_RATE), "--http-idle-timeout-secs", str(TIMEOUT_S)]
    with running(repository, *args, log_dir=logs_dir) as server:
        yield server


@pytest.fixture(scope="module")
def limited_server(repository: Path, logs_dir: Path) -> Iterator[ServerProcess]:
    args = ["--http-max-connections-per-client", str(PER_CLIENT), "--http-max-connections", str(ALL_CONNECTIONS)]
    args += ["--http-max-requests", str(MAX_REQUESTS), "--http-max-buffered-body-size", str(MAX_BUFFERED)]
    args += ["--http-max-decompressed-size", str(MAX_INFLATED)]
    with running(repository, *args, log_dir=logs_dir) as server:
        yield server


@pytest.fixture(scope="module")
def default_server(repository: Path, logs_dir: Path) -> Iterator[ServerProcess]:
    """The default connection and load limits. The body timeout is long: this machine's test
    client takes tens of seconds to send 6,000 heads and read their answers before it sends the
    first body, which the default 30 s would rightly cut."""
    with running(repository, "--http-body-timeout-secs", "600", log_dir=logs_dir) as server:
        yield server


# ---- raw sockets ---------------------------------------------------------------------------------


def connect(server: ServerProcess, source: str = "127.0.0.1") -> socket.socket:
    """A connection from ``source`` (any 127.x.y.z is this machine, and another client address)."""
    host, port = server.http_url.split(":")
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect((host, int(port)))
    return sock


def head(path: str = INFER, method: str = "POST", **headers: str | int) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: x", *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def readable(sock: socket.socket, timeout_s: float) -> bool:
    """Whether ``sock`` has bytes (or EOF) within ``timeout_s`` (poll: descriptors past 1,024)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout_s * 1000))))


def read_until_closed(sock: socket.socket, timeout_s: float) -> tuple[bytes, float | None]:
    """What the server sends until it closes (and when, by the monotonic clock), or None as the
    time if it is still open after ``timeout_s``."""
    data = b""
    end = time.monotonic() + timeout_s
    while (left := end - time.monotonic()) > 0:
        if not readable(sock, left):
            break
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data, time.monotonic()
        if not chunk:
            return data, time.monotonic()
        data += chunk
    return data, None


def trickle_until_closed(sock: socket.socket, payload: bytes, every_s: float, timeout_s: float) -> tuple[bytes, float]:
    """Sends ``payload`` a piece every ``every_s`` until the server closes; what it sent back and
    when it closed. Fails if it is still open after ``timeout_s``."""
    data, end = b"", time.monotonic() + timeout_s
    for piece in (payload[i : i + 1] for i in range(len(payload))):
        assert time.monotonic() < end, f"still open after {timeout_s} s"
        try:
            sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            return data, time.monotonic()
        got, closed = read_until_closed(sock, every_s)
        data += got
        if closed is not None:
            return data, closed
    raise AssertionError("the whole payload was accepted: the server never cut the slow client")


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def header_of(answer: bytes, name: str) -> str | None:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        key, _, value = line.decode("latin-1").partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def exchange(sock: socket.socket, request: bytes, timeout_s: float = 30.0) -> bytes:
    """Sends ``request`` and reads one answer (its Content-Length body included)."""
    sock.sendall(request)
    data = b""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if b"\r\n\r\n" in data:
            length = int(header_of(data, "Content-Length") or 0)
            if len(data.split(b"\r\n\r\n", 1)[1]) >= length:
                return data
        chunk = sock.recv(65536) if readable(sock, end - time.monotonic()) else b""
        if not chunk:
            break
        data += chunk
    return data


# ---- what every case asserts afterwards ---------------------------------------------------------------


def serves_curl_and_tritonclient(server: ServerProcess) -> None:
    assert server.is_running(), server.log()[-3000:]
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://{server.http_url}/v2/health/ready"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.stdout == "200", out
    with httpclient.InferenceServerClient(server.http_url) as client:
        x = np.arange(16, dtype=np.float32).reshape(1, 16)
        tensor = httpclient.InferInput("INPUT0", [1, 16], "FP32")
        tensor.set_data_from_numpy(x)
        np.testing.assert_array_equal(client.infer("identity_fp32", [tensor]).as_numpy("OUTPUT0"), x)


@contextlib.contextmanager
def attack(server: ServerProcess, probe: bool = True) -> Iterator[Watch]:
    """Watches the server through an attack; asserts the issue's bounds and serving afterwards."""
    with Watch(server, probe=probe) as watch:
        yield watch
    case = os.environ.get("PYTEST_CURRENT_TEST", "?").split("::")[-1].split(" ")[0]
    probe_s = f", probe's longest call {watch.probe_longest_s:.2f} s" if probe else ""
    print(  # the figures docs/http-limits.md reports (pytest -s shows them)
        f"\n[figures] {case}: RSS {watch.rss_growth / 2**20:+.1f} MiB, longest loop lag <= "
        f"{watch.max_lag_bucket_s * 1000:g} ms{probe_s}"
    )
    watch.check()
    serves_curl_and_tritonclient(server)


# ---- slow clients (finding 9) ----------------------------------------------------------------------------


def test_slowloris_head_is_cut_within_the_head_timeout(slow_server: ServerProcess) -> None:
    """A byte of the head every 0.5 s: each byte used to reset the idle timer; now the head as a
    whole must arrive within the head timeout of its first byte."""
    payload = head(Content_Length=len(GOOD_BODY)) * 4  # far more than the timeout lets through
    with attack(slow_server), connect(slow_server) as sock:
        started = time.monotonic()
        answer, closed = trickle_until_closed(sock, payload, 0.5, TIMEOUT_S + GRACE_S + 5)
    took = closed - started
    print(f"\n[figures] slowloris head: 408 and closed {took:.2f} s after its first byte (timeout {TIMEOUT_S} s)")
    assert TIMEOUT_S - 0.5 <= took <= TIMEOUT_S + GRACE_S, took
    assert status_of(answer) == 408, answer[:200]


def test_connection_that_sends_nothing_is_cut(slow_server: ServerProcess) -> None:
    with attack(slow_server), connect(slow_server) as sock:
        started = time.monotonic()
        answer, closed = read_until_closed(sock, TIMEOUT_S + GRACE_S + 5)
    assert closed is not None, "a connection that never sent a byte is still open"
    print(f"\n[figures] silent connection: 408 and closed {closed - started:.2f} s after connecting")
    assert closed - started <= TIMEOUT_S + GRACE_S, closed - started
    assert status_of(answer) == 408, answer[:200]


def test_slow_body_is_cut_with_408(slow_server: ServerProcess) -> None:
    """A body at ~20 bytes a second against a minimum of 1,000."""
    with attack(slow_server), connect(slow_server) as sock:
        sock.sendall(head(Content_Length=100_000))
        started = time.monotonic()
        answer, closed = trickle_until_closed(sock, b" " * 100_000, 0.05, TIMEOUT_S * 2 + GRACE_S + 5)
    took = closed - started
    print(f"\n[figures] slow body: 408 and closed {took:.2f} s after its head (window {TIMEOUT_S} s)")
    assert took <= TIMEOUT_S + GRACE_S, took
    assert status_of(answer) == 408, answer[:200]
    assert b"slower than 1000 bytes/s" in answer


def test_steady_body_longer_than_the_window_is_not_cut(slow_server: ServerProcess) -> None:
    """A body that takes longer than the window but keeps the minimum rate is served: the rate is
    judged window by window, not as a deadline for the whole body."""
    body = (GOOD_BODY + " " * 20_000).encode()  # JSON allows trailing whitespace
    pieces = [body[i : i + 2_000] for i in range(0, len(body), 2_000)]
    with attack(slow_server), connect(slow_server) as sock:
        sock.sendall(head(Content_Length=len(body)))
        started = time.monotonic()
        for piece in pieces:  # ~13 KB/s for about 1.6 windows
            sock.sendall(piece)
            time.sleep(TIMEOUT_S * 1.6 / len(pieces))
        answer = exchange(sock, b"")
    assert time.monotonic() - started > TIMEOUT_S
    assert status_of(answer) == 200, answer[:300]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["outputs"][0]["data"] == VALUES


def test_idle_keep_alive_connection_is_closed(slow_server: ServerProcess) -> None:
    """After an answer, a connection that sends nothing, or only the blank lines a parser skips
    between requests, is closed once idle for the idle timeout."""
    with attack(slow_server):
        for filler in (b"", b"\r\n"):
            with connect(slow_server) as sock:
                assert status_of(exchange(sock, head("/v2/health/ready", "GET"))) == 200
                answered = time.monotonic()
                if filler:
                    _, closed = trickle_until_closed(sock, filler * 100, 0.5, TIMEOUT_S + GRACE_S + 5)
                else:
                    _, closed_or_none = read_until_closed(sock, TIMEOUT_S + GRACE_S + 5)
                    assert closed_or_none is not None, "an idle keep-alive connection is still open"
                    closed = closed_or_none
            print(f"\n[figures] idle ({filler!r} sent): closed {closed - answered:.2f} s after the answer")
            assert TIMEOUT_S - 0.5 <= closed - answered <= TIMEOUT_S + GRACE_S, (filler, closed - answered)


def test_a_long_request_is_not_idle(slow_server: ServerProcess) -> None:
    """Keep-alive requests every half timeout: the connection lives on past the idle timeout."""
    with attack(slow_server), connect(slow_server) as sock:
        started = time.monotonic()
        while time.monotonic() - started < TIMEOUT_S * 2:
            assert status_of(exchange(sock, head("/v2/health/ready", "GET"))) == 200
            time.sleep(TIMEOUT_S / 2)


# ---- greedy clients (findings 9 and 11, overload item 6) ------------------------------------------------


def test_connections_over_the_per_client_limit_are_refused(limited_server: ServerProcess) -> None:
    """A client holding its PER_CLIENT connections gets 503 + Retry-After on the next, which is
    closed; its open connections and every other client are still served; once it lets go, it
    connects again."""
    with attack(limited_server):
        held = [connect(limited_server, "127.0.0.9") for _ in range(PER_CLIENT)]
        try:
            for sock in held:  # answered one by one (MAX_REQUESTS < PER_CLIENT): the server counted each
                assert status_of(exchange(sock, head("/v2/health/live", "GET"))) == 200
            refused_at = time.monotonic()
            with connect(limited_server, "127.0.0.9") as extra:
                answer, closed = read_until_closed(extra, 10)
            assert closed is not None, "the connection over the limit is still open"
            assert closed - refused_at < 2
            assert status_of(answer) == 503, answer[:200]
            assert header_of(answer, "Retry-After") == "1"
            with connect(limited_server, "127.0.0.10") as other:  # another client is served
                assert status_of(exchange(other, head("/v2/health/ready", "GET"))) == 200
            assert status_of(exchange(held[0], head("/v2/health/ready", "GET"))) == 200
        finally:
            for sock in held:
                sock.close()
    assert served_again(limited_server, "127.0.0.9"), "the client's closed connections were never given back"


def served_again(server: ServerProcess, source: str, within_s: float = 10) -> bool:
    """Whether a new connection from ``source`` is served within ``within_s`` (the server sees
    closed connections a moment after the client closes them)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        with connect(server, source) as again:
            if status_of(exchange(again, head("/v2/health/ready", "GET"))) == 200:
                return True
        time.sleep(0.1)
    return False


def test_connections_over_the_total_are_refused(limited_server: ServerProcess) -> None:
    per = PER_CLIENT // 2
    with attack(limited_server, probe=False):  # the probe's own connections would count
        held = [connect(limited_server, f"127.0.1.{i // per + 1}") for i in range(ALL_CONNECTIONS)]
        try:
            statuses = [status_of(exchange(sock, head("/v2/health/live", "GET"))) for sock in held]
            assert statuses == [200] * ALL_CONNECTIONS, statuses
            with connect(limited_server, "127.0.2.1") as extra:
                answer, closed = read_until_closed(extra, 10)
            assert closed is not None, "the connection over the limit is still open"
            assert status_of(answer) == 503, answer[:200]
            assert header_of(answer, "Retry-After") == "1"
        finally:
            for sock in held:
                sock.close()
        assert served_again(limited_server, "127.0.2.1")


@functools.cache
def gzip_bomb(inflated: int, start: bytes = b'{"id": "') -> bytes:
    """A gzip body that inflates to ``inflated`` bytes, zeros after ``start`` (~1/1000 of it as
    sent). It starts as JSON does, so that only the decompressed limit stops it."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1 << 20)
    parts = [packer.compress(start), *(packer.compress(block) for _ in range(inflated >> 20))]
    return b"".join(parts) + packer.flush()


def test_gzip_bomb_is_413_without_stalling_the_loop(limited_server: ServerProcess) -> None:
    """A 100 KiB gzip bomb (100 MiB), five times: refused at the decompressed limit, inflated in
    slices between which the loop serves the others."""
    bomb = gzip_bomb(100 << 20)
    assert len(bomb) < 110 * 1024
    with attack(limited_server), connect(limited_server) as sock:
        for _ in range(5):
            answer = exchange(sock, head(Content_Length=len(bomb), Content_Encoding="gzip") + bomb)
            assert status_of(answer) == 413, answer[:300]
            assert b"decompressed limit" in answer


def test_gzip_bomb_that_is_not_json_is_400_after_one_slice(limited_server: ServerProcess) -> None:
    """Zeros from the first byte: no body of this API starts so, refused before inflating more."""
    bomb = gzip_bomb(100 << 20, start=b"")
    with attack(limited_server), connect(limited_server) as sock:
        answer = exchange(sock, head(Content_Length=len(bomb), Content_Encoding="gzip") + bomb)
    assert status_of(answer) == 400, answer[:300]
    assert b"must start with" in answer


def test_gzip_bombs_at_once_are_bounded_by_the_servers_body_bytes(limited_server: ServerProcess) -> None:
    """Twelve 1 MiB bombs (1 GiB of zeros each) at once: what they inflate counts in the server's
    bound on request bytes, so each gets 413 at its limit or 503 (Retry-After) past the server's
    bound, and memory stays bounded whatever the number of bombs."""
    bomb = gzip_bomb(1 << 30)
    with attack(limited_server):
        socks = [connect(limited_server) for _ in range(12)]
        try:
            for sock in socks:
                sock.sendall(head(Content_Length=len(bomb), Content_Encoding="gzip") + bomb)
            answers = [exchange(sock, b"") for sock in socks]
        finally:
            for sock in socks:
                sock.close()
    statuses = [status_of(a) for a in answers]
    assert set(statuses) <= {413, 503}, statuses
    assert all(header_of(a, "Retry-After") == "1" for a in answers if status_of(a) == 503)
    print(f"\n[figures] 12 bombs at once: {statuses}")


def hold_requests(
    server: ServerProcess, count: int, source: str = "127.0.0.1", length: int = 1 << 20
) -> tuple[list[socket.socket], list[bytes]]:
    """``count`` requests whose body has not come: each holds a request slot (the server says 100
    Continue when it admits one, 503 when it refuses it); the sockets and those first answers."""
    socks = []
    for _ in range(count):
        sock = connect(server, source)
        sock.sendall(head(Content_Length=length, Expect="100-continue"))
        socks.append(sock)
    return socks, [exchange(sock, b"", 120) for sock in socks]


def test_requests_over_the_server_bound_get_503_at_once(limited_server: ServerProcess) -> None:
    """MAX_REQUESTS requests held (heads sent, bodies never): the next request of anyone gets 503
    with Retry-After: 1 at once, in order on its connection, which stays usable; once the
    holders go, requests are served again, exactly as many as the bound (nothing leaked)."""
    body = GOOD_BODY.encode()
    with attack(limited_server, probe=False):  # the probe would be refused too
        for _ in range(2):  # twice: the slots the first round held were all given back
            socks, answers = hold_requests(limited_server, MAX_REQUESTS + 1, "127.0.3.1")
            try:
                statuses = [status_of(a) for a in answers]
                assert statuses == [100] * MAX_REQUESTS + [503], statuses
                assert header_of(answers[-1], "Retry-After") == "1"
                with connect(limited_server, "127.0.3.2") as other:
                    started = time.monotonic()
                    answer = exchange(other, head("/v2/health/ready", "GET"))
                    assert status_of(answer) == 503, answer[:200]
                    assert header_of(answer, "Retry-After") == "1"
                    assert time.monotonic() - started < 2
                    # refused with a body: the body is read and dropped, the answer comes in order
                    answer = exchange(other, head(Content_Length=len(body)) + body)
                    assert status_of(answer) == 503, answer[:200]
            finally:
                for sock in socks:
                    sock.close()
            assert served_again(limited_server, "127.0.3.2")


def test_body_bytes_over_the_server_bound_get_503(limited_server: ServerProcess) -> None:
    """Bodies held half-sent fill the server's bound on request bytes; the next body is refused
    with 503 (its bytes dropped, not buffered), and memory stays bounded."""
    part = MAX_BUFFERED // 4
    body = (GOOD_BODY + " " * (4 << 20)).encode()
    with attack(limited_server, probe=False) as watch:
        holders = [connect(limited_server, "127.0.4.1") for _ in range(4)]
        try:
            for sock in holders:
                sock.sendall(head(Content_Length=part * 2) + bytes(part))
            deadline = time.monotonic() + 60
            with connect(limited_server, "127.0.4.2") as other:
                while True:  # served until the server has read all the holders' bytes, then refused
                    answer = exchange(other, head(Content_Length=len(body)) + body)
                    if status_of(answer) == 503:
                        break
                    assert status_of(answer) == 200, answer[:200]
                    assert time.monotonic() < deadline, "the holders' bytes never filled the bound"
                assert header_of(answer, "Retry-After") == "1"
        finally:
            for sock in holders:
                sock.close()
    assert watch.rss_growth < MAX_BUFFERED + (32 << 20), watch.rss_growth


@pytest.mark.timeout(600)
def test_one_client_holds_6000_concurrent_calls_with_the_defaults(default_server: ServerProcess) -> None:
    """The defaults let one loopback client hold 6,000 HTTP/1.1 calls at once (a connection each):
    every head is admitted (100 Continue), then every body is sent and every call answered."""
    count = 6000
    socks, answers = hold_requests(default_server, count, length=len(GOOD_BODY))
    try:
        statuses = [status_of(a) for a in answers]
        assert statuses.count(100) == count, {s: statuses.count(s) for s in set(statuses)}
        body = GOOD_BODY.encode()
        for sock in socks:
            sock.sendall(body)
        done = [status_of(exchange(sock, b"", 120)) for sock in socks]
        assert done.count(200) == count, {s: done.count(s) for s in set(done)}
    finally:
        for sock in socks:  # reset, not closed: 6,000 ports in TIME_WAIT would trouble the next servers' ports
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
    serves_curl_and_tritonclient(default_server)
