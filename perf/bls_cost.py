"""What BLS costs: a Triton Python model calling ``mlp_torch`` against calling ``mlp_torch``
directly, at concurrency 1 over gRPC, under perf_analyzer.

    .venv/bin/python perf/bls_cost.py [--repeat 3] [--measurement-interval 3000] [--json OUT.json]

Target: the p50 latency through a Python model calling ``mlp_torch`` is at most 1.5 x
``mlp_torch``'s own. Two such models are measured, each against the target:
``bls_mlp_async`` (examples/triton/bls_mlp_async: ``await async_exec()`` in an ``async def
execute``, run as tasks on the event loop: no thread hand-off) and ``bls_mlp``
(examples/triton/bls_mlp: a synchronous ``exec()``, on the instance's thread: four thread
hand-offs per request that calling ``mlp_torch`` directly does not pay).

One clipperd serves a temporary repository holding mlp_torch, bls_mlp and bls_mlp_async; each
round measures the models one after the other (the order rotates between rounds); the table
shows each one's medians over the rounds, and the server's statistics confirm that every BLS
request reached mlp_torch."""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

import grpc

PERF = Path(__file__).resolve().parent
sys.path.insert(0, str(PERF.parent))  # run as a script from anywhere
sys.path.insert(0, str(PERF))

import side_by_side as sbs  # noqa: E402

from server.proto import grpc_service_pb2 as pb  # noqa: E402

TARGET = "mlp_torch"
MODELS = (TARGET, "bls_mlp", "bls_mlp_async")
TARGET_P50_RATIO = 1.5  # bls_mlp / mlp_torch at concurrency 1


def repository(workspace: Path) -> Path:
    root = workspace / "repository"
    shutil.copytree(sbs.ROOT / "model_repository" / TARGET, root / TARGET)
    for name in MODELS[1:]:
        shutil.copytree(sbs.ROOT / "examples" / "triton" / name, root / name)
    return root


def successes(address: str, model: str) -> int:
    with grpc.insecure_channel(address) as channel:
        rpc = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelStatistics",
            request_serializer=pb.ModelStatisticsRequest.SerializeToString,
            response_deserializer=pb.ModelStatisticsResponse.FromString,
        )
        return int(rpc(pb.ModelStatisticsRequest(name=model), timeout=5.0).model_stats[0].inference_stats.success.count)


def run_rounds(args: argparse.Namespace, workspace: Path, spec: sbs.System) -> list[dict[str, Any]]:
    pa = sbs.perf_analyzer_path(args.perf_analyzer)
    rows: list[dict[str, Any]] = []
    for n in range(1, args.repeat + 1):
        shift = (n - 1) % len(args.names)
        for model in args.names[shift:] + args.names[:shift]:
            out = workspace / f"{model}-{n}.csv"
            result = sbs.measure(pa, spec.address, "grpc", 1, args.measurement_interval, out, model=model)
            rows.append({"model": model, "round": n, **result})
            print(f"  round {n} {model:14} {sbs.describe(result)}", file=sys.stderr, flush=True)
    return rows


def medians(rows: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, float]]:
    table = {}
    for name in names:
        good = [r for r in rows if r["model"] == name and "error" not in r]
        if good:
            table[name] = {k: statistics.median(r[k] for r in good) for k in ("p50_us", "p99_us", "infer_per_s")}
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args = sbs.parse_round_args(parser, MODELS, repeat=3)
    args.names = [n.strip() for n in args.systems.split(",") if n.strip()]
    if TARGET not in args.names or any(n not in MODELS for n in args.names):
        sys.exit(f"--systems: models from {', '.join(MODELS)}, {TARGET} among them")
    workspace = sbs.round_workspace(args, "bls-cost-")
    spec = sbs.system("clipperd", repository=repository(workspace))
    before = sbs.machine()
    print(
        f"BLS cost over gRPC, c=1: {', '.join(args.names)}; {args.repeat} round(s); logs {workspace}", file=sys.stderr
    )
    with sbs.running(spec, workspace / "clipperd.log", "grpc", model="bls_mlp"):
        rows = run_rounds(args, workspace, spec)
        counts = {name: successes(spec.address, name) for name in args.names}
    table = medians(rows, args.names)
    print(f"{'model':14} {'p50 us':>8} {'p99 us':>8} {'infer/s':>9} {'p50 / direct':>13}")
    direct = table.get(TARGET, {}).get("p50_us")
    for name, row in table.items():
        ratio = row["p50_us"] / direct if direct else float("nan")
        print(f"{name:14} {row['p50_us']:8.0f} {row['p99_us']:8.0f} {row['infer_per_s']:9.0f} {ratio:13.3f}")
    bls_requests = sum(counts[n] for n in args.names if n != TARGET)
    print(f"server statistics: {TARGET} answered {counts[TARGET]} requests, the BLS models {bls_requests}")
    for name in (n for n in table if n != TARGET):
        if not direct:
            break
        ratio = table[name]["p50_us"] / direct
        verdict = "met" if ratio <= TARGET_P50_RATIO else "MISSED"
        print(f"target c=1 p50 {name} / {TARGET} <= {TARGET_P50_RATIO}: {ratio:.3f} -> {verdict}")
    if args.json:
        report = {"command": sys.argv, "machine_before": before, "machine_after": sbs.machine(), "runs": rows,
                  "summary": table, "statistics": counts, "target": TARGET_P50_RATIO}  # fmt: skip
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
