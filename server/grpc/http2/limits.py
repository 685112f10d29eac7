"""The bounds of the native HTTP/2 server, each named with the RFC or CVE it answers.

Every table, buffer, counter and wait that a client's bytes drive has one of these; reaching it
costs that client only (its stream is reset, or its connection gets GOAWAY and is closed). The
values follow nghttp2's and grpc's defaults where they have one. ``Http2Limits`` holds the ones
an operator may change (settings ``grpc_http2_*`` / ``grpc_max_connections*``)."""

from __future__ import annotations

import resource
from dataclasses import dataclass

from server.settings import Settings

# --- frames and header blocks (RFC 9113 §4.2, §6.10; RFC 7541 §4.1, §4.2) ----------------------
MAX_FRAME = 1 << 20  # SETTINGS_MAX_FRAME_SIZE we advertise: big tensors in few frames
MAX_HEADER_BLOCK = 64 * 1024  # HEADERS + CONTINUATION bytes of one block, before decoding
MAX_HEADER_LIST = 16 * 1024  # SETTINGS_MAX_HEADER_LIST_SIZE (decoded, 32 + name + value per field; grpc's)
MAX_HEADER_TABLE = 4096  # SETTINGS_HEADER_TABLE_SIZE (the default we never raise): HPACK size updates above it fail
MAX_CONTINUATIONS = 32  # CONTINUATION frames per header block (CVE-2024-27316 class: endless CONTINUATION)

MAX_FRAMES_PER_TURN = 256  # frames handled per turn of the event loop; the rest waits (loop fairness) ...
HEADERS_COST = 8  # ... a HEADERS counting as 8: at most 32 new calls a turn (grpc's max_requests_per_read)

# --- streams (RFC 9113 §5.1.2, CVE-2023-44487 Rapid Reset) -------------------------------------
MAX_STREAMS = 4096  # SETTINGS_MAX_CONCURRENT_STREAMS: more are refused with REFUSED_STREAM
RESET_BURST = 2 * MAX_STREAMS  # client RST_STREAMs of open streams a connection may send at once ...
RESET_RATE = 200.0  # ... then per second (token bucket); past it: GOAWAY ENHANCE_YOUR_CALM

# --- control frames that cost us work and make no progress (CVE-2019-9512 ping flood,
# CVE-2019-9515 settings flood, CVE-2019-9518 empty frames flood) --------------------------------
MAX_SETTINGS_ENTRIES = 32  # entries in one SETTINGS frame (nghttp2 caps at 32 too): more is ENHANCE_YOUR_CALM
SETTINGS_BURST = 64  # SETTINGS frames at once (each may walk every open stream: INITIAL_WINDOW_SIZE) ...
SETTINGS_RATE = 20.0  # ... then per second; past it: GOAWAY ENHANCE_YOUR_CALM
CONTROL_BURST = 10_000  # PING, SETTINGS, PRIORITY, empty DATA, unknown frames, WINDOW_UPDATE with nothing to send
CONTROL_RATE = 5_000.0  # ... refilled per second; past it: GOAWAY ENHANCE_YOUR_CALM
STREAM_CREDIT = 8  # ... and by each new call: gRPC clients send a WINDOW_UPDATE or two after each answer
ANSWER_CREDIT = 2  # ... and by each message sent: a stream of many answers earns its clients' WINDOW_UPDATEs

# --- flow control (RFC 9113 §6.9; CVE-2019-9517 internal data buffering) -----------------------
CONNECTION_WINDOW = 64 * 1024 * 1024  # our connection receive window (DATA past it: FLOW_CONTROL_ERROR)
MAX_QUEUED_OUTPUT = 32 * 1024 * 1024  # bytes queued for a peer that does not read (more: RST_STREAM)
MAX_QUEUED_OUTPUT_TOTAL = 1024 * 1024 * 1024  # the same, all connections together (many slow readers)
CLOSE_GRACE_S = 2.0  # a closing connection whose peer does not read its last frames is aborted after this


def _descriptor_bound() -> int:
    """Connections the process can hold: its descriptor limit less a margin for models and files."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 10_000 if soft == resource.RLIM_INFINITY else max(64, min(10_000, soft - 256))


@dataclass(frozen=True)
class Http2Limits:
    """What an operator may set (slowloris, idle connections, descriptor exhaustion)."""

    handshake_timeout_s: float = 10.0  # preface + first SETTINGS, and any one header block, within this
    idle_timeout_s: float = 300.0  # no open stream for this long: GOAWAY NO_ERROR, close (grpc's max_connection_idle)
    stall_timeout_s: float = 30.0  # output queued and none of it leaves for this long: the connection is aborted
    max_connections: int = 0  # in all (0: 10,000 or what RLIMIT_NOFILE allows); more get GOAWAY ENHANCE_YOUR_CALM
    max_connections_per_client: int = 1024  # from one IP address
    max_queued_output: int = MAX_QUEUED_OUTPUT
    max_queued_output_total: int = MAX_QUEUED_OUTPUT_TOTAL  # all connections together

    def __post_init__(self) -> None:
        for name in ("handshake_timeout_s", "idle_timeout_s", "stall_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"the HTTP/2 {name.removesuffix('_s').replace('_', ' ')} must be positive seconds")
        if self.max_connections < 0 or self.max_connections_per_client < 1 or self.max_queued_output < 1:
            raise ValueError("--grpc-max-connections must be 0 or more, --grpc-max-connections-per-client 1 or more")

    @classmethod
    def from_settings(cls, settings: Settings) -> Http2Limits:
        """The native HTTP/2 server's timeouts and connection limits; ValueError says what is wrong."""
        return cls(
            handshake_timeout_s=settings.grpc_http2_handshake_timeout_secs,
            idle_timeout_s=settings.grpc_http2_idle_timeout_secs,
            stall_timeout_s=settings.grpc_http2_stall_timeout_secs,
            max_connections=settings.grpc_max_connections,
            max_connections_per_client=settings.grpc_max_connections_per_client,
        )

    def connection_cap(self) -> int:
        return self.max_connections if self.max_connections > 0 else _descriptor_bound()

    def tick_s(self) -> float:
        """How often a connection checks its timeouts: a quarter of the shortest, 50 ms to 1 s."""
        shortest = min(self.handshake_timeout_s, self.idle_timeout_s, self.stall_timeout_s)
        return min(1.0, max(0.05, shortest / 4))


class RateBudget:
    """A token bucket: ``burst`` events at once, then ``rate`` a second. O(1), no allocation."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, burst: float, rate: float, now: float) -> None:
        self.burst = burst
        self.rate = rate
        self.tokens = burst
        self.stamp = now

    def spend(self, now: float) -> bool:
        """One event at ``now``: False when the budget is spent."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        self.stamp = now
        if tokens > self.burst:
            tokens = self.burst
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True
