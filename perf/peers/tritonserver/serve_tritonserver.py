"""Peer: NVIDIA Triton Inference Server itself, the ``tritonserver`` binary that PyTriton 0.7 bundles
(Triton 2.51: its C++ gRPC and HTTP front ends, dynamic batcher and Python backend), serving
identity_fp32 from ``repo/`` (or the models of ``--repository DIR``: perf/batching_peers.py
serves numpy_mlp so) as Triton Python-backend models, the way a Triton user serves a Python
model; no PyTriton in the request path.

    ~/.cache/clipperd-bench/pytriton/bin/python perf/peers/tritonserver/serve_tritonserver.py \\
        [--grpc-port 48001] [--http-port 48000] [--repository DIR] [--workspace DIR]

Runs with the PyTriton virtual environment's interpreter (perf/install_peers.sh): the binary, the
Python backend and its stubs come from that environment's ``pytriton/tritonserver``, and the stub
embeds this interpreter's Python (its ``libpython``, <base prefix>/lib, goes on LD_LIBRARY_PATH
with the wheel's own libraries; this environment's bin/ goes first on PATH, whence the embedded
interpreter takes its prefix and so this environment's numpy). Triton wants the
backend library and the stub of the interpreter's Python version in one folder, so the launcher
makes a workspace (a fresh temporary folder unless --workspace) with ``backends/python/`` and a
copy of the repository, starts tritonserver on 127.0.0.1 (metrics off), passes SIGTERM and
SIGINT on, and removes the workspace it made when tritonserver has exited; it exits with
tritonserver's status."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from types import FrameType

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"


def triton_home() -> Path:
    """The Triton distribution inside this environment's PyTriton wheel."""
    home = Path(sysconfig.get_paths()["purelib"]) / "pytriton" / "tritonserver"
    if not (home / "bin" / "tritonserver").exists():
        sys.exit(
            f"no tritonserver under {home}: run this with the PyTriton environment's python (perf/install_peers.sh)"
        )
    return home


def prepare(workspace: Path, home: Path, source: Path) -> tuple[Path, Path]:
    """The backend folder (library, utilities and the stub for this Python) and the repository."""
    python = workspace / "backends" / "python"
    python.mkdir(parents=True, exist_ok=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(home / "backends" / "python" / name, python / name)
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    shutil.copy2(home / "python_backend_stubs" / version / "triton_python_backend_stub", python)
    repo = workspace / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(source, repo, ignore=shutil.ignore_patterns("__pycache__"))
    return workspace / "backends", repo


def environment() -> dict[str, str]:
    purelib = sysconfig.get_paths()["purelib"]
    libraries = [os.path.join(sys.base_prefix, "lib"), os.path.join(purelib, "nvidia_pytriton.libs")]
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*libraries, *filter(None, env.get("LD_LIBRARY_PATH", "").split(":"))])
    # the embedded interpreter finds its prefix from the python on PATH: this environment's, so
    # that the model gets its numpy (the stub is built for numpy 1; a numpy 2 installed for the
    # base interpreter makes it answer with empty tensors)
    env["PATH"] = os.pathsep.join([os.path.join(sys.prefix, "bin"), env.get("PATH", "")])
    return env


def command(home: Path, backends: Path, repo: Path, args: argparse.Namespace) -> list[str]:
    return [
        str(home / "bin" / "tritonserver"),
        f"--model-repository={repo}",
        f"--backend-directory={backends}",
        f"--http-address={HOST}",
        f"--http-port={args.http_port}",
        f"--grpc-address={HOST}",
        f"--grpc-port={args.grpc_port}",
        "--allow-metrics=false",
        "--log-verbose=0",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grpc-port", type=int, default=48001)
    parser.add_argument("--http-port", type=int, default=48000)
    parser.add_argument("--repository", type=Path, default=HERE / "repo", help="the models to serve (default: repo/)")
    parser.add_argument("--workspace", help="where the backend and the repository go (default: a temporary folder)")
    args = parser.parse_args()
    home = triton_home()
    if not args.repository.is_dir():
        parser.error(f"--repository {args.repository} is not a folder")
    made = args.workspace is None
    workspace = Path(tempfile.mkdtemp(prefix="tritonserver-")) if made else Path(args.workspace)
    try:
        backends, repo = prepare(workspace, home, args.repository)
        proc = subprocess.Popen(command(home, backends, repo, args), env=environment())

        def forward(signum: int, _frame: FrameType | None) -> None:
            proc.send_signal(signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        print(f"tritonserver: {HOST}, gRPC {args.grpc_port}, HTTP {args.http_port}, workspace {workspace}", flush=True)
        return proc.wait()
    finally:
        if made:
            shutil.rmtree(workspace, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
