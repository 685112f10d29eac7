"""A real clipperd server in a child process, as users run it (the CLI), on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "model_repository"
FAST_ONLY = "CLIPPERD_FAST_TESTS"  # set by `make test-fast`: end-to-end machinery fails the test


def refuse_in_fast_run(what: str) -> None:
    """A test of the fast set (tests/conftest.py FAST) that starts ``what`` is misfiled: fail it."""
    if os.environ.get(FAST_ONLY):
        import pytest

        pytest.fail(f"{what} in a fast test: list its module as end-to-end (not in tests/conftest.py FAST)")


def perf_analyzer() -> Path:
    """NVIDIA perf_analyzer (CLIPPERD_PERF_ANALYZER, as make test sets it, or .tools/); the test
    fails, not skips, without it: make test installs it."""
    import pytest

    refuse_in_fast_run("perf_analyzer")
    configured = os.environ.get("CLIPPERD_PERF_ANALYZER")
    path = Path(configured) if configured else ROOT / ".tools" / "pa" / "bin" / "perf_analyzer"
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"perf_analyzer not found at {path}: run scripts/install-perf-analyzer.sh (make test does)")
    return path


_GIVEN_PORTS: set[int] = set()


def free_port() -> int:
    """A port free now and not handed out before by this process. The kernel may give a port it
    just gave again once its socket is closed: a server given one port for gRPC and HTTP then
    fails to start (seen in CI: "cannot listen for HTTP on 127.0.0.1:43445", the gRPC port)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _GIVEN_PORTS:
            _GIVEN_PORTS.add(port)
            return port
    raise RuntimeError("no fresh port in 100 tries")


class ServerProcess:
    def __init__(self, repository: Path, *args: str, log_dir: Path, url: str = "") -> None:
        self.repository = repository
        self.repository_arg = url or str(repository)  # url: a bucket (s3://...) in place of the folder
        self.grpc_port = free_port()
        self.url = f"127.0.0.1:{self.grpc_port}"
        self.http_port = free_port()
        self.http_url = f"127.0.0.1:{self.http_port}"
        self.metrics_port = free_port()
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.log_path = log_dir / f"clipperd-{self.grpc_port}.log"
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """The server's argv (a subclass may wrap it, e.g. in its own namespace)."""
        return [
            sys.executable,
            "-m",
            "server.cli",
            "serve",
            "--model-repository",
            self.repository_arg,
            "--host",
            "127.0.0.1",
            "--grpc-port",
            str(self.grpc_port),
            "--http-port",
            str(self.http_port),
            "--metrics-port",
            str(self.metrics_port),
            *self.args,
        ]

    def start(self, wait_ready: bool = True, timeout: float = 60.0) -> ServerProcess:
        refuse_in_fast_run("a server process")
        cmd = self.command()
        log = self.log_path.open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.wait_live(timeout)
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def _call(self, method: str, timeout: float = 2.0) -> bytes | None:
        with grpc.insecure_channel(self.url) as channel:
            rpc = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
            try:
                return rpc(b"", timeout=timeout)  # type: ignore[no-any-return]
            except grpc.RpcError:
                return None

    def wait_live(self, timeout: float) -> None:
        self._wait(lambda: self._call("ServerLive") is not None, timeout, "live")

    def wait_ready(self, timeout: float) -> None:
        # ServerReadyResponse{ready=true} encodes as b"\x08\x01"
        self._wait(lambda: self._call("ServerReady") == b"\x08\x01", timeout, "ready")

    def _wait(self, check: object, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"clipperd exited with {self.proc.returncode}:\n{self.log()}")
            if check():  # type: ignore[operator]
                return
            time.sleep(0.1)
        raise TimeoutError(f"clipperd not {what} after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@contextlib.contextmanager
def running(
    repository: Path, *args: str, log_dir: Path, wait_ready: bool = True, url: str = ""
) -> Iterator[ServerProcess]:
    server = ServerProcess(repository, *args, log_dir=log_dir, url=url).start(wait_ready=wait_ready)
    try:
        yield server
    finally:
        server.stop()


def index_entry(url: str, model: str) -> tuple[str, str]:
    """``model``'s (state, reason) in the server's repository index (RepositoryIndex over gRPC)."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        entry = next(m for m in client.get_model_repository_index().models if m.name == model)
    return str(entry.state), str(entry.reason)


def model_metric(server: ServerProcess, name: str, model: str) -> float:
    """The value of metric ``name`` (without ``_total``) labelled with ``model``, scraped now."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.removesuffix("_total") == name and sample.labels.get("model") == model:
                return float(sample.value)
    raise AssertionError(f"{name} for {model} not in the metrics")


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 30.0, interval_s: float = 0.05) -> None:
    """Polls ``check()`` until it is true; AssertionError naming ``what`` after ``timeout_s``."""
    end = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < end, f"{what}: not within {timeout_s} s"
        time.sleep(interval_s)
