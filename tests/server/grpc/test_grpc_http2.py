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
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as tpb

from tests.h2client import (
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    INFER,
    PADDED,
    PING,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    Answer,
    RawH2,
    frame,
    message,
)
from tests.serverproc import EXAMPLES, ServerProcess, running

MAX_MESSAGE = 1 << 20


def identity_request(rows: int = 1) -> bytes:
    request = tpb.ModelInferRequest(model_name="identity_fp32")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[rows, 16])
    request.raw_input_contents.append(np.arange(rows * 16, dtype=np.float32).tobytes())
    return bytes(request.SerializeToString())


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
