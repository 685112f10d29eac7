"""Triton's ``--trace-config`` (``[<mode>,]<setting>=<value>``, repeated) and its older
``--trace-level`` / ``--trace-rate`` / ``--trace-count`` / ``--trace-log-frequency`` flags
(server/triton_flags.py turns those into ``--trace-config`` pieces).

Global settings: ``level`` (repeated: OFF or TIMESTAMPS), ``rate``, ``count``, ``mode``
(opentelemetry only: clipperd exports traces over OTLP/HTTP). OpenTelemetry's:
``opentelemetry,url=<OTLP/HTTP traces endpoint>``, ``opentelemetry,resource=<key>=<value>``,
``opentelemetry,bsp_max_queue_size=<spans>``, ``opentelemetry,bsp_schedule_delay=<ms>``,
``opentelemetry,bsp_max_export_batch_size=<spans>``. Triton's own mode: ``triton,log-frequency``
is kept (reported), ``triton,file`` refused (no trace file is written)."""

from __future__ import annotations

from dataclasses import dataclass, field

from backends.common.errors import ClipperdError
from server.tracing.settings import COUNT, FREQUENCY, LEVEL, RATE, parse_value

DEFAULT_URL = "http://localhost:4318/v1/traces"  # Triton's and OpenTelemetry's default
DEFAULT_EXPORT_BATCH = 512  # the SDK's default
MAX_QUEUE_SPANS = 1_000_000  # a bound on the export queue's own bound
_EXAMPLE = "e.g. --trace-config opentelemetry,url=http://127.0.0.1:4318/v1/traces --trace-config level=TIMESTAMPS"
_GLOBAL = {"level": LEVEL, "rate": RATE, "count": COUNT}
_BSP = {"bsp_max_queue_size": "max_queue_size", "bsp_schedule_delay": "schedule_delay_ms"}
_BSP["bsp_max_export_batch_size"] = "max_export_batch_size"


@dataclass
class TraceConfig:
    """What ``--trace-config`` asked for: the exporter's settings and the global trace settings."""

    url: str = DEFAULT_URL
    resource: dict[str, str] = field(default_factory=dict)
    max_queue_size: int = 2048  # spans waiting for export; past it new spans are dropped
    schedule_delay_ms: int = 5000  # how long spans may wait before an export starts
    max_export_batch_size: int = 0  # spans per export request; 0: 512, or the queue's size when smaller
    settings: dict[str, object] = field(default_factory=dict)  # trace_level, trace_rate, ... parsed

    def check(self) -> None:
        if not self.max_export_batch_size:
            self.max_export_batch_size = min(DEFAULT_EXPORT_BATCH, self.max_queue_size)
        if self.max_export_batch_size > self.max_queue_size:
            raise ValueError("--trace-config: bsp_max_export_batch_size must not exceed bsp_max_queue_size")


def _pieces(values: list[str]) -> list[tuple[str, str, str]]:
    """(mode, key, value) of each setting; a piece without '=' names the mode of the next one
    (CLIPPERD_TRACE_CONFIG is a comma-separated list: its pieces arrive split)."""
    out = []
    mode = ""
    for piece in values:
        head, comma, rest = piece.partition(",")
        if "=" not in piece:
            if mode or comma:
                raise ValueError(f"--trace-config: expected [<mode>,]<setting>=<value>, got {piece[:64]!r}; {_EXAMPLE}")
            mode = piece.strip()
            continue
        if comma and "=" not in head:
            mode, piece = head.strip(), rest
        key, _, value = piece.partition("=")
        out.append((mode, key.strip(), value.strip()))
        mode = ""
    if mode:
        raise ValueError(f"--trace-config: mode {mode[:32]!r} names no setting; {_EXAMPLE}")
    return out


def _positive(key: str, value: str, high: int) -> int:
    try:
        number = int(value, 10)
    except ValueError:
        number = 0
    if not 1 <= number <= high:
        raise ValueError(
            f"--trace-config opentelemetry,{key}: expected a whole number from 1 to {high}, got {value[:32]!r}"
        )
    return number


def _setting(config: TraceConfig, name: str, values: list[str]) -> None:
    try:
        config.settings[name] = parse_value(name, values)
    except ClipperdError as error:
        raise ValueError(f"--trace-config: {error.message}") from None


def _opentelemetry(config: TraceConfig, key: str, value: str) -> None:
    if key == "url":
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"--trace-config opentelemetry,url: expected an http(s):// URL, got {value[:64]!r}")
        config.url = value
    elif key == "resource":
        name, equals, text = value.partition("=")
        if not equals or not name:
            raise ValueError("--trace-config opentelemetry,resource: expected <key>=<value>")
        config.resource[name] = text
    elif key in _BSP:
        setattr(config, _BSP[key], _positive(key, value, MAX_QUEUE_SPANS))
    else:
        known = ", ".join(["url", "resource", *_BSP])
        raise ValueError(f"--trace-config: opentelemetry has no setting {key[:32]!r} (known: {known})")


def _triton(config: TraceConfig, key: str, value: str) -> None:
    if key == "log-frequency":
        _setting(config, FREQUENCY, [value])
    elif key == "file":
        raise ValueError(
            "--trace-config triton,file (or --trace-file): clipperd writes no trace file; it exports traces "
            f"over OTLP/HTTP to an OpenTelemetry collector; {_EXAMPLE}"
        )
    else:
        raise ValueError(f"--trace-config: triton has no setting {key[:32]!r} that clipperd takes (log-frequency)")


def _global(config: TraceConfig, key: str, value: str, levels: list[str]) -> None:
    if key == "mode":
        if value != "opentelemetry":
            raise ValueError(f"--trace-config mode: clipperd traces with opentelemetry only, got {value[:32]!r}")
    elif key == "level":
        levels.append(value)
    elif key in _GLOBAL:
        _setting(config, _GLOBAL[key], [value])
    else:
        raise ValueError(f"--trace-config: unknown setting {key[:32]!r} (known: mode, level, rate, count)")


def parse_trace_config(values: list[str]) -> TraceConfig:
    """``--trace-config`` values; ValueError with a one-line reason."""
    config = TraceConfig()
    levels: list[str] = []
    for mode, key, value in _pieces(values):
        if mode == "opentelemetry":
            _opentelemetry(config, key, value)
        elif mode == "triton":
            _triton(config, key, value)
        elif not mode:
            _global(config, key, value, levels)
        else:
            raise ValueError(f"--trace-config: unknown mode {mode[:32]!r} (clipperd has: opentelemetry)")
    if levels:
        _setting(config, LEVEL, levels)
    config.check()
    return config
