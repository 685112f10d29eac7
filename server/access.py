"""Who may call what: the API each gRPC method and HTTP route belongs to, Triton's restricted
APIs (``--grpc-restricted-protocol`` / ``--http-restricted-api <apis>:<key>=<value>``), the
``--management-token`` bearer credential, and the default that closes management (model
repository, shared memory, applications admin) to clients that are not on the loopback address.

Only rules live here, nothing of a transport: the gRPC service and the REST API ask for the
:class:`Rule` of each method or route once, when they build their handlers (None: nothing to
check, the handler runs as it is), and call :meth:`Rule.denial` per request."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

from server.settings import Settings

# Triton's API names (its --grpc-restricted-protocol / --http-restricted-api), plus clipperd's own
HEALTH = "health"
METADATA = "metadata"
INFERENCE = "inference"
SHARED_MEMORY = "shared-memory"
MODEL_CONFIG = "model-config"
MODEL_REPOSITORY = "model-repository"
STATISTICS = "statistics"
APPLICATIONS_ADMIN = "applications-admin"
TRACE = "trace"
LOGGING = "logging"

APIS = (HEALTH, METADATA, INFERENCE, SHARED_MEMORY, MODEL_CONFIG, MODEL_REPOSITORY, STATISTICS, APPLICATIONS_ADMIN)
NOT_IMPLEMENTED = (TRACE, LOGGING)  # Triton's, not served here: no restriction can name them yet
MANAGEMENT = frozenset({MODEL_REPOSITORY, SHARED_MEMORY, APPLICATIONS_ADMIN})  # loopback only by default

# Triton's gRPC clients send a restriction's header as "triton-grpc-protocol-<key>"; both are taken
GRPC_KEY_PREFIX = "triton-grpc-protocol-"
MIN_TOKEN_CHARS = 16  # a management token shorter than this is refused at start (guessable)
_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")  # gRPC metadata / HTTP token chars
_FORMAT = "expected <api>[,<api>...]:<header>=<value>"

GRPC_METHOD_API: dict[str, str] = {
    "ServerLive": HEALTH,
    "ServerReady": HEALTH,
    "ModelReady": HEALTH,
    "ServerMetadata": METADATA,
    "ModelMetadata": METADATA,
    "ModelInfer": INFERENCE,
    "ModelStreamInfer": INFERENCE,
    "ModelConfig": MODEL_CONFIG,
    "ModelStatistics": STATISTICS,
    "RepositoryIndex": MODEL_REPOSITORY,
    "RepositoryModelLoad": MODEL_REPOSITORY,
    "RepositoryModelUnload": MODEL_REPOSITORY,
    "SystemSharedMemoryStatus": SHARED_MEMORY,
    "SystemSharedMemoryRegister": SHARED_MEMORY,
    "SystemSharedMemoryUnregister": SHARED_MEMORY,
    "CudaSharedMemoryStatus": SHARED_MEMORY,
    "CudaSharedMemoryRegister": SHARED_MEMORY,
    "CudaSharedMemoryUnregister": SHARED_MEMORY,
    "TraceSetting": TRACE,
    "LogSettings": LOGGING,
    "Check": HEALTH,  # grpc.health.v1.Health, as Triton files it
    "Watch": HEALTH,
}
_REGISTRATION = frozenset({"SystemSharedMemoryRegister", "CudaSharedMemoryRegister"})

# HTTP route templates (server/rest/router.py) by prefix and suffix, first match wins
_HTTP_PREFIXES = (
    ("/v2/health/", HEALTH),
    ("/v2/repository/", MODEL_REPOSITORY),
    ("/v2/systemsharedmemory", SHARED_MEMORY),
    ("/v2/cudasharedmemory", SHARED_MEMORY),
    ("/admin/", APPLICATIONS_ADMIN),  # clipperd's /admin/applications... and Clipper's /admin/add_app...
    ("/openapi.", METADATA),
    ("/metrics", STATISTICS),  # Clipper's JSON metrics on the HTTP port (Prometheus' are on the metrics port)
    ("/dashboard", STATISTICS),  # the dashboard's page (server/dashboard/): read-only, like metrics
    ("/v2/dashboard", STATISTICS),  # and its JSON feed
)
_HTTP_SUFFIXES = (
    ("/infer", INFERENCE),
    ("/generate", INFERENCE),  # Triton's generate extension
    ("/generate_stream", INFERENCE),
    ("/ready", HEALTH),
    ("/config", MODEL_CONFIG),
    ("/stats", STATISTICS),
    ("/{app}/predict", INFERENCE),  # Clipper's REST API: an application is queried like a model
    ("/{app}/update", INFERENCE),
    ("/feedback", INFERENCE),  # labels for predictions served (server/monitoring/feedback)
    ("/monitoring", STATISTICS),  # read-only, as the statistics
)


def grpc_api(method: str) -> str:
    """The API of a gRPC method (of the inference or the health service); ValueError if none."""
    api = GRPC_METHOD_API.get(method)
    if api is None:
        raise ValueError(f"gRPC method {method!r} belongs to no API: add it to server/access.py")
    return api


def http_api(path: str) -> str:
    """The API of an HTTP route template (``/v2/models/{model}/infer``); ValueError if none."""
    for prefix, api in _HTTP_PREFIXES:
        if path.startswith(prefix):
            return api
    for suffix, api in _HTTP_SUFFIXES:
        if path.endswith(suffix):
            return api
    if path == "/v2" or path.startswith("/v2/models/{model}"):
        return METADATA
    raise ValueError(f"HTTP route {path!r} belongs to no API: add it to server/access.py")


def is_registration(grpc_method: str = "", http_path: str = "") -> bool:
    """A call that maps a client's shared memory into the server (off with --no-allow-shared-memory)."""
    return grpc_method in _REGISTRATION or (
        http_path.startswith("/v2/systemsharedmemory/") and http_path.endswith("/register")
    )


