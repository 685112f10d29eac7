"""A remote model's settings, from its config's ``parameters`` (docs/backends/remote.md):

  ``endpoints``           comma-separated ``host:port`` (each one endpoint), or one
                          ``dns:///name:port`` / ``name:port`` whose addresses are the endpoints,
                          re-resolved every ``resolve_interval_s`` (a Kubernetes headless Service)
  ``remote_model``        the model's name on the remote server (default: this model's name)
  ``remote_version``      its version there (default: empty, the server's choice)
  ``protocol``            ``grpc`` (default) or ``http`` (with the binary tensor extension)
  ``timeout_ms``          the longest one remote call may take (a batch, a health check)
  ``health_interval_ms``  how often each endpoint is asked ServerReady and ModelReady
  ``resolve_interval_s``  how often a DNS name is resolved again

Every bound is explicit: at most MAX_ENDPOINTS endpoints, responses of at most
MAX_RESPONSE_BYTES."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from backends.common.parameters import Parameters

ENDPOINTS = "endpoints"
REMOTE_MODEL = "remote_model"
REMOTE_VERSION = "remote_version"
PROTOCOL = "protocol"
TIMEOUT = "timeout_ms"
HEALTH_INTERVAL = "health_interval_ms"
RESOLVE_INTERVAL = "resolve_interval_s"
PROTOCOLS = ("grpc", "http")

MAX_ENDPOINTS = 64  # per model: each is a queue, a batcher, a connection and a health check
# the server's own default gRPC message limit (server/grpc/limits.py): a remote answer no larger
# than what clipperd itself would accept from a client
MAX_RESPONSE_BYTES = 256 * 1024 * 1024
_MAX_TIMEOUT_MS = 600_000  # 10 minutes
_MAX_INTERVAL_MS = 3_600_000
_DNS = "dns:///"
# a host name (RFC 1123 labels) or an IPv4 literal, or a bracketed IPv6 literal; then a port
_HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}))" r":(?P<port>[0-9]{1,5})")


@dataclass(frozen=True)
class Address:
    host: str  # without brackets
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class RemoteSettings:
    model: str  # this model's name (for messages)
    addresses: tuple[Address, ...]  # the endpoints as listed, or the one name to resolve
    resolve: bool  # addresses[0] is a DNS name whose addresses are the endpoints
    remote_model: str
    remote_version: str
    protocol: str
    timeout_s: float
    health_interval_s: float
    resolve_interval_s: float

    @property
    def source(self) -> str:
        """How messages name the endpoints setting."""
        return ",".join(str(a) for a in self.addresses)


def remote_settings(params: Parameters) -> RemoteSettings:
    """The settings, or ConfigError naming the parameter and the value."""
    addresses, resolve = _addresses(params)
    version = params.text(REMOTE_VERSION).strip()
    if version and not (version.isascii() and version.isdigit() and len(version) <= 19):
        raise params.fail(REMOTE_VERSION, "must be a version number")
    return RemoteSettings(
        model=params.model,
        addresses=addresses,
        resolve=resolve,
        remote_model=params.text(REMOTE_MODEL).strip() or params.model,
        remote_version=version,
        protocol=params.choice(PROTOCOL, PROTOCOLS, "grpc"),
        timeout_s=params.integer(TIMEOUT, 10_000, low=1, high=_MAX_TIMEOUT_MS, unit="milliseconds") / 1000,
        health_interval_s=params.integer(HEALTH_INTERVAL, 1000, low=10, high=_MAX_INTERVAL_MS, unit="milliseconds")
        / 1000,
        resolve_interval_s=params.integer(RESOLVE_INTERVAL, 30, low=1, high=86_400, unit="seconds"),
    )


def _addresses(params: Parameters) -> tuple[tuple[Address, ...], bool]:
    text = params.text(ENDPOINTS).strip()
    if not text:
        raise params.fail(ENDPOINTS, "must name at least one host:port (or dns:///name:port)")
    dns = text.startswith(_DNS)
    items = [item.strip() for item in text.removeprefix(_DNS).split(",")]
    if len(items) > MAX_ENDPOINTS:
        raise params.fail(ENDPOINTS, f"names {len(items)} endpoints, at most {MAX_ENDPOINTS} are allowed")
    if dns and len(items) > 1:
        raise params.fail(ENDPOINTS, "dns:/// takes one name:port")
    addresses = tuple(_address(params, item) for item in items)
    if len(set(addresses)) != len(addresses):
        raise params.fail(ENDPOINTS, "names an endpoint twice")
    resolve = dns or (len(addresses) == 1 and not _is_ip(addresses[0].host))
    return addresses, resolve


def _address(params: Parameters, item: str) -> Address:
    match = _HOST_PORT.fullmatch(item)
    port = int(match["port"]) if match else 0
    if match is None or not 0 < port < 65536:
        raise params.fail(ENDPOINTS, "each endpoint must be host:port with a port from 1 to 65535", item)
    host = match["host"].strip("[]")
    if match["host"].startswith("[") and not _is_ip(host):
        raise params.fail(ENDPOINTS, "a bracketed host must be an IPv6 address", item)
    return Address(host, port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
