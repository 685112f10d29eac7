"""What the HTTP/1.1 server lets clients hold: how long a request's head and body may take, how
long a keep-alive connection may idle, how many connections (in all and per client address), and
how many requests and request-body bytes the whole server holds at once. Past a bound the client
gets 408 (too slow) or 503 with ``Retry-After`` (too many), never a queue that grows without end.

Slowloris (a head or a body trickled a byte at a time, CVE-2007-6750's class) is cut by the
head timeout (the whole head within ``header_timeout_s`` of its first byte, however steadily it
trickles) and the body's minimum rate (``body_min_rate`` bytes a second, judged over windows of
``body_timeout_s``), as Apache's mod_reqtimeout and nginx's client_header_timeout /
client_body_timeout do."""

from __future__ import annotations

from dataclasses import dataclass

from server.settings import Settings

RETRY_AFTER_S = 1  # what a refused client is told to wait (Retry-After, RFC 9110 §10.2.3)


@dataclass(frozen=True)
class HttpLimits:
    header_timeout_s: float = 30.0  # the request line and headers, from their first byte
    body_timeout_s: float = 30.0  # the window over which the body's rate is judged
    body_min_rate: int = 1024  # bytes a second a body must average over each window
    idle_timeout_s: float = 75.0  # a keep-alive connection with no request in progress
    max_connections: int = 10_000  # open at once, all clients together
    # per client address: high enough for one client holding 6,000 concurrent HTTP/1.1 calls
    # (one connection each), low enough that one client cannot take every connection
    max_connections_per_client: int = 8_192
    max_requests: int = 16_384  # received and not yet answered, all connections together
    max_buffered_body_bytes: int = 1 << 30  # request bodies held in memory, all requests together

    def __post_init__(self) -> None:
        for name in ("header_timeout_s", "body_timeout_s", "idle_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{_FLAGS[name]} must be a positive number of seconds")
        for name in ("body_min_rate", "max_connections", "max_connections_per_client", "max_requests"):
            if getattr(self, name) < (0 if name == "body_min_rate" else 1):
                raise ValueError(f"{_FLAGS[name]} is too small")
        if self.max_buffered_body_bytes < 1:
            raise ValueError(f"{_FLAGS['max_buffered_body_bytes']} is too small")

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(
            settings.http_header_timeout_secs,
            settings.http_body_timeout_secs,
            settings.http_body_min_rate,
            settings.http_idle_timeout_secs,
            settings.http_max_connections,
            settings.http_max_connections_per_client,
            settings.http_max_requests,
            settings.http_max_buffered_body_size,
        )

    def sweep_interval_s(self) -> float:
        """How often the timeouts are checked: a quarter of the shortest, between 50 ms and 1 s
        (a connection is closed at most that late)."""
        shortest = min(self.header_timeout_s, self.body_timeout_s, self.idle_timeout_s)
        return min(1.0, max(0.05, shortest / 4))

    def body_bytes_per_window(self) -> int:
        return max(1, int(self.body_min_rate * self.body_timeout_s))  # silence never passes


_FLAGS = {  # each limit's command-line flag, for the messages
    "header_timeout_s": "--http-header-timeout-secs",
    "body_timeout_s": "--http-body-timeout-secs",
    "body_min_rate": "--http-body-min-rate",
    "idle_timeout_s": "--http-idle-timeout-secs",
    "max_connections": "--http-max-connections",
    "max_connections_per_client": "--http-max-connections-per-client",
    "max_requests": "--http-max-requests",
    "max_buffered_body_bytes": "--http-max-buffered-body-size",
}


class Admission:
    """The server-wide counts the limits bound. Everything runs on the event loop: no locks."""

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.connections = 0
        self.per_client: dict[str, int] = {}
        self.requests = 0
        self.buffered = 0

    def connect(self, client: str) -> bool:
        """Counts a new connection from ``client``; False (and nothing counted) past a bound."""
        held = self.per_client.get(client, 0)
        if self.connections >= self.limits.max_connections or held >= self.limits.max_connections_per_client:
            return False
        self.connections += 1
        self.per_client[client] = held + 1
        return True

    def disconnect(self, client: str) -> None:
        self.connections -= 1
        held = self.per_client[client] - 1
        if held:
            self.per_client[client] = held
        else:
            del self.per_client[client]  # the table holds only clients with a connection open

    def admit_request(self) -> bool:
        """Takes a request slot; False when the server holds as many requests or body bytes as
        it may."""
        if self.requests >= self.limits.max_requests or self.buffered >= self.limits.max_buffered_body_bytes:
            return False
        self.requests += 1
        return True

    def take_bytes(self, size: int) -> bool:
        if self.buffered + size > self.limits.max_buffered_body_bytes:
            return False
        self.buffered += size
        return True

    def release(self, requests: int, size: int) -> None:
        self.requests -= requests
        self.buffered -= size
