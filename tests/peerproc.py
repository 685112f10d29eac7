"""Other KServe v2 servers as real processes on 127.0.0.1, for tests that put a clipperd front end
in front of them: NVIDIA Triton's own ``tritonserver`` (the binary inside the PyTriton wheel,
with its Python backend) serving tests/peers/triton/, and Seldon MLServer 1.7.1 serving
tests/peers/mlserver/, each with perf/peers' identity_fp32 too. Both live in the virtual
environments that perf/install_peers.sh makes (``make test`` runs it) under
$CLIPPERD_BENCH_HOME (default ~/.cache/clipperd-bench); a test fails, not skips, when they are missing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import grpc

from tests.serverproc import ROOT, free_port, refuse_in_fast_run

PEERS = ROOT / "tests" / "peers"
PERF_PEERS = ROOT / "perf" / "peers"
BENCH_HOME = Path(os.environ.get("CLIPPERD_BENCH_HOME", Path.home() / ".cache" / "clipperd-bench"))
READY_TIMEOUT_S = 180.0  # tritonserver's Python-backend stubs take seconds each on a busy 2-core machine


def peer_python(environment: str) -> Path:
    """The interpreter of a peer's virtual environment; the test fails without it."""
    import pytest

    refuse_in_fast_run(f"the {environment} peer")
    python = BENCH_HOME / environment / "bin" / "python"
    if not python.exists():
        pytest.fail(f"{python} is missing: run perf/install_peers.sh (make test's tools target does)")
    return python


class PeerProcess:
    """A peer server started with ``command``; ``url`` is its gRPC address, ``http_url`` its HTTP one."""

    def __init__(self, name: str, log_dir: Path, grpc_port: int, http_port: int) -> None:
        self.name = name
        self.url = f"127.0.0.1:{grpc_port}"
        self.http_url = f"127.0.0.1:{http_port}"
        self.log_path = log_dir / f"{name}-{grpc_port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, command: Sequence[str], models: Sequence[str], env: dict[str, str] | None = None) -> PeerProcess:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                list(command), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        end = time.monotonic() + READY_TIMEOUT_S
        while not all(self.model_ready(m) for m in models):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > end:
                self.stop()
                raise TimeoutError(f"{self.name}: {models} not ready after {READY_TIMEOUT_S} s:\n{self.log()}")
            time.sleep(0.2)
        return self

    def model_ready(self, model: str) -> bool:
        """ModelReady over gRPC (raw bytes: the peer's answer is ModelReadyResponse{ready=true})."""
        request = b"\x0a" + bytes([len(model)]) + model.encode()  # ModelReadyRequest{name}
        with grpc.insecure_channel(self.url) as channel:
            try:
                answer = channel.unary_unary("/inference.GRPCInferenceService/ModelReady")(request, timeout=2.0)
            except grpc.RpcError:
                return False
        return answer == b"\x08\x01"  # type: ignore[no-any-return]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-20000:] if self.log_path.exists() else ""

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM to its process group (tritonserver's stubs, MLServer's workers), then SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def start_tritonserver(workdir: Path, log_dir: Path) -> PeerProcess:
    """tritonserver serving tests/peers/triton/ and perf/peers' identity_fp32
    (perf/peers/tritonserver/serve_tritonserver.py makes its workspace: the Python backend and
    the stub for the environment's Python)."""
    python = peer_python("pytriton")
    peer = PeerProcess("tritonserver", log_dir, free_port(), free_port())
    launcher = ROOT / "perf" / "peers" / "tritonserver" / "serve_tritonserver.py"
    repository = _models(workdir / "triton", PEERS / "triton", PERF_PEERS / "tritonserver" / "repo" / "identity_fp32")
    command = [str(python), str(launcher), "--repository", str(repository), "--workspace", str(workdir)]
    command += ["--grpc-port", peer.url.rsplit(":", 1)[1], "--http-port", peer.http_url.rsplit(":", 1)[1]]
    return peer.start(command, models=sorted(p.name for p in repository.iterdir() if p.is_dir()))


def _models(folder: Path, own: Path, identity: Path) -> Path:
    """``folder`` with the tests' own peer models and the benchmarks' identity_fp32 (one copy of it)."""
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(own, folder, ignore=ignore, dirs_exist_ok=True)
    shutil.copytree(identity, folder / "identity_fp32", ignore=ignore, dirs_exist_ok=True)
    return folder


def start_mlserver(workdir: Path, log_dir: Path) -> PeerProcess:
    """``mlserver start`` on a copy of tests/peers/mlserver/ and perf/peers' identity_fp32, with
    fresh ports in its settings.json (no worker processes: the models run in MLServer's own process)."""
    python = peer_python("mlserver")
    peer = PeerProcess("mlserver", log_dir, free_port(), free_port())
    folder = _models(workdir / "mlserver", PEERS / "mlserver", PERF_PEERS / "mlserver_identity" / "identity_fp32")
    settings = {
        "host": "127.0.0.1",
        "grpc_port": int(peer.url.rsplit(":", 1)[1]),
        "http_port": int(peer.http_url.rsplit(":", 1)[1]),
        "metrics_port": free_port(),
        "parallel_workers": 0,
        "debug": False,
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    env = {**os.environ, "MLSERVER_METRICS_DIR": str(workdir / "mlserver-metrics")}
    env.pop("PYTHONPATH", None)  # MLServer's environment, not the project's
    models = sorted(p.name for p in folder.iterdir() if p.is_dir())
    command = [str(python.parent / "mlserver"), "start", str(folder)]
    return peer.start(command, models=models, env=env)