# ---- addresses ---------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1, their IPv4-mapped form (::ffff:127.0.0.0/104), and ``unix`` (a Unix
    socket); anything else, an empty or unparsable host included, is remote."""
    if host == "unix":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def grpc_peer_host(peer: str) -> str:
    """The host of a gRPC peer string: ``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000`` (grpc core
    percent-encodes the brackets: ``ipv6:%5B::1%5D:5000``), ``unix:/path`` -> ``unix``."""
    scheme, _, rest = peer.partition(":")
    if scheme in ("unix", "unix-abstract"):
        return "unix"
    rest = unquote(rest)
    if rest.startswith("["):
        return rest[1 : rest.find("]")]
    return rest.rpartition(":")[0]


# ---- restrictions --------------------------------------------------------------------------


@dataclass(frozen=True)
class Restriction:
    """Triton's restricted API group: its APIs need header ``key`` equal to ``value``."""

    apis: tuple[str, ...]
    key: str  # lower case
    value: str = field(repr=False)  # a secret: never in a repr, a log line or an error


def parse_restriction(spec: str, flag: str) -> Restriction:
    """``<api>[,<api>...]:<key>=<value>``; ValueError with a one-line reason (never the value)."""
    apis_part, colon, setting = spec.partition(":")
    key, equals, value = setting.partition("=")
    if not colon or not equals:
        raise ValueError(f"{flag}: {_FORMAT}")
    apis = tuple(a.strip() for a in apis_part.split(","))
    for api in apis:
        if api in NOT_IMPLEMENTED:
            raise ValueError(f"{flag}: the {api} API is not implemented by clipperd, so it cannot be restricted")
        if api not in APIS:
            raise ValueError(f"{flag}: unknown API {api[:32]!r} (known: {', '.join(APIS)}); {_FORMAT}")
    key = key.strip().lower()
    if not key or not set(key) <= _KEY_CHARS or key.startswith(("grpc-", ":")) or key.endswith("-bin"):
        raise ValueError(f"{flag}: the header name must be letters, digits, '-', '_' or '.', not grpc-* or *-bin")
    if not value or value != value.strip() or not all(" " <= c <= "~" for c in value):
        raise ValueError(f"{flag}: the header value must be printable ASCII, without spaces at its ends")
    return Restriction(apis, key, value)


def parse_restrictions(specs: list[str], flag: str) -> dict[str, Restriction]:
    """Each API's restriction. The pieces may arrive split at commas (``CLIPPERD_*`` variables
    are comma-separated lists): a piece without ``:`` is an API name of the next piece."""
    by_api: dict[str, Restriction] = {}
    pending: list[str] = []
    for piece in specs:
        pending.append(piece)
        if ":" not in piece:
            continue
        restriction = parse_restriction(",".join(pending), flag)
        pending = []
        for api in restriction.apis:
            if api in by_api:
                raise ValueError(f"{flag}: the {api} API is in more than one restriction (each API in one only)")
            by_api[api] = restriction
    if pending:
        raise ValueError(f"{flag}: {_FORMAT}")
    return by_api


def check_token(token: str) -> None:
    if token and (len(token) < MIN_TOKEN_CHARS or not all("!" <= c <= "~" for c in token)):
        raise ValueError(
            f"--management-token: at least {MIN_TOKEN_CHARS} printable ASCII characters without spaces "
            "(e.g. the output of 'openssl rand -hex 32')"
        )


# ---- the rules ----------------------------------------------------------------------------

Header = Callable[[str], str | None]  # a request header (lower-case name) or None


def _equal(given: str | None, expected: bytes) -> bool:
    return given is not None and hmac.compare_digest(given.encode("utf-8", "replace"), expected)


