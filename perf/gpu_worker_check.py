"""GPU check of isolated workers: the bundled mlp_torch with a KIND_GPU instance in a worker
process (``execution_mode: process``), served over gRPC, against the same TorchScript model on
the CPU in-process.

    python perf/gpu_worker_check.py

Prints one JSON line per check and ``{"summary": "ok"}`` when the worker's GPU answers equal
the CPU's (within 1e-4), batched requests included. Needs torch with CUDA, grpcio, protobuf,
numpy, pyyaml, aiohttp, httptools, prometheus-client, hpack."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.proto import grpc_service_pb2 as pb  # noqa: E402
from tests.serverproc import EXAMPLES, running  # noqa: E402

GPU_WORKER = """
instance_group [ { kind: KIND_GPU, count: 1, gpus: [ 0 ] } ]
parameters { key: "execution_mode" value: { string_value: "process" } }
"""


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def infer(channel: grpc.Channel, x: np.ndarray) -> np.ndarray:
    request = pb.ModelInferRequest(model_name="mlp_torch")
    request.inputs.add(name="INPUT__0", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    call = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelInferResponse.FromString,
    )
    response = call(request, timeout=120)
    return np.frombuffer(response.raw_output_contents[0], np.float32).reshape(x.shape[0], 10)


def main() -> int:
    import torch

    emit(torch=torch.__version__, cuda=torch.cuda.is_available())
    if not torch.cuda.is_available():
        return 2
    emit(gpu=torch.cuda.get_device_name(0))
    base = Path(tempfile.mkdtemp(prefix="gpu-worker-"))
    shutil.copytree(EXAMPLES / "mlp_torch", base / "repo" / "mlp_torch")
    config = base / "repo" / "mlp_torch" / "config.pbtxt"
    text = config.read_text()
    config.write_text(text[: text.index("instance_group")] + GPU_WORKER)  # the group is the file's last entry
    cpu = torch.jit.load(str(EXAMPLES / "mlp_torch" / "1" / "model.pt"), map_location="cpu").eval()
    rng = np.random.default_rng(0)
    ok = True
    with running(base / "repo", log_dir=base) as server, grpc.insecure_channel(server.url) as channel:
        x = rng.standard_normal((8, 64)).astype(np.float32)
        with torch.inference_mode():
            expected = cpu(torch.from_numpy(x)).numpy()
        error = float(np.abs(infer(channel, x) - expected).max())
        emit(check="8 rows through the GPU worker equal the CPU model", max_abs_error=error)
        ok &= error <= 1e-4
        rows = [rng.standard_normal((1, 64)).astype(np.float32) for _ in range(64)]
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda r: infer(channel, r), rows))
        with torch.inference_mode():
            errors = [
                float(np.abs(a - cpu(torch.from_numpy(r)).numpy()).max()) for a, r in zip(answers, rows, strict=True)
            ]
        emit(check="64 concurrent one-row requests (batched in the worker)", max_abs_error=max(errors))
        ok &= max(errors) <= 1e-4
        log = server.log()
    emit(log_tail=log[-600:])
    emit(summary="ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
