"""tritonserver's flags that are not clipperd settings: those that only tune Triton's own
internals (accepted, one warning each) and those that would change answers and that clipperd
does not implement (refused, one line). docs/cli.md lists both; the settings in
server/settings.py are the flags that act."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from server.settings import parse_bool

# flag -> what it tunes in Triton, and why clipperd has no use for it
TUNING: dict[str, str] = {
    "pinned-memory-pool-byte-size": "Triton's pinned-memory pool (instances own their staging buffers)",
    "cuda-memory-pool-byte-size": "Triton's CUDA memory pool",
    "cuda-virtual-address-size": "Triton's CUDA virtual address space",
    "min-supported-compute-capability": "which GPUs Triton uses",
    "buffer-manager-thread-count": "Triton's buffer-manager threads",
    "model-load-thread-count": "Triton's model-loading threads",
    "model-load-retry-count": "Triton's load retries",
    "model-load-gpu-limit": "Triton's GPU memory check before a load",
    "backend-directory": "where Triton finds backend libraries (clipperd's are Python packages)",
    "repoagent-directory": "where Triton finds repository agents",
    "cache-directory": "where Triton finds cache libraries",
    "host-policy": "Triton's NUMA host policies",
    "http-thread-count": "Triton's HTTP threads (clipperd serves HTTP on its event loop)",
    "reuse-http-port": "SO_REUSEPORT on the HTTP port",
    "reuse-grpc-port": "SO_REUSEPORT on the gRPC port",
    "grpc-infer-allocation-pool-size": "Triton's gRPC allocation pool",
    "grpc-infer-response-compression-level": "gRPC response compression (answers go uncompressed)",
    "grpc-keepalive-time": "gRPC keepalive pings",
    "grpc-keepalive-timeout": "gRPC keepalive pings",
    "grpc-keepalive-permit-without-calls": "gRPC keepalive pings",
    "grpc-http2-max-pings-without-data": "gRPC keepalive pings",
    "grpc-http2-min-recv-ping-interval-without-data": "gRPC keepalive pings",
    "grpc-http2-max-ping-strikes": "gRPC keepalive pings",
    "grpc-max-connection-age": "gRPC connection age (see --grpc-http2-idle-timeout-secs)",
    "grpc-max-connection-age-grace": "gRPC connection age",
    "allow-gpu-metrics": "Triton's GPU metrics",
    "allow-cpu-metrics": "Triton's CPU metrics",
    "metrics-config": "Triton's metric options",
    "log-format": "the log line's format",
    "log-file": "the log's destination (clipperd logs to stderr)",
    "trace-config": "Triton's request tracing",
    "trace-file": "Triton's request tracing",
    "trace-level": "Triton's request tracing",
    "trace-rate": "Triton's request tracing",
    "trace-count": "Triton's request tracing",
    "trace-log-frequency": "Triton's request tracing",
    "exit-on-error": "whether a model failing at start stops Triton (clipperd serves on; the model is UNAVAILABLE)",
    "disable-auto-complete-config": "config auto-completion (clipperd completes ONNX configs only; see docs/cli.md)",
    "sagemaker-port": "the SageMaker endpoint, which clipperd does not have",
    "sagemaker-safe-port-range": "the SageMaker endpoint, which clipperd does not have",
    "sagemaker-thread-count": "the SageMaker endpoint, which clipperd does not have",
    "vertex-ai-port": "the Vertex AI endpoint, which clipperd does not have",
    "vertex-ai-thread-count": "the Vertex AI endpoint, which clipperd does not have",
    "vertex-ai-default-model": "the Vertex AI endpoint, which clipperd does not have",
}
NO_VALUE = frozenset({"disable-auto-complete-config"})  # Triton's flags that take no value

# flag -> why refusing it is the honest answer; with a boolean flag, False is what clipperd does
REFUSED: dict[str, str] = {
    "model-namespacing": "clipperd has one namespace: the same model name in two places is not served",
    "allow-sagemaker": "clipperd has no SageMaker endpoint",
    "allow-vertex-ai": "clipperd has no Vertex AI endpoint",
    "http-header-forward-pattern": "clipperd does not forward HTTP headers to models as request parameters",
    "grpc-header-forward-pattern": "clipperd does not forward gRPC metadata to models as request parameters",
    "response-cache-byte-size": "removed from Triton; use --cache-config local,size=<bytes>",
}
OFF_IS_FINE = frozenset({"model-namespacing", "allow-sagemaker", "allow-vertex-ai"})

WARNINGS = "_triton_warnings"  # where the parser keeps the warnings to log once logging is set


class Tuning(argparse.Action):
    """A flag that tunes Triton's internals: its value is taken and a warning kept."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[object] | None,
        option_string: str | None = None,
    ) -> None:
        flag = str(option_string)[2:]
        warnings: list[str] = getattr(namespace, WARNINGS, None) or []
        warnings.append(f"--{flag} ignored: it tunes {TUNING[flag]}")
        setattr(namespace, WARNINGS, warnings)


class Refused(argparse.Action):
    """A flag whose effect clipperd does not have: the start stops with one line."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[object] | None,
        option_string: str | None = None,
    ) -> None:
        flag = str(option_string)[2:]
        if flag in OFF_IS_FINE and values is not None and _is_false(str(values)):
            return  # what clipperd does anyway
        parser.error(f"--{flag} is not supported: {REFUSED[flag]}")


def _is_false(text: str) -> bool:
    try:
        return not parse_bool(text)
    except ValueError:
        return False


def add_triton_flags(parser: argparse.ArgumentParser) -> None:
    """The tuning and refused flags, in Triton's syntax (``--flag=value`` or ``--flag value``)."""
    for flag in TUNING:
        nargs = 0 if flag in NO_VALUE else "?"
        parser.add_argument("--" + flag, action=Tuning, nargs=nargs, dest=WARNINGS, help=argparse.SUPPRESS)
    for flag in REFUSED:
        parser.add_argument("--" + flag, action=Refused, nargs="?", dest=WARNINGS, help=argparse.SUPPRESS)


def backend_config_warnings(values: Sequence[str]) -> list[str]:
    """Triton's ``--backend-config [<backend>,]<setting>=<value>``: ValueError when one does not
    have that shape; otherwise one warning each, since every such setting tunes a backend's
    internals (threads, shared-memory sizes, TensorFlow's version) that clipperd's backends do
    not take server-wide."""
    warnings = []
    for value in values:
        backend, comma, setting = value.partition(",")
        if not comma:
            backend, setting = "", value
        key, equals, _ = setting.partition("=")
        if not equals or not key or "=" in backend:
            raise ValueError(f"--backend-config: expected [<backend>,]<setting>=<value>, got {value[:64]!r}")
        where = f"backend '{backend[:32]}'" if backend else "every backend"
        warnings.append(f"--backend-config {key[:32]} for {where} ignored: clipperd's backends take no such setting")
    return warnings
