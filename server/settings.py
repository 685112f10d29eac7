"""Server settings: one typed field each, documented once, read from the command line with
defaults from ``CLIPPERD_<FIELD>`` environment variables (Triton's defaults otherwise)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from backends.common.parameters import boolean_word
from schedulers.rate_limiter import ResourceLimit, parse_resource

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")  # scheme://: a bucket, not a folder


def _setting(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class Settings:
    model_repository: Path | str = _setting(
        Path("model_repository"),
        "The model repository (Triton layout): a folder, or a bucket, s3://bucket/prefix or "
        "s3://[https://]host:port/bucket/prefix, copied to --repository-cache-dir (see docs/deploy.md); "
        "--model-store is Triton's other name for it.",
        aliases=("--model-store",),
        parse=lambda t: parse_repository(t),
    )
    model_control_mode: str = _setting(
        "none",
        "none: load every model at start, refuse load/unload calls; explicit: load what --load-model "
        "names, then through the API; poll: load everything and rescan the repository periodically.",
        choices=("none", "explicit", "poll"),
    )
    load_model: list[str] = _setting(
        None, "In explicit mode, a model to load at start ('*' for all); may be repeated.", multiple=True
    )
    repository_poll_secs: float = _setting(15.0, "Seconds between repository scans in poll mode.")
    repository_cache_dir: str = _setting(
        "",
        "Where a bucket repository is copied (one sub-folder per URL); empty: $XDG_CACHE_HOME/clipperd, "
        "else ~/.cache/clipperd.",
    )
    repository_settle_secs: float = _setting(
        1.0,
        "Bucket repositories: at start and on a load request, the wait between the two listings that "
        "must agree before a changed version folder or config is copied (poll mode: --repository-poll-secs).",
    )
    repository_max_objects: int = _setting(
        10_000, "Bucket repositories: the most objects a repository may hold; past it the bucket is not copied."
    )
    repository_max_bytes: int = _setting(
        64 * 1024**3, "Bucket repositories: the most bytes a repository may hold; past it the bucket is not copied."
    )
    host: str = _setting("0.0.0.0", "Address every endpoint binds (Triton binds all interfaces).")
    grpc_address: str = _setting("", "Address the gRPC port binds (Triton's flag; empty: --host).")
    http_address: str = _setting("", "Address the HTTP/REST port binds (Triton's flag; empty: --host).")
    allow_grpc: bool = _setting(True, "Serve KServe v2 gRPC (Triton's flag); off, no gRPC port is bound.")
    allow_http: bool = _setting(True, "Serve KServe v2 HTTP/REST (Triton's flag); off, no HTTP port is bound.")
    grpc_port: int = _setting(8001, "KServe v2 gRPC port (0 picks a free one).")
    http_port: int = _setting(8000, "KServe v2 HTTP/REST port (0 picks a free one).")
    metrics_port: int = _setting(8002, "Prometheus metrics port: GET /metrics (0 picks a free one).")
    allow_metrics: bool = _setting(
        True, "Serve Prometheus metrics (as Triton's --allow-metrics); off, no metrics port is bound."
    )
    grpc_frontend: str = _setting(
        "native",
        "native: gRPC on the project's own HTTP/2 connection (a fraction of grpc.aio's CPU per call); "
        "grpcio: the grpc.aio server, for anything the native one does not speak (see docs/grpc.md).",
        choices=("native", "grpcio"),
    )
    grpc_max_message_bytes: int = _setting(
        256 * 1024 * 1024, "Largest gRPC message accepted or sent (RESOURCE_EXHAUSTED)."
    )
    http_max_input_size: int = _setting(
        256 * 1024 * 1024, "Largest HTTP request body accepted as sent, compressed or not (413 above it)."
    )
    http_max_decompressed_size: int = _setting(
        256 * 1024 * 1024, "Largest HTTP request body after gzip/deflate decoding (413 above it)."
    )
    grpc_http2_bdp_probe: bool = _setting(
        False,
        "HTTP/2 BDP probing: PING frames that grow flow-control windows on long, fast links. It costs "
        "CPU on every call (5-10 %% of small-request throughput here); off, each stream gets the fixed "
        "window below, which keeps large tensors fast on a data-centre network.",
    )
    grpc_http2_lookahead_bytes: int = _setting(8 * 1024 * 1024, "Each gRPC stream's HTTP/2 flow-control window.")
    strict_readiness: bool = _setting(
        True, "Server readiness requires every model asked for at start to be ready (as Triton's)."
    )
    gil_switch_interval_us: int = _setting(
        500,
        "Python's GIL switch interval (sys.setswitchinterval), µs: how long a thread that wants the GIL "
        "may wait for the one holding it. Python's 5000 µs stalls model instance threads between the "
        "steps of a batch while the event loop is busy; 0 keeps Python's default.",
    )
    app_state: str = _setting(
        "",
        "Where application definitions and policy states persist: empty for SQLite in "
        "<model-repository>/.clipperd/applications.sqlite, sqlite:///path, redis://host:port/db "
        "(replicas share state), or memory:// (nothing kept). See docs/applications.md.",
    )
    cache_config: list[str] = _setting(
        None,
        "Triton's response cache: '<cache>,<key>=<value>', here 'local,size=<bytes>' (may be repeated); "
        "models opt in with 'response_cache { enable: true }'. Not given: no cache.",
        multiple=True,
    )
    rate_limit: str = _setting(
        "off",
        "Triton's rate limiter: execution_count starts an instance's execution only when the resources "
        "its instance group's rate_limiter lists are free (see docs/repository.md); off: as soon as an "
        "instance is idle.",
        choices=("execution_count", "off"),
    )
    rate_limit_resource: list[str] = _setting(
        None,
        "With --rate-limit execution_count: '<name>:<count>[:<device>]' sets how many copies of a "
        "resource the server has (device: a GPU number or cpu; none: every device and the global "
        "resource); may be repeated. Default: the most any loaded instance asks for.",
        multiple=True,
    )
    exit_timeout_secs: float = _setting(30.0, "On SIGTERM, how long in-flight requests may take to finish.")
    log_level: str = _setting("INFO", "Logging level.", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    log_verbose: int = _setting(
        0, "Triton's verbose logging: 1 or more (or true) logs at DEBUG too.", parse=lambda t: parse_log_verbose(t)
    )
    log_info: bool = _setting(True, "Triton's: log INFO messages (false drops them).")
    log_warning: bool = _setting(True, "Triton's: log WARNING messages (false drops them).")
    log_error: bool = _setting(True, "Triton's: log ERROR messages (false drops them).")
    server_id: str = _setting(
        "clipperd",
        "The server's name in ServerMetadata (--id is Triton's name; Triton's own default is 'triton').",
        aliases=("--id",),
    )
    strict_model_config: bool = _setting(
        False,
        "Triton's flag, accepted either way: clipperd always needs a config file (config.pbtxt or YAML) and "
        "always fills an ONNX config's missing inputs and outputs from the graph (see docs/cli.md).",
    )
    backend_config: list[str] = _setting(
        None,
        "Triton's '<backend>,<setting>=<value>' (may be repeated): checked, then ignored with a warning, since "
        "no clipperd backend has a server-wide setting (see docs/cli.md).",
        multiple=True,
    )
    gc_freeze: bool = _setting(
        True,
        "After start-up, collect garbage once and freeze what survived (gc.freeze), so the collections "
        "that requests cause do not walk every module and model again; off keeps Python's default.",
    )
    grpc_restricted_protocol: list[str] = _setting(
        None,
        "Triton's restricted protocols: '<api>[,<api>...]:<header>=<value>' (may be repeated, each API in one "
        "only): gRPC calls of those APIs need metadata <header> (or triton-grpc-protocol-<header>) equal to "
        "<value>, else PERMISSION_DENIED. APIs: health, metadata, inference, shared-memory, model-config, "
        "model-repository, statistics, applications-admin. See docs/security.md.",
        multiple=True,
    )
    http_restricted_api: list[str] = _setting(
        None,
        "Triton's restricted APIs over HTTP, as --grpc-restricted-protocol: requests of those APIs need "
        "header <header> equal to <value>, else 403.",
        multiple=True,
    )
    management_token: str = field(
        default="",
        repr=False,  # a secret: never in a repr or a log line
        metadata={
            "help": "A bearer token that opens the management APIs (model-repository, shared-memory, "
            "applications-admin) to any client sending 'authorization: Bearer <token>'; at least 16 "
            "characters. Prefer the environment (CLIPPERD_MANAGEMENT_TOKEN): a flag shows in ps."
        },
    )
    allow_remote_management: bool = _setting(
        False,
        "Open the management APIs to clients that are not on the loopback address without a credential "
        "(they are closed to them by default; see docs/security.md).",
    )
    allow_shared_memory: bool = _setting(
        True,
        "Accept shared-memory registration (from loopback clients, or others as management allows); off: "
        "refused to every client (PERMISSION_DENIED / 403).",
    )
    metrics_host: str = _setting(
        "",
        "Address the metrics port binds (empty: --http-address, else --host, as Triton); "
        "--metrics-address is Triton's name.",
        aliases=("--metrics-address",),
    )
    metrics_interval_ms: int = _setting(
        2000,
        "Triton's flag: milliseconds between two reads of the GPUs' figures (nv_gpu_*) through NVML, "
        "off the request path; at least 100.",
        parse=lambda t: parse_interval_ms(t),
    )
    grpc_use_ssl: bool = _setting(
        False, "Serve gRPC over TLS (Triton's flag; ALPN h2); needs --grpc-server-cert and --grpc-server-key."
    )
    grpc_server_cert: str = _setting("", "PEM file: the gRPC server's certificate, then its chain.")
    grpc_server_key: str = _setting("", "PEM file: the gRPC server's private key (unencrypted).")
    grpc_root_cert: str = _setting(
        "", "PEM file: the CAs that client certificates must chain to (required with --grpc-use-ssl-mutual)."
    )
    grpc_use_ssl_mutual: bool = _setting(
        False, "Mutual TLS on gRPC: every client presents a certificate from --grpc-root-cert (implies --grpc-use-ssl)."
    )
    http_use_ssl: bool = _setting(
        False, "Serve HTTP/REST over TLS (ALPN http/1.1); needs --http-server-cert and --http-server-key."
    )
    http_server_cert: str = _setting("", "PEM file: the HTTP server's certificate, then its chain.")
    http_server_key: str = _setting("", "PEM file: the HTTP server's private key (unencrypted).")
    http_root_cert: str = _setting(
        "", "PEM file: the CAs that client certificates must chain to (required with --http-use-ssl-mutual)."
    )
    http_use_ssl_mutual: bool = _setting(
        False, "Mutual TLS on HTTP: every client presents a certificate from --http-root-cert (implies --http-use-ssl)."
    )
    tls_reload_poll_secs: float = _setting(
        5.0,
        "Seconds between checks of the TLS certificate, key and root files: a change loads them for new "
        "connections (SIGHUP does at once); 0: only on SIGHUP.",
    )
    tls_handshake_timeout_secs: float = _setting(
        10.0, "A client that has not completed its TLS handshake in this many seconds is disconnected."
    )
    grpc_max_inflight_calls: int = _setting(
        16_384,
        "gRPC calls in flight, all connections together; past it a new call is refused at once with "
        "RESOURCE_EXHAUSTED (the native front end adds grpc-retry-pushback-ms). Both front ends.",
    )
    grpc_max_inflight_bytes: int = _setting(
        1 << 30,
        "Request bytes held by gRPC calls in flight, all connections together (native front end): each "
        "message's bytes are reserved from its 5-byte prefix; past it the call is refused with "
        "RESOURCE_EXHAUSTED. At least one message of --grpc-max-message-bytes always fits.",
    )
    grpc_max_connection_inflight_bytes: int = _setting(
        512 * 1024 * 1024,
        "The same bound for one connection (native front end), so one client cannot take it all.",
    )
    http_header_timeout_secs: float = _setting(
        30.0, "An HTTP request's line and headers must arrive within this of their first byte (408, closed)."
    )
    http_body_timeout_secs: float = _setting(
        30.0, "An HTTP request body slower than --http-body-min-rate over this many seconds is cut (408)."
    )
    http_body_min_rate: int = _setting(1024, "Bytes a second an HTTP request body must average (see above).")
    http_idle_timeout_secs: float = _setting(75.0, "An HTTP keep-alive connection idle this long is closed.")
    http_max_connections: int = _setting(
        10_000, "Open HTTP connections, all clients together; past it a new one gets 503 and is closed."
    )
    http_max_connections_per_client: int = _setting(
        8_192, "Open HTTP connections per client address (503 past it); 6,000 concurrent calls fit."
    )
    http_max_requests: int = _setting(
        16_384, "HTTP requests received and not yet answered, all connections together (503 past it)."
    )
    http_max_buffered_body_size: int = _setting(
        1024 * 1024 * 1024, "HTTP request-body bytes held in memory, all requests together (503 past it)."
    )
    grpc_http2_handshake_timeout_secs: float = _setting(
        10.0,
        "Seconds a gRPC connection may take to send the HTTP/2 preface and its first SETTINGS, and any "
        "one header block (slowloris); then it is closed.",
    )
    grpc_http2_idle_timeout_secs: float = _setting(
        300.0,
        "Seconds a gRPC connection may stay with no open call; then GOAWAY and close (grpc's max_connection_idle).",
    )
    grpc_http2_stall_timeout_secs: float = _setting(
        30.0,
        "Seconds answers may wait for a client that does not read them (zero window, full socket); then "
        "the connection is closed (native front end).",
    )
    grpc_max_connections: int = _setting(
        0, "gRPC connections in all, native front end (0: 10,000 or what the descriptor limit allows)."
    )
    grpc_max_connections_per_client: int = _setting(
        1024, "gRPC connections from one client address, native front end; more get GOAWAY ENHANCE_YOUR_CALM."
    )

    def __post_init__(self) -> None:
        if self.load_model is None:
            self.load_model = []
        if self.cache_config is None:
            self.cache_config = []
        if self.rate_limit_resource is None:
            self.rate_limit_resource = []
        if self.backend_config is None:
            self.backend_config = []
        if self.grpc_restricted_protocol is None:
            self.grpc_restricted_protocol = []
        if self.http_restricted_api is None:
            self.http_restricted_api = []

    def rate_limits(self) -> list[ResourceLimit]:
        """``--rate-limit-resource`` parsed; ValueError says which one is wrong."""
        return [parse_resource(text) for text in self.rate_limit_resource]

    def cache_bytes(self) -> int:
        """The response cache's size from ``cache_config`` (0: no cache); ValueError says what is wrong."""
        return parse_cache_config(self.cache_config)


