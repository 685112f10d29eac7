"""GPU check of the per-device batchers: clipperd serving a wide TorchScript MLP (1024 -> 4096 ->
4096 -> 10, seeded, built here) whose instance_group puts two instances on cuda:0 and one on the
CPU, under 64 concurrent one-row gRPC requests; then the same model on cuda:0 alone under an AIMD
latency target.

    python perf/gpu_batching_check.py [--seconds 8] [--concurrency 64] [--perf-analyzer PA]

Checks and prints (one JSON object per line):
- both models READY and their outputs equal to the model's in-process CPU output;
- per-device queues: the mixed model has a ``cpu`` and a ``cuda:0`` queue, both executed work,
  and the GPU, draining its queue faster, took most of it (clipperd_device_inference_count);
- batching on the GPU: the batch-size distribution and rows per execution;
- AIMD: the cap the GPU's controller settled on, the latest batch latency against the target,
  and end-to-end p50/p99 at the given concurrency.
Needs torch with CUDA, grpcio, protobuf, numpy, pyyaml, aiohttp, httptools, prometheus-client.
Exit 0 when every check holds, 1 when one does not, 2 when there is no GPU."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "perf"))

from gpu_serve_check import emit, free_port, infer, wait_ready  # noqa: E402

TARGET_US = 4000
MODEL_HEAD = """platform: "pytorch_libtorch"
max_batch_size: 128
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 1024 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 10 ] } ]
"""
MIXED = (
    'name: "wide_mixed"\n'
    + MODEL_HEAD
    + """dynamic_batching { max_queue_delay_microseconds: 500 }
instance_group [ { kind: KIND_GPU count: 2 gpus: [ 0 ] }, { kind: KIND_CPU count: 1 } ]
"""
)
GPU_ONLY = (
    'name: "wide_gpu"\n'
    + MODEL_HEAD
    + """dynamic_batching { max_queue_delay_microseconds: 500 }
instance_group [ { kind: KIND_GPU count: 2 gpus: [ 0 ] } ]
"""
)
AIMD = (
    'name: "wide_aimd"\n'
    + MODEL_HEAD
    + f"""dynamic_batching {{ max_queue_delay_microseconds: 500 }}
instance_group [ {{ kind: KIND_GPU count: 1 gpus: [ 0 ] }} ]
parameters {{ key: "batch_latency_target_us" value {{ string_value: "{TARGET_US}" }} }}
"""
)


def build_repository(folder: Path) -> Path:
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers = nn.Sequential(nn.Linear(1024, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 10))
    weights = folder / "model.pt"
    torch.jit.save(torch.jit.script(layers.eval()), str(weights))
    for name, config in (("wide_mixed", MIXED), ("wide_gpu", GPU_ONLY), ("wide_aimd", AIMD)):
        (folder / "repo" / name / "1").mkdir(parents=True)
        (folder / "repo" / name / "1" / "model.pt").write_bytes(weights.read_bytes())
        (folder / "repo" / name / "config.pbtxt").write_text(config)
    return weights


def reference(weights: Path, x: np.ndarray) -> np.ndarray:
    import torch

    module = torch.jit.load(str(weights), map_location="cpu")
    with torch.inference_mode():
        return module(torch.from_numpy(x)).numpy()  # type: ignore[no-any-return]


def in_process_limit(weights: Path) -> dict[int, int]:
    """Rows per second of the model on cuda:0 called back to back, per batch size: the limit."""
    import torch

    module = torch.jit.load(str(weights), map_location="cuda:0")
    rates = {}
    with torch.inference_mode():
        for batch in (1, 8, 32, 64, 128):
            x = torch.randn(batch, 1024)
            for _ in range(5):
                module(x.to("cuda:0")).cpu()
            runs, started = 0, time.perf_counter()
            while time.perf_counter() - started < 1.0:
                module(x.to("cuda:0")).cpu()
                runs += 1
            rates[batch] = round(runs * batch / (time.perf_counter() - started))
    return rates


def perf_analyzer(pa: str, address: str, model: str, concurrency: int, workdir: Path) -> dict[str, Any]:
    from side_by_side import measure

    return measure(Path(pa), address, "grpc", concurrency, 3000, workdir / f"{model}.csv", model=model)


def load(address: str, model: str, seconds: float, concurrency: int) -> dict[str, Any]:
    """``concurrency`` closed-loop clients, one row per request, for ``seconds``."""
    latencies: list[float] = []
    lock = threading.Lock()
    end = time.monotonic() + seconds
    x = np.random.default_rng(1).standard_normal((1, 1024), dtype=np.float32)

    def client() -> None:
        mine = []
        with grpc.insecure_channel(address) as channel:
            while time.monotonic() < end:
                t0 = time.perf_counter()
                infer(channel, model, x)
                mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(client) for _ in range(concurrency)]:
            future.result()
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "model": model,
        "requests": len(latencies),
        "infer_per_s": round(len(latencies) / elapsed),
        "p50_ms": round(statistics.median(latencies) * 1e3, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1e3, 2),
    }


Sample = tuple[str, dict[str, str], float]


def metrics(url: str, model: str) -> list[Sample]:
    """Every sample of ``model``: (family name, labels, value)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return [
        (sample.name.removesuffix("_total"), sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels.get("model") == model
    ]


def by_label(samples: list[Sample], family: str, label: str = "device") -> dict[str, float]:
    """``family``'s values keyed by ``label``."""
    return {labels[label]: value for name, labels, value in samples if name == family and label in labels}


def serve(workdir: Path, frontend: str) -> tuple[subprocess.Popen[bytes], str, str]:
    grpc_port, metrics_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "server.cli", "serve", "--model-repository", str(workdir / "repo")]
    cmd += ["--host", "127.0.0.1", "--grpc-port", str(grpc_port), "--http-port", "0", "--grpc-frontend", frontend]
    cmd += ["--metrics-port", str(metrics_port)]
    log = (workdir / "server.log").open("wb")
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    return server, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{metrics_port}/metrics"


