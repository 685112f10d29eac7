"""Peer: Seldon MLServer 1.7 serving numpy_mlp (perf/peers/numpy_mlp.py: FP32 INPUT0 [-1, 256]
-> OUTPUT0 [-1, 16]) with its adaptive batching (up to 64 requests, max_batch_time from
$NUMPY_MLP_QUEUE_DELAY_US, default 2000 µs), from this folder (settings.json,
mlp/model-settings.json, mlp/mlp_model.py).

    ~/.cache/clipperd-bench/mlserver/bin/python perf/peers/mlserver_numpy_mlp/serve_numpy_mlp.py

Listens on 127.0.0.1: HTTP 28180, gRPC 28181, metrics 28182. Runs in the MLServer virtual
environment (perf/install_peers.sh), not the project's. MLServer's settings are files, so the
launcher copies this folder to a temporary one with max_batch_time written into
model-settings.json, puts perf/peers on PYTHONPATH (the model and MLServer's worker processes
import numpy_mlp from there) and runs `mlserver start` on the copy, with the ModelConfig RPC that
perf_analyzer needs and MLServer lacks added as perf/peers/mlserver_identity/launch.py adds it
(reused from there; the answer carries this model's name and dims)."""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
PEERS = HERE.parent


def _identity_launcher() -> ModuleType:
    """perf/peers/mlserver_identity/launch.py, for its protobuf wire-format helpers."""
    spec = importlib.util.spec_from_file_location("mlserver_identity_launch", PEERS / "mlserver_identity" / "launch.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


WIRE = _identity_launcher()


def _add_model_config_rpc() -> None:
    from numpy_mlp import IN_DIM, MAX_BATCH, MODEL_NAME, OUT_DIM

    WIRE.add_model_config_rpc(MODEL_NAME, WIRE.model_config_response(MODEL_NAME, MAX_BATCH, IN_DIM, OUT_DIM))


def _numpy_mlp_importable() -> None:
    paths = [str(PEERS), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)  # MLServer's worker processes
    sys.path.insert(0, str(PEERS))


def _settings_copy() -> Path:
    """This folder in a temporary one, model-settings.json with the batching of this run."""
    from numpy_mlp import MAX_BATCH, queue_delay_us

    folder = Path(tempfile.mkdtemp(prefix="mlserver-numpy-mlp-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    shutil.copy(HERE / "settings.json", folder / "settings.json")
    shutil.copytree(HERE / "mlp", folder / "mlp", ignore=shutil.ignore_patterns("__pycache__"))
    path = folder / "mlp" / "model-settings.json"
    settings = json.loads(path.read_text())
    settings["max_batch_size"] = MAX_BATCH
    settings["max_batch_time"] = queue_delay_us() / 1e6
    path.write_text(json.dumps(settings, indent=1) + "\n")
    print(f"mlserver: {folder}, model-settings {settings}", flush=True)
    return folder


def main() -> None:
    _numpy_mlp_importable()
    WIRE._metrics_dir_outside_cwd()
    _add_model_config_rpc()
    folder = _settings_copy()
    from mlserver.cli import main as mlserver_main  # type: ignore[import-not-found]

    sys.argv = ["mlserver", "start", str(folder)]
    sys.exit(mlserver_main())


if __name__ == "__main__":
    main()
