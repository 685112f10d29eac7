"""The native gRPC front end at the HTTP/2 level, with a raw client on a socket.

What grpc clients never send but a server must survive: a client that is not HTTP/2, frames
that break the protocol (each ends its connection with GOAWAY and the right error code), header
blocks that do not decode, requests that are not gRPC (HTTP 405/415), gRPC calls that carry no
message, two messages, a message over the limit, an unknown compression or a corrupt one, a bad
``grpc-timeout``. And what they do send: a small flow-control window (the answer waits for the
client's WINDOW_UPDATEs and arrives whole), PING, CONTINUATION, padding. After each test the
server still answers a real tritonclient call; a fuzz test sends random frames."""

from __future__ import annotations

import gzip
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import hpack
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as tpb

from tests.serverproc import EXAMPLES, ServerProcess, running

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0, 1, 3, 4, 5, 6, 7, 8, 9,
)  # fmt: skip
END_STREAM, END_HEADERS, PADDED = 0x1, 0x4, 0x8
PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, COMPRESSION_ERROR = 1, 3, 6, 9
MAX_MESSAGE = 1 << 20
INFER = "/inference.GRPCInferenceService/ModelInfer"


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return struct.pack(">HBBBI", n >> 8, n & 0xFF, kind, flags, stream_id) + payload


def message(body: bytes, compressed: bool = False) -> bytes:
    return struct.pack(">BI", int(compressed), len(body)) + body


def identity_request(rows: int = 1) -> bytes:
    request = tpb.ModelInferRequest(model_name="identity_fp32")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[rows, 16])
    request.raw_input_contents.append(np.arange(rows * 16, dtype=np.float32).tobytes())
    return bytes(request.SerializeToString())


@dataclass
class Answer:
    headers: list[tuple[str, str]] = field(default_factory=list)
    data: bytes = b""
    reset: int | None = None

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n == name), None)


class RawH2:
    """An HTTP/2 client on a socket: it sends exactly the bytes a test asks for."""

    def __init__(self, port: int, settings_payload: bytes = b"") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.buffer = b""
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0, settings_payload))

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, stream_id: int, path: str = INFER, extra: tuple[tuple[str, str], ...] = (), **kw: str) -> None:
        headers = [
            (":method", kw.get("method", "POST")),
            (":scheme", "http"),
            (":path", path),
            (":authority", "127.0.0.1"),
            ("content-type", kw.get("content_type", "application/grpc")),
            ("te", "trailers"),
            *extra,
        ]
        self.send(frame(HEADERS, END_HEADERS, stream_id, self.encoder.encode(headers)))

    def read_frame(self) -> tuple[int, int, int, bytes] | None:
        while len(self.buffer) < 9 or len(self.buffer) < 9 + int.from_bytes(self.buffer[:3], "big"):
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                return None
            self.buffer += chunk
        length = int.from_bytes(self.buffer[:3], "big")
        kind, flags = self.buffer[3], self.buffer[4]
        stream_id = int.from_bytes(self.buffer[5:9], "big") & 0x7FFFFFFF
        payload, self.buffer = self.buffer[9 : 9 + length], self.buffer[9 + length :]
        return kind, flags, stream_id, payload

    def answer(self, stream_id: int, window: int | None = None) -> Answer:
        """Reads until ``stream_id`` ends (END_STREAM or RST_STREAM). With ``window``, checks that
        no DATA goes past the stream's window and returns the window to the server once it is full."""
        answer = Answer()
        outstanding = 0
        while (got := self.read_frame()) is not None:
            kind, flags, sid, payload = got
            if kind == GOAWAY:
                raise AssertionError(f"GOAWAY {payload[4:8].hex()} {payload[8:]!r}")
            if sid != stream_id:
                continue
            if kind == HEADERS:
                answer.headers += [(str(n), str(v)) for n, v in self.decoder.decode(payload, raw=False)]
            elif kind == DATA:
                answer.data += payload
                outstanding += len(payload)
                if window is not None:
                    assert outstanding <= window, f"{outstanding} bytes of DATA in a window of {window}"
                    if outstanding == window:  # only a full window is returned: the server must wait
                        update = struct.pack(">I", outstanding)
                        self.send(frame(WINDOW_UPDATE, 0, 0, update) + frame(WINDOW_UPDATE, 0, stream_id, update))
                        outstanding = 0
            elif kind == RST_STREAM:
                answer.reset = int.from_bytes(payload, "big")
                return answer
            if flags & END_STREAM:
                return answer
        raise AssertionError("connection closed before the stream ended")

    def goaway(self) -> int:
        """Reads until the server's GOAWAY; returns its error code (and the socket then closes)."""
        while (got := self.read_frame()) is not None:
            kind, _, _, payload = got
            if kind == GOAWAY:
                assert self.read_frame() is None, "the connection stays open after a GOAWAY for an error"
                return int.from_bytes(payload[4:8], "big")
        raise AssertionError("closed without GOAWAY")


