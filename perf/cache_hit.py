"""What a response-cache hit costs over gRPC, against the floor (grpc-minimal), under perf_analyzer.

    .venv/bin/python perf/cache_hit.py [--repeat 3] [--measurement-interval 3000] [--json OUT.json]

Target: at concurrency 1, clipperd's p50 latency on a cache hit is at most 1.2 x the floor's.

The systems, each started alone, measured and stopped before the next (perf/side_by_side.py's
helpers), in rounds whose order rotates; the table shows each one's medians over the rounds:

  clipperd          identity_fp32 from a temporary copy of the repository whose config adds
                    ``response_cache { enable: true }``, served with ``--cache-config local,size=64MiB``
  floor             perf/floor_grpc.py: grpc.aio echoing the input (the project's grpc-minimal)
  uncached          the same copy without --cache-config: every request runs the model (reference)

perf_analyzer sends the same input every time (``--input-data zero``), so every request after the
first is a hit; the script reads the server's statistics afterwards and prints the share of hits."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import grpc

PERF = Path(__file__).resolve().parent
sys.path.insert(0, str(PERF.parent))  # run as a script from anywhere
sys.path.insert(0, str(PERF))

import side_by_side as sbs  # noqa: E402

from server.proto import grpc_service_pb2 as pb  # noqa: E402

SYSTEMS = ("clipperd", "floor", "uncached")
CACHE_CONFIG = "local,size=67108864"
TARGET_P50_RATIO = 1.2  # clipperd (hits) / floor at concurrency 1
FIXED_INPUT = ("--input-data", "zero")


def cached_repository(workspace: Path) -> Path:
    """A repository holding identity_fp32 with the response cache enabled."""
    root = workspace / "repository"
    shutil.copytree(sbs.ROOT / "model_repository" / sbs.MODEL, root / sbs.MODEL)
    config = root / sbs.MODEL / "config.pbtxt"
    config.write_text(config.read_text() + "response_cache { enable: true }\n")
    return root


def system(name: str, repository: Path) -> sbs.System:
    if name == "floor":
        return sbs.system("floor")
    spec = sbs.system("clipperd")
    command = [str(repository) if part == "model_repository" else part for part in spec.command]
    if name == "clipperd":
        command += ["--cache-config", CACHE_CONFIG]
    return sbs.System(name, command, spec.address)


def hit_share(address: str) -> str:
    """Hits / requests of the model, from the server's statistics."""
    with grpc.insecure_channel(address) as channel:
        rpc = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelStatistics",
            request_serializer=pb.ModelStatisticsRequest.SerializeToString,
            response_deserializer=pb.ModelStatisticsResponse.FromString,
        )
        row = rpc(pb.ModelStatisticsRequest(name=sbs.MODEL), timeout=5.0).model_stats[0]
    stats = row.inference_stats
    return f"{stats.cache_hit.count} hits of {stats.success.count} requests, {row.execution_count} executions"


def run_round(names: list[str], args: argparse.Namespace, workspace: Path, repository: Path, n: int) -> list[Any]:
    rows: list[dict[str, Any]] = []
    pa = sbs.perf_analyzer_path(args.perf_analyzer)
    for name in names:
        spec = system(name, repository)
        try:
            with sbs.running(spec, workspace / f"{name}-round{n}.log", "grpc"):
                out = workspace / f"{name}-{n}.csv"
                result = sbs.measure(pa, spec.address, "grpc", 1, args.measurement_interval, out, extra=FIXED_INPUT)
                note = hit_share(spec.address) if name != "floor" else ""
        except RuntimeError as error:
            result, note = {"error": str(error)}, ""
        rows.append({"system": name, "concurrency": 1, "round": n, "server": note, **result})
        print(f"  round {n} {name:16} {sbs.describe(result)}  {note}", file=sys.stderr, flush=True)
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return sbs.parse_round_args(parser, SYSTEMS, repeat=3)


def main() -> None:
    args = parse_args()
    names = sbs.named_systems(args, SYSTEMS)
    workspace = sbs.round_workspace(args, "cache-hit-")
    repository = cached_repository(workspace)
    before = sbs.machine()
    print(f"cache hits over gRPC, c=1: {', '.join(names)}; {args.repeat} round(s); logs {workspace}", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    for r in range(args.repeat):
        rows += run_round(names[r % len(names) :] + names[: r % len(names)], args, workspace, repository, r + 1)
    summary = sbs.summarize(rows, names, [1])
    sbs.print_table(summary, {})
    floor = next((e for e in summary if e["system"] == "floor" and "ours_over_this_p50" in e), None)
    if floor is not None:
        ratio = floor["ours_over_this_p50"]
        met = "met" if ratio <= TARGET_P50_RATIO else "MISSED"
        print(f"target c=1 p50 cache hit / floor <= {TARGET_P50_RATIO}: {ratio:.3f} -> {met}")
        print(f"(p99 cache hit / floor: {floor['ours_over_this_p99']:.3f})")
    if args.json:
        report = {"command": sys.argv, "machine_before": before, "machine_after": sbs.machine(), "runs": rows}
        Path(args.json).write_text(json.dumps(report | {"summary": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
