"""What an isolated worker costs: the bundled ``mlp_torch`` served with its instance in the
server (a thread) and in a worker process (``execution_mode: process``), same load.

    .venv/bin/python perf/worker_cost.py [--concurrency 32] [--repeat 3] [--protocol grpc|http]

Each round serves both, in turn, from copies of model_repository/mlp_torch (the process copy
adds the parameter), and measures infer/s and latency with perf_analyzer (one row per request,
perf/side_by_side.py's stability criterion). Target: the worker costs at most 15 % of the
throughput (process / thread >= 0.85)."""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from side_by_side import measure, perf_analyzer_path  # noqa: E402

from tests.serverproc import EXAMPLES, running  # noqa: E402

PROCESS = '\nparameters { key: "execution_mode" value: { string_value: "process" } }\n'


def repository(base: Path, mode: str) -> Path:
    repo = base / mode
    shutil.copytree(EXAMPLES / "mlp_torch", repo / "mlp_torch")
    if mode == "process":
        config = repo / "mlp_torch" / "config.pbtxt"
        config.write_text(config.read_text() + PROCESS)
    return repo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--protocol", default="grpc", choices=["grpc", "http"])
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="worker-cost-"))
    results: dict[str, list[dict[str, float]]] = {"thread": [], "process": []}
    for round_no in range(1, args.repeat + 1):
        for mode in results:
            with running(repository(base / f"round{round_no}", mode), log_dir=base) as server:
                address = server.url if args.protocol == "grpc" else server.http_url
                out = base / f"{mode}-{round_no}.csv"
                result = measure(
                    perf_analyzer_path(None), address, args.protocol, args.concurrency, 3000, out, "mlp_torch"
                )
            results[mode].append(result)
            print(f"round {round_no} {mode}: {result}", flush=True)
    medians = {
        mode: {key: statistics.median(r[key] for r in runs) for key in ("infer_per_s", "p50_us", "p99_us")}
        for mode, runs in results.items()
    }
    print(f"medians: {medians}")
    ratio = medians["process"]["infer_per_s"] / medians["thread"]["infer_per_s"]
    print(f"process / thread: infer/s {ratio:.2f} (target >= 0.85), p50 "
          f"{medians['process']['p50_us'] / medians['thread']['p50_us']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