@pytest.fixture(scope="module")
def server(logs_dir: Path) -> Iterator[ServerProcess]:
    with running(EXAMPLES, "--grpc-max-message-bytes", str(MAX_MESSAGE), log_dir=logs_dir) as proc:
        yield proc


@pytest.fixture
def h2(server: ServerProcess) -> Iterator[RawH2]:
    connection = RawH2(server.grpc_port)
    yield connection
    connection.close()
    with grpcclient.InferenceServerClient(server.url) as client:  # the server still serves
        tensor = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 16), np.float32))
        out = client.infer("identity_fp32", [tensor]).as_numpy("OUTPUT0")
        assert out is not None
        assert out.tolist() == [[1.0] * 16]


def grpc_status(answer: Answer) -> tuple[int, str]:
    status = answer.header("grpc-status")
    assert status is not None, answer
    return int(status), answer.header("grpc-message") or ""


# --------------------------------------------------------------------------- calls that work


def test_unary_call_and_fast_path_headers(h2: RawH2) -> None:
    for stream_id in (1, 3):  # the second block is all indexed (the decoder's fast path)
        h2.request(stream_id)
        h2.send(frame(DATA, END_STREAM, stream_id, message(identity_request())))
        answer = h2.answer(stream_id)
        assert answer.header(":status") == "200"
        assert answer.header("content-type") == "application/grpc"
        assert grpc_status(answer) == (0, "")
        response = tpb.ModelInferResponse.FromString(answer.data[5:])
        assert np.frombuffer(response.raw_output_contents[0], np.float32).tolist() == list(range(16))


def test_small_client_window_gets_the_whole_answer(server: ServerProcess) -> None:
    """The client allows 512 bytes per stream: the 4 KiB answer waits for its WINDOW_UPDATEs."""
    h2 = RawH2(server.grpc_port, struct.pack(">HI", 4, 512))
    try:
        h2.request(1)
        h2.send(frame(DATA, END_STREAM, 1, message(identity_request(rows=64))))
        answer = h2.answer(1, window=512)
        assert grpc_status(answer) == (0, "")
        response = tpb.ModelInferResponse.FromString(answer.data[5:])
        assert np.frombuffer(response.raw_output_contents[0], np.float32).tolist() == list(range(64 * 16))
    finally:
        h2.close()


def test_padding_continuation_and_ping(h2: RawH2) -> None:
    h2.send(frame(PING, 0, 0, b"12345678"))
    kind, flags, _, payload = h2.read_frame() or (0, 0, 0, b"")
    while kind != PING:
        kind, flags, _, payload = h2.read_frame() or (0, 0, 0, b"")
    assert (flags, payload) == (1, b"12345678")
    block = h2.encoder.encode(
        [(":method", "POST"), (":scheme", "http"), (":path", INFER), ("content-type", "application/grpc")]
    )
    h2.send(frame(HEADERS, 0, 1, block[:5]) + frame(CONTINUATION, END_HEADERS, 1, block[5:]))
    body = message(identity_request())
    h2.send(frame(DATA, PADDED | END_STREAM, 1, bytes([7]) + body + bytes(7)))
    assert grpc_status(h2.answer(1)) == (0, "")


# ------------------------------------------------------------------------ calls that fail


def test_not_grpc_content_type_and_method(h2: RawH2) -> None:
    h2.request(1, content_type="application/json")
    assert h2.answer(1).header(":status") == "415"
    h2.request(3, method="GET")
    assert h2.answer(3).header(":status") == "405"


def test_unknown_method(h2: RawH2) -> None:
    h2.request(1, path="/inference.GRPCInferenceService/Nope")
    code, text = grpc_status(h2.answer(1))
    assert code == 12
    assert "Nope" in text


