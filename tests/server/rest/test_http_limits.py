"""The HTTP limits that protect the server, hit with raw requests no client library would send:
compressed bodies (and bombs), nesting bombs, lying lengths, odd headers and content types.
Every case gets its status and a message, the server stays live, and the error path leaks no
memory."""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.serverproc import EXAMPLES, ServerProcess, running

pytestmark = pytest.mark.timeout(180)

INFER = "/v2/models/identity_fp32/infer"
VALUES = [float(i) for i in range(16)]
GOOD = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": VALUES}]}
GOOD_BODY = json.dumps(GOOD).encode()
SMALL_LIMIT = 1 << 20  # the decompressed limit of the small-limit server


@pytest.fixture(scope="module")
def server(logs_dir: Path) -> Iterator[ServerProcess]:
    with running(EXAMPLES, "--http-max-decompressed-size", str(SMALL_LIMIT), log_dir=logs_dir) as proc:
        yield proc
        assert proc.is_running(), proc.log()


def request(
    server: ServerProcess, body: bytes, headers: dict[str, str] | None = None, path: str = INFER
) -> tuple[int, bytes]:
    host, port = server.http_url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("POST", path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def assert_error(answer: tuple[int, bytes], status: int, fragment: str) -> None:
    code, body = answer
    assert code == status, body[:500]
    message = json.loads(body)["error"]
    assert fragment in message, message


def assert_identity(answer: tuple[int, bytes]) -> None:
    code, body = answer
    assert code == 200, body[:500]
    (output,) = json.loads(body)["outputs"]
    assert output["data"] == VALUES


def assert_live(server: ServerProcess) -> None:
    host, port = server.http_url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/v2/health/ready")
    assert conn.getresponse().status == 200
    conn.close()
    assert server.is_running(), server.log()


def deflate(data: bytes, wbits: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
    return packer.compress(data) + packer.flush()


def zeros_bomb(inflated_bytes: int, wbits: int = 16 + zlib.MAX_WBITS, start: bytes = b"{") -> bytes:
    """A small gzip (or zlib) body that inflates to ``inflated_bytes`` of zeros after ``start``
    (a body that does not start as JSON does is refused at its first slice: see below)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
    chunk = bytes(1 << 20)
    parts = [packer.compress(start), *(packer.compress(chunk) for _ in range(inflated_bytes >> 20))]
    return b"".join([*parts, packer.flush()])


# ---- compressed bodies -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", gzip.compress(GOOD_BODY)),
        ("x-gzip", gzip.compress(GOOD_BODY)),
        ("deflate", deflate(GOOD_BODY, zlib.MAX_WBITS)),  # the zlib format, as HTTP defines it
        ("deflate", deflate(GOOD_BODY, -zlib.MAX_WBITS)),  # raw deflate, as some clients send
        ("gzip", gzip.compress(GOOD_BODY[:40]) + gzip.compress(GOOD_BODY[40:])),  # two members
        ("identity", GOOD_BODY),
    ],
    ids=["gzip", "x-gzip", "deflate-zlib", "deflate-raw", "gzip-members", "identity"],
)
def test_compressed_bodies_are_decoded(server: ServerProcess, encoding: str, body: bytes) -> None:
    assert_identity(request(server, body, {"Content-Encoding": encoding}))


def test_compressed_binary_tensor_body(server: ServerProcess) -> None:
    header = json.dumps(
        {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "parameters": {"binary_data_size": 64}}]}
    ).encode()
    raw = np.arange(16, dtype=np.float32).tobytes()
    headers = {"Content-Encoding": "gzip", "Inference-Header-Content-Length": str(len(header))}
    assert_identity(request(server, gzip.compress(header + raw), headers))


BAD_ENCODINGS = {
    "not_gzip": (b"plain bytes, not gzip", "gzip", 400, "not valid gzip"),
    "truncated_gzip": (gzip.compress(GOOD_BODY)[:-12], "gzip", 400, "truncated gzip"),
    "gzip_then_junk": (gzip.compress(GOOD_BODY) + b"junk", "gzip", 400, "not valid gzip"),
    "not_deflate": (b"\xff" * 64, "deflate", 400, "not valid deflate"),
    "zlib_then_junk": (deflate(GOOD_BODY, zlib.MAX_WBITS) + b"junk", "deflate", 400, "after the deflate"),
    "brotli": (GOOD_BODY, "br", 400, "Content-Encoding 'br' is not supported"),
    "stacked": (gzip.compress(gzip.compress(GOOD_BODY)), "gzip, gzip", 400, "not supported"),
}


@pytest.mark.parametrize("case", sorted(BAD_ENCODINGS))
def test_bad_encodings(server: ServerProcess, case: str) -> None:
    body, encoding, status, fragment = BAD_ENCODINGS[case]
    assert_error(request(server, body, {"Content-Encoding": encoding}), status, fragment)
    assert_live(server)


@pytest.mark.parametrize("wbits", [16 + zlib.MAX_WBITS, zlib.MAX_WBITS], ids=["gzip", "deflate"])
def test_compression_bomb_is_413(server: ServerProcess, wbits: int) -> None:
    bomb = zeros_bomb(64 << 20, wbits)  # ~64 KiB on the wire, 64 MiB inflated: 64x the limit
    assert len(bomb) < 128 << 10
    encoding = "gzip" if wbits > zlib.MAX_WBITS else "deflate"
    assert_error(request(server, bomb, {"Content-Encoding": encoding}), 413, f"{SMALL_LIMIT}-byte decompressed limit")
    assert_live(server)


@pytest.mark.parametrize("wbits", [16 + zlib.MAX_WBITS, zlib.MAX_WBITS], ids=["gzip", "deflate"])
def test_compressed_body_that_is_not_json_is_400_at_its_first_slice(server: ServerProcess, wbits: int) -> None:
    """Zeros from the first byte: no body of the API starts so; refused without inflating on."""
    encoding = "gzip" if wbits > zlib.MAX_WBITS else "deflate"
    answer = request(server, zeros_bomb(64 << 20, wbits, start=b""), {"Content-Encoding": encoding})
    assert_error(answer, 400, "must start with '{'")
    assert_live(server)


def test_default_limit_stops_a_large_bomb(example_server: ServerProcess) -> None:
    """With the default 256 MiB limit: a 300 KiB body that would inflate to 320 MiB."""
    assert_error(request(example_server, zeros_bomb(320 << 20), {"Content-Encoding": "gzip"}), 413, "decompressed")
    assert_live(example_server)


def test_body_exactly_at_the_decompressed_limit_passes_the_limit(server: ServerProcess) -> None:
    padding = b" " * (SMALL_LIMIT - len(GOOD_BODY))  # JSON allows trailing whitespace
    body = GOOD_BODY + padding
    assert len(body) == SMALL_LIMIT
    assert_identity(request(server, gzip.compress(body), {"Content-Encoding": "gzip"}))
    assert_error(request(server, gzip.compress(body + b" "), {"Content-Encoding": "gzip"}), 413, "decompressed")


# ---- JSON nesting ------------------------------------------------------------------------------


def nested(depth: int) -> str:
    return "[" * depth + "1.0" + "]" * depth


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ('{"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": ' + nested(200) + "}]}",
         "nested deeper than 64"),
        ('{"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": ' + nested(100_000) + "}]}",
         "nested too deeply"),
        ('{"x": ' + '{"a": ' * 100_000 + "1" + "}" * 100_000 + "}", "nested too deeply"),
        ("[" * 1_000_000, "nested too deeply"),
    ],
    ids=["data-200-deep", "data-100k-deep", "objects-100k-deep", "unclosed-1M"],
)  # fmt: skip
def test_nesting_bombs(server: ServerProcess, body: str, fragment: str) -> None:
    assert_error(request(server, body.encode()), 400, fragment)
    assert_live(server)


def test_nesting_as_deep_as_the_shape_is_fine(server: ServerProcess) -> None:
    body = dict(GOOD)
    body["inputs"] = [{**GOOD["inputs"][0], "data": [VALUES]}]  # type: ignore[index]
    assert_identity(request(server, json.dumps(body).encode()))


# ---- the binary extension's header length -----------------------------------------------------

HEADER = json.dumps(
    {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "parameters": {"binary_data_size": 64}}]}
).encode()
RAW = bytes(64)

BAD_LENGTHS = {
    "not_a_number": (HEADER + RAW, "abc", "must be a non-negative integer"),
    "negative": (HEADER + RAW, "-5", "must be a non-negative integer"),
    "float": (HEADER + RAW, "12.5", "must be a non-negative integer"),
    "hex": (HEADER + RAW, "0x20", "must be a non-negative integer"),
    "huge": (HEADER + RAW, "9" * 40, "larger than the"),
    "past_the_body": (HEADER + RAW, str(len(HEADER) + 65), "larger than the"),
    "zero": (HEADER + RAW, "0", "'inputs' is missing"),
    "cuts_the_json": (HEADER + RAW, str(len(HEADER) - 5), "not valid JSON"),
    "claims_the_data_too": (HEADER + RAW, str(len(HEADER) + 64), "not valid JSON"),
    "data_left_over": (HEADER + RAW + b"extra", str(len(HEADER)), "not claimed by any input"),
    "data_missing": (HEADER + RAW[:10], str(len(HEADER)), "runs past the end"),
    "empty": (HEADER + RAW, "", "must be a non-negative integer"),
}


@pytest.mark.parametrize("case", sorted(BAD_LENGTHS))
def test_header_lengths_that_do_not_add_up(server: ServerProcess, case: str) -> None:
    body, length, fragment = BAD_LENGTHS[case]
    assert_error(request(server, body, {"Inference-Header-Content-Length": length}), 400, fragment)
    assert_live(server)


# ---- content types ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", ["application/json", "text/plain", "application/x-www-form-urlencoded", "application/octet-stream"]
)
def test_json_is_read_whatever_the_content_type(server: ServerProcess, content_type: str) -> None:
    """As Triton does, and as `curl -d` (form-urlencoded by default) needs."""
    assert_identity(request(server, GOOD_BODY, {"Content-Type": content_type}))


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data; boundary=xyz", b'--xyz\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--xyz--'),
        ("application/x-www-form-urlencoded", b"inputs=1&outputs=2"),
        ("application/octet-stream", np.arange(16, dtype=np.float32).tobytes()),
        ("text/html", b"<html><body>hello</body></html>"),
    ],
    ids=["multipart", "form", "octet-stream", "html"],
)
def test_bodies_of_other_types_are_400(server: ServerProcess, content_type: str, body: bytes) -> None:
    assert_error(request(server, body, {"Content-Type": content_type}), 400, "not valid JSON")
    assert_live(server)


# ---- HTTP-level junk --------------------------------------------------------------------------


def raw_exchange(server: ServerProcess, data: bytes) -> bytes:
    """Sends bytes as they are and reads the answer until the server closes or 3 s pass."""
    host, port = server.http_url.split(":")
    with socket.create_connection((host, int(port)), timeout=3) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks)


def status_line(answer: bytes) -> str:
    return answer.split(b"\r\n", 1)[0].decode(errors="replace")


JUNK = {
    "long_header_line": b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20_000 + b"\r\n\r\n",
    "many_headers": b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-%d: 1\r\n" % i for i in range(500))
    + b"\r\n",
    "nul_in_header": b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-A: \x00\r\n\r\n",
    "bad_content_length": b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
    "two_content_lengths": b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
    b"Content-Length: 3\r\n\r\n{}",
    "bad_chunking": b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "not_http": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),  # a TLS ClientHello
    "long_url": b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("case", sorted(JUNK))
def test_malformed_http_is_400(server: ServerProcess, case: str) -> None:
    answer = raw_exchange(server, JUNK[case])
    assert status_line(answer).split(" ")[1] in ("400", "413", "414", "431"), answer[:300]
    assert_live(server)


def test_declared_length_over_the_limit_is_413_before_the_body(logs_dir: Path) -> None:
    with running(EXAMPLES, "--http-max-input-size", "4096", log_dir=logs_dir) as small:
        head = f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {10**12}\r\n\r\n".encode()
        answer = raw_exchange(small, head)  # no body follows: the server must answer anyway
        assert status_line(answer).endswith("413 Request Entity Too Large"), answer[:300]
        assert b"4096-byte limit" in answer
        zipped = gzip.compress(GOOD_BODY + b" " * 10_000)  # small when sent: only the inflated size is limited
        assert len(zipped) < 4096
        assert_identity(request(small, zipped, {"Content-Encoding": "gzip"}))
        assert_live(small)


def test_body_shorter_than_declared_does_not_hang(server: ServerProcess) -> None:
    head = f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode()
    assert raw_exchange(server, head + b'{"inputs": ') == b""  # still waiting for the rest, and nothing else is
    assert_live(server)


def test_chunked_body_is_read(server: ServerProcess) -> None:
    half = len(GOOD_BODY) // 2
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (GOOD_BODY[:half], GOOD_BODY[half:]))
    head = f"POST {INFER} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode()
    answer = raw_exchange(server, head + chunks + b"0\r\n\r\n")
    assert status_line(answer) == "HTTP/1.1 200 OK", answer[:300]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["outputs"][0]["data"] == VALUES


# ---- memory -----------------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


MALFORMED = [
    (b"{not json", {}),
    (json.dumps({"inputs": [{**GOOD["inputs"][0], "shape": [1, 8]}]}).encode(), {}),  # type: ignore[dict-item]
    (HEADER + RAW[:10], {"Inference-Header-Content-Length": str(len(HEADER))}),
    (gzip.compress(GOOD_BODY)[:-12], {"Content-Encoding": "gzip"}),
    (zeros_bomb(4 << 20), {"Content-Encoding": "gzip"}),
    (nested(10_000).encode(), {}),
    (json.dumps({"inputs": [{"name": "NOPE", "datatype": "FP32", "shape": [1, 16], "data": VALUES}]}).encode(), {}),
]


def test_error_path_leaks_no_memory(server: ServerProcess) -> None:
    assert server.proc is not None
    host, port = server.http_url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)

    def hammer(rounds: int) -> None:
        for _ in range(rounds):
            for body, headers in MALFORMED:
                conn.request("POST", INFER, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                assert response.status in (400, 413), response.status

    hammer(150)  # warm-up: allocator pools, caches, lazily imported code
    before = rss_bytes(server.proc.pid)
    hammer(600)  # 4200 malformed requests
    after = rss_bytes(server.proc.pid)
    conn.close()
    assert after - before < 16 << 20, f"RSS grew by {(after - before) >> 20} MiB over 4200 malformed requests"
    assert_live(server)
