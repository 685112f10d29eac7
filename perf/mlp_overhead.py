"""What the server adds to a real model: ``mlp_torch`` at batch 1 over gRPC, against the model's
own in-process latency on the same machine, in the same run.

    python perf/mlp_overhead.py [--requests 3000]

Starts ``clipperd serve`` on the bundled repository (127.0.0.1, a free port), then measures:
- in-process, back to back: the TorchScript model called directly in a tight loop
  (torch.inference_mode, the intra-op threads the server gives its one CPU instance), p50;
- in-process, paced: the same calls with the idle gap the server sees between requests at
  concurrency 1 (the client's round trip). On a VM an idle core wakes slowly and cold: the very
  same call then takes several times longer, and that is the model's cost, not the server's;
- server side: ModelStatistics' success duration over the run (mean time from the request's
  arrival in the core to its response) and its compute_infer share;
- client side: p50 of a synchronous tritonclient round trip (includes gRPC and the client).
The figure of merit is the server's mean request time minus the model's in-process p50."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tritonclient.grpc as grpcclient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from schedulers.assembly import cpu_threads_per_instance  # noqa: E402
from tests.serverproc import EXAMPLES, running  # noqa: E402

X = np.random.default_rng(0).standard_normal((1, 64), dtype=np.float32)


def in_process(module: Any, requests: int, gap_s: float = 0.0) -> float:
    """p50 in µs of ``requests`` calls, ``gap_s`` of idleness before each."""
    times = []
    with torch.inference_mode():
        for _ in range(requests):
            if gap_s:
                time.sleep(gap_s)
            t0 = time.perf_counter()
            module(torch.from_numpy(X)).numpy()
            times.append(time.perf_counter() - t0)
    return statistics.median(times[requests // 10 :]) * 1e6


def server_stats(client: grpcclient.InferenceServerClient) -> tuple[int, int, int]:
    stats = client.get_inference_statistics("mlp_torch").model_stats[0].inference_stats
    return stats.success.count, stats.success.ns, stats.compute_infer.ns


def over_grpc(url: str, requests: int) -> tuple[float, float, float]:
    """(client p50, server mean request time, server mean compute_infer), in µs."""
    client = grpcclient.InferenceServerClient(url)
    tensor = grpcclient.InferInput("INPUT__0", [1, 64], "FP32")
    tensor.set_data_from_numpy(X)
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
    return statistics.median(times) * 1e6, (ns1 - ns0) / n / 1e3, (infer1 - infer0) / n / 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    torch.set_num_threads(cpu_threads_per_instance(1))  # what the server gives its one CPU instance
    module = torch.jit.load(str(EXAMPLES / "mlp_torch" / "1" / "model.pt"))
    back_to_back = in_process(module, args.requests)
    with running(EXAMPLES, log_dir=Path(os.environ.get("TMPDIR", "/tmp"))) as server:
        client_p50, server_mean, infer_mean = over_grpc(server.url, args.requests)
    paced = in_process(module, args.requests // 2, gap_s=max(client_p50 - server_mean, 0) / 1e6)
    rows = [
        ("in-process p50, back to back", back_to_back),
        ("in-process p50, paced like the server's requests", paced),
        ("server: mean request time (statistics)", server_mean),
        ("server: mean compute_infer (statistics)", infer_mean),
        ("client: p50 round trip (tritonclient sync)", client_p50),
        ("server mean - in-process p50 back to back", server_mean - back_to_back),
        ("server mean - in-process p50 paced", server_mean - paced),
    ]
    print(f"{'measure':50} {'us':>7}")
    for label, value in rows:
        print(f"{label:50} {value:7.0f}")


if __name__ == "__main__":
    main()