def test_bad_grpc_timeout(h2: RawH2) -> None:
    h2.request(1, extra=(("grpc-timeout", "soon"),))
    code, text = grpc_status(h2.answer(1))
    assert code == 3
    assert "grpc-timeout" in text


@pytest.mark.parametrize(
    ("body", "reason"),
    [(b"", "no message"), (message(b"") + message(b""), "more than one"), (b"\x00\x00", "no message")],
    ids=["none", "two", "partial-prefix"],
)
def test_unary_call_must_carry_one_message(h2: RawH2, body: bytes, reason: str) -> None:
    h2.request(1)
    h2.send(frame(DATA, END_STREAM, 1, body))
    code, text = grpc_status(h2.answer(1))
    assert code == 13
    assert reason in text


def test_message_over_the_limit_is_refused_from_its_prefix(h2: RawH2) -> None:
    """Only the 5-byte prefix is sent: the server answers without waiting for the body."""
    h2.request(1)
    h2.send(frame(DATA, 0, 1, struct.pack(">BI", 0, MAX_MESSAGE + 1)))
    answer = h2.answer(1)
    code, text = grpc_status(answer)
    assert code == 8
    assert "larger than max" in text


@pytest.mark.parametrize(
    ("encoding", "body", "code", "reason"),
    [
        ("snappy", message(b"x", compressed=True), 12, "not supported"),
        ("gzip", message(b"not gzip", compressed=True), 13, "not valid gzip"),
        ("gzip", message(gzip.compress(bytes(MAX_MESSAGE + 10)), compressed=True), 8, "larger than max"),
        ("identity", message(b"x")[:0] + b"\x02\x00\x00\x00\x01x", 13, "compression flag"),
    ],
    ids=["unknown", "corrupt", "bomb", "bad-flag"],
)
def test_compressed_messages(h2: RawH2, encoding: str, body: bytes, code: int, reason: str) -> None:
    h2.request(1, extra=(("grpc-encoding", encoding),))
    h2.send(frame(DATA, END_STREAM, 1, body))
    got, text = grpc_status(h2.answer(1))
    assert got == code
    assert reason in text


def test_gzip_request_is_answered(h2: RawH2) -> None:
    h2.request(1, extra=(("grpc-encoding", "gzip"),))
    h2.send(frame(DATA, END_STREAM, 1, message(gzip.compress(identity_request()), compressed=True)))
    assert grpc_status(h2.answer(1)) == (0, "")


# ---------------------------------------------------------------- connection-level violations


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (frame(DATA, END_STREAM, 5, b"x"), PROTOCOL_ERROR),  # stream never opened
        (frame(DATA, 0, 0, b"x"), PROTOCOL_ERROR),
        (frame(HEADERS, END_HEADERS, 2, b"\x82"), PROTOCOL_ERROR),  # even: a server's id
        (frame(HEADERS, END_HEADERS, 1, b"\xff\xff\xff\xff\x0f"), COMPRESSION_ERROR),
        (frame(HEADERS, 0, 1, b"\x82") + frame(PING, 0, 0, bytes(8)), PROTOCOL_ERROR),  # interrupted block
        (frame(CONTINUATION, END_HEADERS, 1, b"\x82"), PROTOCOL_ERROR),
        (frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 2**31)), FLOW_CONTROL_ERROR),
        (frame(SETTINGS, 0, 0, struct.pack(">HI", 5, 100)), PROTOCOL_ERROR),
        (frame(SETTINGS, 0, 0, b"\x00\x04\x00"), FRAME_SIZE_ERROR),
        (frame(SETTINGS, 0, 1), PROTOCOL_ERROR),
        (frame(PING, 0, 0, b"short"), FRAME_SIZE_ERROR),
        (frame(WINDOW_UPDATE, 0, 0, bytes(4)), PROTOCOL_ERROR),
        (frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 2**31 - 1)), FLOW_CONTROL_ERROR),
        (frame(PUSH_PROMISE, END_HEADERS, 1, bytes(4)), PROTOCOL_ERROR),
        (frame(RST_STREAM, 0, 0, bytes(4)), PROTOCOL_ERROR),
        (struct.pack(">HBBBI", 0xFFFF, 0xFF, DATA, 0, 1), FRAME_SIZE_ERROR),  # 16 MiB frame announced
        (frame(HEADERS, PADDED | END_HEADERS, 1, b"\x09\x82"), PROTOCOL_ERROR),
    ],
    ids=[
        "data-idle-stream", "data-stream-0", "even-stream", "bad-hpack", "interrupted-block", "stray-continuation",
        "window-too-large", "frame-size-too-small", "settings-length", "settings-on-stream", "ping-length",
        "window-update-0", "window-overflow", "push-promise", "rst-stream-0", "frame-too-large", "bad-padding",
    ],
)  # fmt: skip
def test_protocol_violations_end_the_connection(h2: RawH2, data: bytes, code: int) -> None:
    h2.send(data)
    assert h2.goaway() == code