def setting_fields() -> list[Any]:
    return list(fields(Settings))


def env_name(name: str) -> str:
    return f"CLIPPERD_{name.upper()}"


def env_default(name: str, default: Any) -> Any:
    """``CLIPPERD_GRPC_PORT=9001`` overrides the default of ``grpc_port``; a value that does not
    parse is a ValueError naming the variable, checked as the flag's own value would be."""
    value = os.environ.get(env_name(name))
    if value is None:
        return default
    if isinstance(default, list) or default is None:
        return [v for v in value.split(",") if v]
    meta = next(f.metadata for f in setting_fields() if f.name == name)
    try:
        return convert(name, default, meta, value)
    except ValueError as error:
        raise ValueError(f"{env_name(name)}: {error}") from None


def convert(name: str, default: Any, meta: Any, text: str) -> Any:
    """One setting's value from its text, as the flag and the variable both give it."""
    if "parse" in meta:
        return meta["parse"](text)
    if isinstance(default, bool):
        return parse_bool(text)
    if "choices" in meta:
        if text not in meta["choices"]:
            raise ValueError(f"expected one of {', '.join(meta['choices'])}, got {text[:32]!r}")
        return text
    if isinstance(default, Path):
        if not text.strip():
            raise ValueError("expected a path, got an empty value")
        return Path(text)
    if isinstance(default, int):
        number = _number(int, "a whole number", text)
        if name.endswith("_port") and not 0 <= number <= 65535:
            raise ValueError(f"expected a port from 0 to 65535, got {number}")
        return number
    if isinstance(default, float):
        return _number(float, "a number", text)
    return text


