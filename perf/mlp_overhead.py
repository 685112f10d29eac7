"""What the server adds to a real model: ``mlp_torch`` at batch 1 over gRPC, against the model's
own in-process latency on the same machine, in the same run.

    python perf/mlp_overhead.py [--requests 3000]

Starts ``clipperd serve`` on the bundled repository (127.0.0.1, a free port), then measures:
- in-process: the TorchScript model called directly (torch.inference_mode, the same intra-op
  threads as the server's single CPU instance), p50 and mean;
- server side: ModelStatistics' success duration over the run (mean time from the request's
  arrival in the core to its response), and its compute_infer share;
- client side: p50 of a synchronous tritonclient round trip (includes gRPC and the client).
Prints a table; the figure of merit is server mean minus in-process mean (and p50)."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import tritonclient.grpc as grpcclient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.model_version import cpu_threads_per_instance  # noqa: E402
from tests.serverproc import EXAMPLES, running  # noqa: E402


def in_process(requests: int) -> list[float]:
    torch.set_num_threads(cpu_threads_per_instance(1))  # what the server gives its one CPU instance
    module = torch.jit.load(str(EXAMPLES / "mlp_torch" / "1" / "model.pt"))
    x = np.random.default_rng(0).standard_normal((1, 64), dtype=np.float32)
    times = []
    with torch.inference_mode():
        for _ in range(requests):
            t0 = time.perf_counter()
            module(torch.from_numpy(x)).numpy()
            times.append(time.perf_counter() - t0)
    return times[requests // 10 :]


def server_stats(client: grpcclient.InferenceServerClient) -> tuple[int, int, int]:
    stats = client.get_inference_statistics("mlp_torch").model_stats[0].inference_stats
    return stats.success.count, stats.success.ns, stats.compute_infer.ns


def over_grpc(url: str, requests: int) -> tuple[list[float], float, float]:
    client = grpcclient.InferenceServerClient(url)
    x = np.random.default_rng(0).standard_normal((1, 64), dtype=np.float32)
    tensor = grpcclient.InferInput("INPUT__0", [1, 64], "FP32")
    tensor.set_data_from_numpy(x)
    for _ in range(requests // 10):
        client.infer("mlp_torch", [tensor])
    count0, ns0, infer0 = server_stats(client)
    times = []
    for _ in range(requests):
        t0 = time.perf_counter()
        client.infer("mlp_torch", [tensor])
        times.append(time.perf_counter() - t0)
    count1, ns1, infer1 = server_stats(client)
    n = count1 - count0
    return times, (ns1 - ns0) / n / 1e3, (infer1 - infer0) / n / 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    local = in_process(args.requests)
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    with running(EXAMPLES, log_dir=logs) as server:
        client_times, server_mean_us, infer_mean_us = over_grpc(server.url, args.requests)
    local_p50 = statistics.median(local) * 1e6
    local_mean = statistics.fmean(local) * 1e6
    print(f"{'measure':42} {'us':>8}")
    print(f"{'in-process p50 / mean':42} {local_p50:8.0f} / {local_mean:.0f}")
    print(f"{'server: mean request time (statistics)':42} {server_mean_us:8.0f}")
    print(f"{'server: mean compute_infer (statistics)':42} {infer_mean_us:8.0f}")
    print(f"{'client: p50 round trip (tritonclient sync)':42} {statistics.median(client_times) * 1e6:8.0f}")
    print(f"{'server mean - in-process p50':42} {server_mean_us - local_p50:8.0f}")
    print(f"{'server mean - in-process mean':42} {server_mean_us - local_mean:8.0f}")


if __name__ == "__main__":
    main()