def test_a_client_that_is_not_http2(server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.grpc_port), timeout=10) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = b""
        while chunk := sock.recv(1 << 16):
            reply += chunk
    frames = []
    while reply:
        length = int.from_bytes(reply[:3], "big")
        frames.append((reply[3], reply[9 : 9 + length]))
        reply = reply[9 + length :]
    kind, payload = frames[-1]
    assert kind == GOAWAY
    assert int.from_bytes(payload[4:8], "big") == PROTOCOL_ERROR
    assert b"HTTP/2" in payload[8:]  # the debug text says why


def test_stream_ids_must_grow(h2: RawH2) -> None:
    h2.request(3)
    h2.send(frame(DATA, END_STREAM, 3, message(identity_request())))
    assert grpc_status(h2.answer(3)) == (0, "")
    h2.request(1)
    assert h2.goaway() == PROTOCOL_ERROR


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    frames=st.lists(
        st.tuples(st.integers(0, 12), st.integers(0, 255), st.integers(0, 7), st.binary(max_size=64)),
        min_size=1,
        max_size=6,
    )
)
def test_random_frames_never_take_the_server_down(
    server: ServerProcess, frames: list[tuple[int, int, int, bytes]]
) -> None:
    h2 = RawH2(server.grpc_port)
    try:
        h2.send(b"".join(frame(kind, flags, sid, payload) for kind, flags, sid, payload in frames))
        h2.sock.settimeout(0.1)
        try:
            while h2.read_frame() is not None:
                pass
        except (TimeoutError, ConnectionResetError):
            pass
    finally:
        h2.close()
    check = RawH2(server.grpc_port)
    try:
        check.request(1)
        check.send(frame(DATA, END_STREAM, 1, message(identity_request())))
        assert grpc_status(check.answer(1)) == (0, "")
    finally:
        check.close()


def test_grpcio_frontend_still_serves(logs_dir: Path) -> None:
    """``--grpc-frontend grpcio`` keeps the grpc.aio server: unary and streaming calls answer."""
    with running(EXAMPLES, "--grpc-frontend", "grpcio", log_dir=logs_dir) as proc:
        with grpcclient.InferenceServerClient(proc.url) as client:
            tensor = grpcclient.InferInput("INPUT0", [2, 16], "FP32")
            tensor.set_data_from_numpy(np.full((2, 16), 2.5, np.float32))
            out = client.infer("identity_fp32", [tensor]).as_numpy("OUTPUT0")
            assert out is not None
            assert out.tolist() == [[2.5] * 16] * 2
            answers: list[object] = []
            client.start_stream(callback=lambda result, error: answers.append(error or result))
            client.async_stream_infer("identity_fp32", [tensor], request_id="s1")
            client.stop_stream()  # waits for the answers in flight
            assert len(answers) == 1
            assert isinstance(answers[0], grpcclient.InferResult)
        assert _health(proc.url, b"") == b"\x08\x01"
        assert "(grpcio front end)" in proc.log()


def _health(url: str, request: bytes) -> bytes:
    with grpc.insecure_channel(url) as channel:
        return bytes(channel.unary_unary("/grpc.health.v1.Health/Check")(request, timeout=10))


def test_grpc_health_check(server: ServerProcess) -> None:
    """What a Kubernetes ``grpc`` probe calls: HealthCheckRequest{service} -> {status: SERVING}."""
    serving = b"\x08\x01"
    assert _health(server.url, b"") == serving
    name = b"inference.GRPCInferenceService"
    assert _health(server.url, b"\x0a" + bytes([len(name)]) + name) == serving
    with pytest.raises(grpc.RpcError) as unknown:
        _health(server.url, b"\x0a\x04nope")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    for garbage in (b"\xff", b"\x0a\x05ab", b"\x0a\x02\xff\xfe"):
        with pytest.raises(grpc.RpcError) as bad:
            _health(server.url, garbage)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
