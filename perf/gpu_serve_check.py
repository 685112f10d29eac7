"""End-to-end GPU check: clipperd serving mlp_torch with instances on cuda:0 (KIND_GPU, two
instances) beside a CPU copy (KIND_CPU), driven over KServe v2 gRPC; outputs of both equal the
model's own in-process CPU outputs; per-batch-size p50 latencies; the ModelStatistics counters.

    python perf/gpu_serve_check.py [--requests 300]

Needs torch with CUDA, grpcio, protobuf, numpy, pyyaml (no tritonclient: it speaks gRPC with the
project's own messages). Prints one JSON object per line; exit 0 when every check holds."""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ports import free_port as free_port  # noqa: E402  (re-exported for gpu_batching_check.py)

from server.proto import grpc_service_pb2 as pb  # noqa: E402

GPU_CONFIG = """name: "mlp_gpu"
platform: "pytorch_libtorch"
max_batch_size: 128
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 64 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 10 ] } ]
dynamic_batching { }
instance_group [ { kind: KIND_GPU count: 2 gpus: [ 0 ] } ]
"""


def emit(**fields: Any) -> None:
    print(json.dumps(fields, default=str), flush=True)


def build_repository(folder: Path) -> None:
    shutil.copytree(ROOT / "model_repository" / "mlp_torch", folder / "mlp_torch")
    (folder / "mlp_gpu" / "1").mkdir(parents=True)
    shutil.copy(ROOT / "model_repository" / "mlp_torch" / "1" / "model.pt", folder / "mlp_gpu" / "1" / "model.pt")
    (folder / "mlp_gpu" / "config.pbtxt").write_text(GPU_CONFIG)


def call(channel: grpc.Channel, method: str, request: Any, response_class: Any) -> Any:
    rpc = channel.unary_unary(
        f"/inference.GRPCInferenceService/{method}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response_class.FromString,
    )
    return rpc(request, timeout=30)


def infer(channel: grpc.Channel, model: str, x: np.ndarray) -> np.ndarray:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="INPUT__0", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    response = call(channel, "ModelInfer", request, pb.ModelInferResponse)
    shape = list(response.outputs[0].shape)
    return np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(shape)


def wait_ready(channel: grpc.Channel, server: subprocess.Popen[bytes], seconds: float = 120) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end and server.poll() is None:
        try:
            if call(channel, "ServerReady", pb.ServerReadyRequest(), pb.ServerReadyResponse).ready:
                return True
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    return False


def reference(x: np.ndarray) -> np.ndarray:
    import torch

    module = torch.jit.load(str(ROOT / "model_repository" / "mlp_torch" / "1" / "model.pt"), map_location="cpu")
    with torch.inference_mode():
        return module(torch.from_numpy(x)).numpy()  # type: ignore[no-any-return]


def check(channel: grpc.Channel, requests: int) -> bool:
    ok = True
    rng = np.random.default_rng(0)
    for batch in (1, 32, 128):
        x = rng.standard_normal((batch, 64), dtype=np.float32)
        expected = reference(x)
        for model in ("mlp_gpu", "mlp_torch"):
            got = infer(channel, model, x)
            error = float(np.max(np.abs(got - expected)))
            ok &= error <= 1e-4
            times = []
            for _ in range(requests):
                t0 = time.perf_counter()
                infer(channel, model, x)
                times.append(time.perf_counter() - t0)
            emit(model=model, batch=batch, max_abs_error=error, p50_us=round(statistics.median(times) * 1e6))
    return ok


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    import torch

    emit(
        torch=torch.__version__,
        cuda=torch.cuda.is_available(),
        gpus=torch.cuda.device_count(),
        name=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    )
    if not torch.cuda.is_available():
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="gpu-serve-"))
    build_repository(workdir / "repo")
    port = free_port()
    log = (workdir / "server.log").open("wb")
    cmd = [
        sys.executable,
        "-m",
        "server.cli",
        "serve",
        "--model-repository",
        str(workdir / "repo"),
        "--host",
        "127.0.0.1",
        "--grpc-port",
        str(port),
        "--http-port",
        "0",
        "--metrics-port",
        "0",
    ]
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            if not wait_ready(channel, server):
                emit(error="server not ready", log=(workdir / "server.log").read_text()[-3000:])
                return 1
            index = call(channel, "RepositoryIndex", pb.RepositoryIndexRequest(), pb.RepositoryIndexResponse)
            emit(index=[(m.name, m.version, m.state, m.reason) for m in index.models])
            ok = check(channel, args.requests)
            stats = call(
                channel, "ModelStatistics", pb.ModelStatisticsRequest(name="mlp_gpu"), pb.ModelStatisticsResponse
            )
            s = stats.model_stats[0]
            emit(
                stats="mlp_gpu",
                inference_count=s.inference_count,
                execution_count=s.execution_count,
                success=s.inference_stats.success.count,
            )
    finally:
        server.terminate()
        code = server.wait(60)
        log_text = (workdir / "server.log").read_text()
        emit(server_exit=code, log_tail=log_text[-1500:])
    emit(summary="ok" if ok and code == 0 else "FAILED")
    return 0 if ok and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
