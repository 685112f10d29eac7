"""A raw HTTP/2 client on a socket (gRPC requests by hand): it sends exactly the bytes a test asks
for and reads the frames the server sends back. The protocol tests and the attacks build on it."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0, 1, 3, 4, 5, 6, 7, 8, 9,
)  # fmt: skip
END_STREAM, END_HEADERS, PADDED = 0x1, 0x4, 0x8
PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, COMPRESSION_ERROR = 1, 3, 6, 9
INFER = "/inference.GRPCInferenceService/ModelInfer"


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return struct.pack(">HBBBI", n >> 8, n & 0xFF, kind, flags, stream_id) + payload


def message(body: bytes, compressed: bool = False) -> bytes:
    return struct.pack(">BI", int(compressed), len(body)) + body


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
