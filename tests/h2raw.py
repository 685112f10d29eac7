"""A raw HTTP/2 attacker on a socket, for the adversarial tests: it sends exactly the bytes a test
asks for (in a thread when the server may stop reading) and reads what the server does about it
(GOAWAY with its code, RST_STREAM with its code, or the socket closed), with the time it took."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass

from tests.h2client import PREFACE, RawH2, frame

PRIORITY, RST_STREAM, SETTINGS, GOAWAY = 2, 3, 4, 7
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, STREAM_CLOSED = 0, 1, 3, 5
FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 6, 7, 8, 9, 11
CODES = {
    0: "NO_ERROR",
    1: "PROTOCOL_ERROR",
    2: "INTERNAL_ERROR",
    3: "FLOW_CONTROL_ERROR",
    5: "STREAM_CLOSED",
    6: "FRAME_SIZE_ERROR",
    7: "REFUSED_STREAM",
    8: "CANCEL",
    9: "COMPRESSION_ERROR",
    11: "ENHANCE_YOUR_CALM",
}


@dataclass(frozen=True)
class Action:
    """What the server did: ``kind`` is GOAWAY, RST_STREAM, closed (no GOAWAY) or none (within
    the wait); ``code`` the HTTP/2 error code; ``after_s`` from the end of the attack."""

    kind: str
    code: int | None
    after_s: float

    def __str__(self) -> str:
        name = CODES.get(self.code, str(self.code)) if self.code is not None else ""
        return f"{self.kind} {name}".strip()


def settings_entries(*pairs: tuple[int, int]) -> bytes:
    return b"".join(struct.pack(">HI", key, value) for key, value in pairs)


def hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class Attacker(RawH2):
    """RawH2 with a background sender and a reader of the server's action."""

    def __init__(self, port: int, settings_payload: bytes = b"", handshake: bool = True) -> None:
        if handshake:
            super().__init__(port, settings_payload)
        else:  # a bare socket: the test sends the preface (or not) itself
            import hpack

            self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            self.encoder = hpack.Encoder()
            self.decoder = hpack.Decoder()
            self.buffer = b""
        self.sent_at = time.monotonic()
        self.resets: list[tuple[int, int]] = []
        self._sender: threading.Thread | None = None

    def send_in_background(self, data: bytes) -> None:
        """Sends ``data`` from a thread (the server may stop reading until we read); ``sent_at``
        is when the last byte left."""

        def run() -> None:
            with contextlib.suppress(OSError):  # the server closed: the main thread reads its action
                self.sock.sendall(data)
            self.sent_at = time.monotonic()

        self._sender = threading.Thread(target=run, daemon=True)
        self._sender.start()

    def request_headers(
        self, stream_id: int, end_stream: bool = False, extra: tuple[tuple[str, str], ...] = ()
    ) -> bytes:
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/inference.GRPCInferenceService/ModelInfer"),
            (":authority", "127.0.0.1"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *extra,
        ]
        return frame(1, 0x4 | int(end_stream), stream_id, self.encoder.encode(headers))

    def action(self, wait_s: float, stream_id: int | None = None) -> Action:
        """Reads until GOAWAY, RST_STREAM on ``stream_id`` (any stream if None), or the socket
        closes, for at most ``wait_s`` after the attack was sent."""
        if self._sender is not None:
            self._sender.join(timeout=wait_s + 30)
            if self._sender.is_alive():
                return Action("none (send blocked)", None, time.monotonic() - self.sent_at)
        end = self.sent_at + wait_s
        while (left := end - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                got = self.read_frame()
            except TimeoutError:
                break
            except OSError:
                got = None
            if got is None:
                return Action("closed", None, time.monotonic() - self.sent_at)
            kind, _, sid, payload = got
            if kind == GOAWAY:
                return Action("GOAWAY", int.from_bytes(payload[4:8], "big"), time.monotonic() - self.sent_at)
            if kind == RST_STREAM:
                self.resets.append((sid, int.from_bytes(payload, "big")))
                if stream_id is None or sid == stream_id:
                    return Action("RST_STREAM", self.resets[-1][1], time.monotonic() - self.sent_at)
        return Action("none", None, wait_s)

    def closed_within(self, wait_s: float) -> float | None:
        """Seconds until the server closes the socket (reading and dropping what it sends), or None."""
        end = time.monotonic() + wait_s
        while (left := end - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                if not self.sock.recv(1 << 16):
                    return time.monotonic() - self.sent_at
            except TimeoutError:
                return None
            except OSError:
                return time.monotonic() - self.sent_at
        return None


__all__ = ["PREFACE", "Action", "Attacker", "frame", "hpack_int", "settings_entries"]