def run_checks(address: str, metrics_url: str, weights: Path, args: argparse.Namespace) -> bool:
    ok = True
    with grpc.insecure_channel(address) as channel:
        x = np.random.default_rng(0).standard_normal((8, 1024), dtype=np.float32)
        expected = reference(weights, x)
        for model in ("wide_mixed", "wide_aimd"):
            error = float(np.max(np.abs(infer(channel, model, x) - expected)))
            emit(model=model, max_abs_error=error)
            ok &= error <= 1e-3
    mixed = load(address, "wide_mixed", args.seconds, args.concurrency)
    samples = metrics(metrics_url, "wide_mixed")
    rows = by_label(samples, "clipperd_device_inference_count")
    executions = by_label(samples, "clipperd_device_executions")
    emit(run=mixed, rows_by_device=rows, executions_by_device=executions)
    spread = set(rows) == {"cpu", "cuda:0"} and all(v > 0 for v in rows.values()) and rows["cuda:0"] > rows["cpu"]
    emit(check="per-device queues: both devices worked, the GPU took most", ok=spread)
    gpu_rows_per_batch = rows.get("cuda:0", 0) / max(executions.get("cuda:0", 0), 1)
    emit(check="the GPU batches (rows per execution > 2)", rows_per_execution=round(gpu_rows_per_batch, 1))
    ok &= spread and gpu_rows_per_batch > 2
    aimd = load(address, "wide_aimd", args.seconds, args.concurrency)
    samples = metrics(metrics_url, "wide_aimd")
    caps = by_label(samples, "clipperd_batch_size_cap")
    latency = by_label(samples, "clipperd_batch_latency_seconds")
    sizes = by_label(samples, "clipperd_batch_size_executions", "batch_size")
    emit(
        run=aimd,
        target_ms=TARGET_US / 1e3,
        cap=caps,
        last_batch_latency_ms={k: round(v * 1e3, 3) for k, v in latency.items()},
        batch_sizes=sizes,
    )
    ok &= caps.get("cuda:0", 0) > 1
    if args.perf_analyzer:
        emit(limit_rows_per_s_by_batch=in_process_limit(weights))
        for model in ("wide_gpu", "wide_aimd", "wide_mixed"):
            result = perf_analyzer(args.perf_analyzer, address, model, args.concurrency, weights.parent)
            samples = metrics(metrics_url, model)
            emit(
                perf_analyzer=model,
                concurrency=args.concurrency,
                **result,
                cap=by_label(samples, "clipperd_batch_size_cap"),
                rows_by_device=by_label(samples, "clipperd_device_inference_count"),
                executions_by_device=by_label(samples, "clipperd_device_executions"),
            )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--perf-analyzer", help="also measure with this perf_analyzer binary (gRPC)")
    parser.add_argument("--grpc-frontend", default="native", choices=("native", "grpcio"))
    args = parser.parse_args()
    import torch

    emit(torch=torch.__version__, cuda=torch.cuda.is_available(), gpus=torch.cuda.device_count())
    if not torch.cuda.is_available():
        return 2
    emit(gpu=torch.cuda.get_device_name(0))
    workdir = Path(tempfile.mkdtemp(prefix="gpu-batching-"))
    weights = build_repository(workdir)
    emit(grpc_frontend=args.grpc_frontend)
    server, address, metrics_url = serve(workdir, args.grpc_frontend)
    ok = False
    try:
        with grpc.insecure_channel(address) as channel:
            if not wait_ready(channel, server):
                emit(error="server not ready", log=(workdir / "server.log").read_text()[-3000:])
                return 1
        ok = run_checks(address, metrics_url, weights, args)
    finally:
        server.terminate()
        code = server.wait(60)
        emit(server_exit=code, log_tail=(workdir / "server.log").read_text()[-1500:])
    emit(summary="ok" if ok and code == 0 else "FAILED")
    return 0 if ok and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
