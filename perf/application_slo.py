"""An application over 3 models at concurrency 8 answers within its slo at p99 while one member
is made 10x slower.

    .venv/bin/python perf/application_slo.py [--delay-ms 2] [--slo-ms 15] [--concurrency 8]
                                             [--seconds 10] [--policy vote]
                                             [--client perf_analyzer|rest|grpc]

Three Python members (tests/data/app_models/model.py, each on its own thread, dynamic batching):
two sleep ``delay`` per batch, the third 10x that. The application (``vote`` by default) has an
slo between the fast and the slow latency. Load, at ``concurrency``: perf_analyzer on the
application's KServe face over gRPC (the default, when CLIPPERD_PERF_ANALYZER or
.tools/pa/bin/perf_analyzer is there; a C++ client, so the load costs the machine little), or a
closed loop of Python clients: ``POST /{app}/predict`` (aiohttp) or KServe infer over gRPC
(tritonclient's asyncio client), for ``seconds`` after a warm-up. Reports the client-side
p50/p99 against the slo, and the default answers and stragglers the server counted (GET
/admin/applications/{app}). A second run with the slow member made fast gives the reference."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from side_by_side import measure, perf_analyzer_path  # noqa: E402

from clipperd_admin import ApplicationAdmin  # noqa: E402
from tests.appmodels import add_model  # noqa: E402
from tests.serverproc import running  # noqa: E402

X = [1.0, 2.0, 3.0, 4.0]


async def rest_client(url: str, app: str, until: float, latencies: list[float]) -> None:
    import aiohttp

    body = json.dumps({"input": X}).encode()
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        while time.perf_counter() < until:
            start = time.perf_counter()
            async with session.post(f"http://{url}/{app}/predict", data=body, headers=headers) as response:
                await response.read()
            latencies.append(time.perf_counter() - start)


async def grpc_client(url: str, app: str, until: float, latencies: list[float]) -> None:
    import tritonclient.grpc.aio as grpcclient

    client = grpcclient.InferenceServerClient(url)
    inp = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
    inp.set_data_from_numpy(np.array([X], dtype=np.float32))
    try:
        while time.perf_counter() < until:
            start = time.perf_counter()
            await client.infer(app, [inp])
            latencies.append(time.perf_counter() - start)
    finally:
        await client.close()


async def load(protocol: str, url: str, app: str, concurrency: int, seconds: float) -> list[float]:
    client = rest_client if protocol == "rest" else grpc_client
    warm: list[float] = []
    await asyncio.gather(*(client(url, app, time.perf_counter() + 1.0, warm) for _ in range(concurrency)))
    latencies: list[float] = []
    until = time.perf_counter() + seconds
    await asyncio.gather(*(client(url, app, until, latencies) for _ in range(concurrency)))
    return latencies


def run(args: argparse.Namespace, slow_factor: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp) / "models"
        add_model(repository, "fast_a", value=1, delay_ms=args.delay_ms)
        add_model(repository, "fast_b", value=1, delay_ms=args.delay_ms)
        add_model(repository, "slow", value=1, delay_ms=args.delay_ms * slow_factor)
        with running(repository, "--app-state", "memory://", "--log-level", "WARNING", log_dir=Path(tmp)) as server:
            admin = ApplicationAdmin(server.http_url)
            slo_us = int(args.slo_ms * 1000)
            admin.register_application("app3", ["fast_a", "fast_b", "slow"], args.policy, -1, slo_us)
            if args.client == "perf_analyzer":
                interval_ms = int(args.seconds * 1000 / 3)
                csv_path = Path(tmp) / "pa.csv"
                out = measure(args.pa, server.url, "grpc", args.concurrency, interval_ms, csv_path, "app3", ("-x", "1"))
                if "error" in out:
                    raise SystemExit(f"perf_analyzer: {out['error']}")
                result = {"per_s": out["infer_per_s"], "p50_ms": out["p50_us"] / 1000, "p99_ms": out["p99_us"] / 1000}
            else:
                url = server.http_url if args.client == "rest" else server.url
                latencies = asyncio.run(load(args.client, url, "app3", args.concurrency, args.seconds))
                result = summarise(np.array(latencies) * 1000, args.seconds)
            metrics = admin.get_application("app3")["metrics"]
    predictions = max(metrics["predictions"], 1)
    return {
        "slow_member_ms": args.delay_ms * slow_factor,
        "slo_ms": args.slo_ms,
        **result,
        "server_predictions": metrics["predictions"],
        "server_mean_ms": round(metrics["mean_latency_micros"] / 1000, 2),  # inside the application
        "default_share": round(sum(metrics["defaults"].values()) / predictions, 4),
        "defaults": metrics["defaults"],
        "stragglers": metrics["stragglers"],
        "stragglers_per_prediction": round(metrics["stragglers"] / predictions, 3),
    }


def summarise(ms: np.ndarray, seconds: float) -> dict[str, Any]:
    return {
        "per_s": round(len(ms) / seconds, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "max_ms": round(float(ms.max()), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--delay-ms", type=float, default=2.0, help="the fast members' time per batch")
    parser.add_argument("--slo-ms", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--policy", default="vote", choices=("vote", "average", "exp4"))
    parser.add_argument("--client", default="", choices=("", "perf_analyzer", "rest", "grpc"))
    parser.add_argument("--perf-analyzer", default=None, help="its path (default: CLIPPERD_PERF_ANALYZER)")
    args = parser.parse_args()
    args.pa = perf_analyzer_path(args.perf_analyzer)
    if not args.client:
        args.client = "perf_analyzer" if args.pa.exists() else "rest"
    print(f"client: {args.client}, concurrency {args.concurrency}, policy {args.policy}")
    for label, factor in (("one member 10x slower", 10.0), ("reference: all fast", 1.0)):
        result = run(args, factor)
        print(f"{label}: {json.dumps(result)}")
        if factor == 10.0:
            verdict = "PASS" if result["p99_ms"] <= args.slo_ms else "FAIL"
            print(f"  p99 {result['p99_ms']} ms vs slo {args.slo_ms} ms: {verdict}")


if __name__ == "__main__":
    main()
