"""The native gRPC front end's bounds on work in flight: calls and request bytes, server-wide and
per connection. Past a bound a new call (or a new message) is refused at once with
RESOURCE_EXHAUSTED and a retry hint (``grpc-retry-pushback-ms``, honoured by grpc clients with a
retry policy); nothing waits in an unbounded queue."""

from __future__ import annotations

from dataclasses import dataclass

# How long a refused client should wait before trying again (gRPC's retry pushback, gRFC A6).
RETRY_PUSHBACK_MS = 100

# A streaming call's messages wait for its handler in a queue of at most this many messages and
# bytes (one message may overshoot the bytes); past it the stream's receive window is held, so a
# client that sends faster than the handler takes is stopped by HTTP/2 flow control (RFC 9113
# 5.2), not by server memory.
STREAM_QUEUE_MESSAGES = 16
STREAM_QUEUE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class CallLimits:
    """What one server allows in flight (see the ``grpc_max_*`` settings)."""

    max_message_bytes: int = 256 * 1024 * 1024
    max_calls: int = 16_384
    max_bytes: int = 1 << 30
    max_connection_bytes: int = 512 * 1024 * 1024


class Admission:
    """Counts the request bytes reserved, in all and per connection; every check is O(1). A message's bytes are
    reserved from its 5-byte prefix, before its body is buffered, and released when the call
    ends (unary) or the handler takes the message (streaming)."""

    __slots__ = ("by_connection", "bytes", "limits")

    def __init__(self, limits: CallLimits) -> None:
        # a limit below one whole message would refuse every large message: at least one fits
        floor = limits.max_message_bytes + 5
        self.limits = CallLimits(
            limits.max_message_bytes,
            limits.max_calls,
            max(limits.max_bytes, floor),
            max(limits.max_connection_bytes, floor),
        )
        self.bytes = 0
        self.by_connection: dict[object, int] = {}

    def reserve(self, connection: object, n: int) -> bool:
        used = self.by_connection.get(connection, 0)
        limits = self.limits
        if self.bytes + n > limits.max_bytes or used + n > limits.max_connection_bytes:
            return False
        self.bytes += n
        self.by_connection[connection] = used + n
        return True

    def release(self, connection: object, n: int) -> None:
        self.bytes -= n
        left = self.by_connection.get(connection, 0) - n
        if left > 0:
            self.by_connection[connection] = left
        else:  # no entry for a connection with nothing reserved: the table stays small
            self.by_connection.pop(connection, None)