def _number(kind: type[int] | type[float], what: str, text: str) -> Any:
    try:
        value = kind(text.strip())
    except ValueError:
        raise ValueError(f"expected {what}, got {text[:32]!r}") from None
    if value < 0 or value != value or value == float("inf"):  # negative, NaN or infinite
        raise ValueError(f"expected {what}, at least 0, got {text[:32]!r}")
    return value


def parse_repository(text: str) -> Path | str:
    """``--model-repository``: a folder, or a URL kept as written (a Path would fold its ``//``);
    server/storage/location.py reads the URL."""
    if not text.strip():
        raise ValueError("expected a path (a folder) or a bucket URL, got an empty value")
    return text if _URL.match(text) else Path(text)


def parse_interval_ms(text: str) -> int:
    """A sampling interval in milliseconds, at least 100 (NVML's figures move no faster)."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected an integer number of milliseconds, got {text[:32]!r}") from None
    if value < 100:
        raise ValueError(f"expected at least 100 ms, got {value}")
    return value


def parse_log_verbose(text: str) -> int:
    """Triton's ``--log-verbose``: a level (0 off, 1 and above on), or true/false."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return int(lowered == "true")
    return int(_number(int, "a verbosity level (0, 1, ...) or true/false", text))


def parse_bool(text: str) -> bool:
    """Triton's boolean values (``--grpc-use-ssl=true``), and 1/0, yes/no, on/off."""
    value = boolean_word(text)
    if value is None:
        raise ValueError(f"expected true or false (or 1/0, yes/no, on/off), got {text[:32]!r}")
    return value