def bearer(authorization: str | None) -> str | None:
    """The credential of ``Authorization: Bearer <token>`` (the scheme in any case, RFC 7235)."""
    if authorization is None:
        return None
    scheme, _, credential = authorization.strip().partition(" ")
    return credential.strip() if scheme.lower() == "bearer" else None


@dataclass(frozen=True)
class Rule:
    """What one method or route checks; built once, asked per request."""

    api: str
    transport: str  # "grpc" or "http": the wording of the refusal and the header names
    keys: tuple[str, ...] = ()  # a restriction's header names (empty: no restriction)
    value: bytes = field(default=b"", repr=False)
    token: bytes = field(default=b"", repr=False)  # the management token (empty: none)
    loopback_only: bool = False
    disabled: str = ""  # non-empty: refused to everyone, with this reason

    def denial(self, host: str, header: Header) -> str | None:
        """None when the request may go on; else why not (for PERMISSION_DENIED / 403)."""
        if self.disabled:
            return self.disabled
        if self.keys:
            if any(_equal(header(key), self.value) for key in self.keys) or self._has_token(header):
                return None
            what = "protocol" if self.transport == "grpc" else "API"
            return f"This {what} is restricted, expecting header '{self.keys[0]}'"  # Triton's words
        if not self.loopback_only or is_loopback(host) or self._has_token(header):
            return None
        return (
            f"the {self.api} API is closed to clients that are not on the loopback address; the server's "
            "operator can open it with --management-token (then send 'authorization: Bearer <token>') "
            "or --allow-remote-management (see docs/security.md)"
        )

    def _has_token(self, header: Header) -> bool:
        return bool(self.token) and self.api in MANAGEMENT and _equal(bearer(header("authorization")), self.token)


@dataclass(frozen=True)
class AccessPolicy:
    """The server's access settings; the default closes management to non-loopback clients."""

    grpc_restrictions: Mapping[str, Restriction] = field(default_factory=dict)
    http_restrictions: Mapping[str, Restriction] = field(default_factory=dict)
    token: str = field(default="", repr=False)
    allow_remote_management: bool = False
    allow_shared_memory: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessPolicy:
        """From a ``Settings``; ValueError with a one-line reason for a malformed flag."""
        check_token(settings.management_token)
        return cls(
            parse_restrictions(list(settings.grpc_restricted_protocol), "--grpc-restricted-protocol"),
            parse_restrictions(list(settings.http_restricted_api), "--http-restricted-api"),
            settings.management_token,
            settings.allow_remote_management,
            settings.allow_shared_memory,
        )

    def grpc_rule(self, method: str) -> Rule | None:
        restriction = self.grpc_restrictions.get(grpc_api(method))
        keys = () if restriction is None else (restriction.key, GRPC_KEY_PREFIX + restriction.key)
        return self._rule(grpc_api(method), "grpc", restriction, keys, is_registration(grpc_method=method))

    def http_rule(self, path: str) -> Rule | None:
        restriction = self.http_restrictions.get(http_api(path))
        keys = () if restriction is None else (restriction.key,)
        return self._rule(http_api(path), "http", restriction, keys, is_registration(http_path=path))

    def _rule(
        self, api: str, transport: str, restriction: Restriction | None, keys: tuple[str, ...], registration: bool
    ) -> Rule | None:
        disabled = ""
        if registration and not self.allow_shared_memory:
            disabled = "shared-memory registration is turned off on this server (--no-allow-shared-memory)"
        loopback_only = api in MANAGEMENT and not self.allow_remote_management
        if not (disabled or restriction or loopback_only):
            return None  # open to all: no check at all on this method's calls
        value = b"" if restriction is None else restriction.value.encode()
        return Rule(api, transport, keys, value, self.token.encode(), loopback_only, disabled)

    def grpc_region_rule(self) -> Rule | None:
        """What an inference request that names shared-memory regions needs: what the
        shared-memory API needs (a region another client registered is its memory)."""
        return self.grpc_rule("SystemSharedMemoryStatus")

    def http_region_rule(self) -> Rule | None:
        return self.http_rule("/v2/systemsharedmemory/status")

    def summary(self) -> str:
        """One line for the start-up log (names only, never a value or the token)."""
        closed = "open to every client" if self.allow_remote_management else "loopback clients only"
        parts = [f"management APIs ({', '.join(sorted(MANAGEMENT))}): {closed}"]
        if self.token:
            parts.append("a management token is set")
        if not self.allow_shared_memory:
            parts.append("shared-memory registration off")
        for transport, restrictions in (("gRPC", self.grpc_restrictions), ("HTTP", self.http_restrictions)):
            if restrictions:
                parts.append(f"{transport} restricted: {', '.join(sorted(restrictions))}")
        return "; ".join(parts)
