"""GPU check of the PyTorch backend: mlp_torch on cuda:0, two instances (each with its own CUDA
stream and its own thread), outputs compared with the CPU backend, and p50 latencies.

    python perf/gpu_check.py [--runs 200] [--atol 1e-5]

Prints one JSON object per line: what it found (python, numpy, protobuf, torch, CUDA, the GPU),
the comparison per batch size and instance, the timings, and a final summary. Exit status 0 when
every comparison holds, 1 when one does not, 2 when the machine cannot run the check."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere; the backends live at the root

BATCHES = (1, 32, 128)


def emit(**fields: Any) -> None:
    print(json.dumps(fields, default=str), flush=True)


def environment() -> tuple[Any, str]:
    """(torch, "") or (None, why the check cannot run here); what was found goes to stdout."""
    found: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count()}
    for name in ("numpy", "google.protobuf", "torch"):
        try:
            module = __import__(name, fromlist=["__version__"])
            found[name] = getattr(module, "__version__", "present")
        except ImportError as exc:
            found[name] = f"missing ({exc})"
    torch = sys.modules.get("torch")
    if torch is not None:
        found["torch_cuda_build"] = torch.version.cuda
        found["cuda_available"] = torch.cuda.is_available()
        if found["cuda_available"]:
            found["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    emit(check="environment", **found)
    missing = [name for name in ("numpy", "google.protobuf", "torch") if name not in sys.modules]
    if missing:
        return None, f"missing {missing}"
    if not found.get("cuda_available"):
        return None, "torch has no CUDA device here"
    return torch, ""


class Instance:
    """One backend instance on its own thread, as the server runs it."""

    def __init__(self, name: str, device: Any, threads: int) -> None:
        from google.protobuf import text_format

        from backends.base import InstanceContext
        from backends.proto import model_config_pb2 as mc
        from backends.pytorch_backend import PyTorchBackend

        model_dir = ROOT / "model_repository" / "mlp_torch"
        config = text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())
        context = InstanceContext(config, 1, model_dir / "1", device, name, threads)
        self.name = name
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.backend = PyTorchBackend(context)
        self.call(self.backend.load)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.pool.submit(fn, *args).result()

    def run(self, x: Any) -> Any:
        return self.call(self.backend.execute, {"INPUT__0": x})["OUTPUT__0"]

    def time(self, x: Any, runs: int) -> list[float]:
        """Seconds per execute, measured on the instance's thread."""

        def measure() -> list[float]:
            for _ in range(10):  # warm-up: TorchScript profiles its first runs, cuBLAS picks kernels
                self.backend.execute({"INPUT__0": x})
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                self.backend.execute({"INPUT__0": x})
                times.append(time.perf_counter() - start)
            return times

        return list(self.call(measure))

    def close(self) -> None:
        self.call(self.backend.unload)
        self.pool.shutdown()


def compare(cpu: Instance, gpus: list[Instance], atol: float) -> bool:
    import numpy as np

    rng = np.random.default_rng(0)
    ok = True
    for batch in BATCHES:
        x = rng.standard_normal((batch, 64)).astype(np.float32)
        expected = cpu.run(x)
        for gpu in gpus:
            got = gpu.run(x)
            diff = float(np.max(np.abs(got - expected)))
            good = got.shape == expected.shape and diff <= atol
            ok = ok and good
            emit(check="compare", batch=batch, instance=gpu.name, max_abs_diff=diff, atol=atol, ok=good)
    return ok


def p50_ms(times: list[float]) -> float:
    return round(statistics.median(times) * 1e3, 4)


def timings(cpu: Instance, gpus: list[Instance], runs: int) -> None:
    import numpy as np

    for batch in BATCHES:
        x = np.random.default_rng(batch).standard_normal((batch, 64)).astype(np.float32)
        cpu_times = cpu.time(x, runs)
        gpu_times = [gpu.time(x, runs) for gpu in gpus]
        both = concurrent(gpus, x, runs)
        emit(
            check="timing",
            batch=batch,
            runs=runs,
            cpu_p50_ms=p50_ms(cpu_times),
            gpu_p50_ms={gpu.name: p50_ms(t) for gpu, t in zip(gpus, gpu_times, strict=True)},
            gpu_both_at_once_p50_ms=p50_ms([t for times in both for t in times]),
            # the instances ran side by side: the busier one's total time is the wall time
            gpu_both_at_once_inferences_per_s=round(len(gpus) * runs * batch / max(map(sum, both)), 1),
            cpu_inferences_per_s=round(batch / statistics.median(cpu_times), 1),
        )


def concurrent(gpus: list[Instance], x: Any, runs: int) -> list[list[float]]:
    """Both instances at once, each on its own thread and stream: each one's latencies."""
    barrier = threading.Barrier(len(gpus))

    def measure(gpu: Instance) -> list[float]:
        barrier.wait()
        return gpu.time(x, runs)

    with ThreadPoolExecutor(max_workers=len(gpus)) as pool:
        return list(pool.map(measure, gpus))


def main() -> int:
    parser = argparse.ArgumentParser(description="PyTorch backend on cuda:0 vs the CPU")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--atol", type=float, default=1e-5)
    parser.add_argument("--dry-run-on-cpu", action="store_true", help="test this script: 'GPU' instances on the CPU")
    args = parser.parse_args()
    torch, why = environment()
    if torch is None and not args.dry_run_on_cpu:
        emit(check="summary", ok=False, ran=False, reason=why)
        return 2
    from backends.base import CPU, Device

    cores = os.cpu_count() or 1
    cpu = Instance("mlp_torch_0_cpu", CPU, cores)
    device = CPU if args.dry_run_on_cpu else Device("gpu", 0)
    gpus = [Instance(f"mlp_torch_{i}_gpu0", device, 1) for i in range(2)]
    streams = [str(gpu.backend._stream) for gpu in gpus]
    emit(check="loaded", cpu_threads=cores, gpu_instances=[g.name for g in gpus], streams=streams)
    ok = compare(cpu, gpus, args.atol)
    timings(cpu, gpus, args.runs)
    for instance in [cpu, *gpus]:
        instance.close()
    emit(check="summary", ok=ok, ran=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