CACHES = ("local",)  # the cache implementations clipperd has (Triton also ships 'redis')
_CACHE_EXAMPLE = "expected <cache>,<key>=<value>, e.g. local,size=1048576"


def parse_cache_config(values: list[str]) -> int:
    """Triton's ``--cache-config local,size=<bytes>``: the local cache's size in bytes (0 when no
    value is given). Each value is ``<cache>,<key>=<value>[,<key>=<value>...]``; the pieces may
    also arrive split at the commas (``CLIPPERD_CACHE_CONFIG=local,size=1048576``)."""
    if not values:
        return 0
    cache, settings = "", {}
    for piece in ",".join(values).split(","):
        key, equals, value = piece.strip().partition("=")
        if not equals:
            if key not in CACHES:
                raise ValueError(f"--cache-config: unknown cache {key[:32]!r} (clipperd has: local); {_CACHE_EXAMPLE}")
            cache = key
        elif not cache:
            raise ValueError(f"--cache-config: {piece[:32]!r} names no cache first; {_CACHE_EXAMPLE}")
        elif key != "size":
            raise ValueError(f"--cache-config: the local cache has no setting {key[:32]!r} (it takes size=<bytes>)")
        else:
            settings[key] = value
    if "size" not in settings:
        raise ValueError(f"--cache-config: the local cache needs size=<bytes>; {_CACHE_EXAMPLE}")
    size = settings["size"]
    if not (size.isascii() and size.isdigit()) or int(size) < 1 or len(size) > 19:
        raise ValueError(f"--cache-config: size must be a whole number of bytes, at least 1, got {size[:32]!r}")
    return int(size)
