"""What dynamic batching buys on a model that is compute-bound on this CPU, at concurrency 64,
against the model's physical limit here.

    .venv/bin/python perf/batching_gain.py [--model wide_mlp|mlp_torch] [--concurrency 64]
        [--measurement-interval 3000] [--json OUT]

``wide_mlp`` (the default) is a TorchScript MLP 1024 -> 4096 -> 4096 -> 10 (21 M parameters,
about 42 MFLOP a row) built here, seeded, into a temporary repository: at batch 1 it streams its
84 MB of weights for every row, batched it computes. ``mlp_torch`` is the bundled small MLP,
whose rows cost less than the requests that carry them.

Measures, in one run:
- the limit: the model called in-process, back to back, at batch sizes 1 to max_batch_size,
  with the intra-op threads the server gives its one CPU instance; rows per second at the best
  batch size;
- clipperd serving the model with dynamic batching (``wide_mlp``: a 5 ms max queue delay, so a
  batch gathers the requests that come back together instead of leaving with the first),
  perf_analyzer over gRPC at the given concurrency, one row per request;
- the same server with batching off (the config without ``dynamic_batching``).
Prints rows/s for each and the ratios the project's targets are about: batched / limit (>= 0.85)
and batched / unbatched (>= 4)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from side_by_side import measure, perf_analyzer_path  # noqa: E402

from server.model_version import cpu_threads_per_instance  # noqa: E402
from tests.serverproc import EXAMPLES, running  # noqa: E402

WIDE_CONFIG = """name: "wide_mlp"
platform: "pytorch_libtorch"
max_batch_size: 128
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 1024 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 10 ] } ]
dynamic_batching { max_queue_delay_microseconds: 5000 }
instance_group [ { kind: KIND_CPU count: 1 } ]
"""


def build_wide_mlp(folder: Path) -> None:
    torch.manual_seed(0)
    layers = nn.Sequential(nn.Linear(1024, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 10))
    (folder / "1").mkdir(parents=True)
    torch.jit.save(torch.jit.script(layers.eval()), str(folder / "1" / "model.pt"))
    (folder / "config.pbtxt").write_text(WIDE_CONFIG)


def model_folder(base: Path, model: str) -> Path:
    folder = base / "models" / model
    if model == "wide_mlp":
        build_wide_mlp(folder)
    else:
        shutil.copytree(EXAMPLES / model, folder)
    return folder


def in_process_limit(folder: Path, width: int, seconds_per_size: float = 1.0) -> tuple[int, float, dict[int, float]]:
    """(best batch size, its rows/s, rows/s by batch size)."""
    torch.set_num_threads(cpu_threads_per_instance(1))
    module = torch.jit.load(str(folder / "1" / "model.pt"), map_location="cpu").eval()
    rates: dict[int, float] = {}
    size = 1
    with torch.inference_mode():
        while size <= 128:
            x = torch.randn(size, width)
            for _ in range(20):
                module(x)
            calls, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds_per_size:
                module(x)
                calls += 1
            rates[size] = calls * size / (time.perf_counter() - start)
            size *= 2
    best = max(rates, key=lambda s: rates[s])
    return best, rates[best], rates


def serve_and_measure(repository: Path, model: str, concurrency: int, interval_ms: int, logs: Path) -> dict[str, Any]:
    with running(repository, log_dir=logs) as server:
        out = logs / f"{repository.name}.csv"
        result = measure(perf_analyzer_path(None), server.url, "grpc", concurrency, interval_ms, out, model)
    if "error" in result:
        return result
    return {"rows_per_s": result["infer_per_s"], "p99_us": result["p99_us"]}  # one row per request


def repository_copy(base: Path, folder: Path, batching: bool) -> Path:
    repo = base / ("batching-on" if batching else "batching-off")
    shutil.copytree(folder, repo / folder.name)
    if not batching:
        config = repo / folder.name / "config.pbtxt"
        lines = config.read_text().splitlines(keepends=True)
        config.write_text("".join(line for line in lines if not line.startswith("dynamic_batching")))
    return repo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="wide_mlp", choices=["wide_mlp", "mlp_torch"])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--measurement-interval", type=int, default=3000)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="batching-gain-"))
    folder = model_folder(base, args.model)
    best, limit, rates = in_process_limit(folder, 1024 if args.model == "wide_mlp" else 64)
    print(f"{args.model} in-process: best batch {best}, {limit:.0f} rows/s; by size: "
          + ", ".join(f"{s}: {r:.0f}" for s, r in rates.items()), flush=True)  # fmt: skip
    results = {}
    for batching in (True, False):
        name = "on" if batching else "off"
        repo = repository_copy(base, folder, batching)
        results[name] = serve_and_measure(repo, args.model, args.concurrency, args.measurement_interval, base)
        print(f"clipperd batching {name}: {results[name]}", flush=True)
    on, off = results["on"].get("rows_per_s"), results["off"].get("rows_per_s")
    if on and off:
        print(f"batched / limit: {on / limit:.2f} (target >= 0.85); batched / unbatched: {on / off:.2f} (target >= 4)")
    if args.json:
        report = {
            "model": args.model,
            "limit": {"best": best, "rows_per_s": limit, "by_size": rates},
            "server": results,
            "concurrency": args.concurrency,
            "loadavg": os.getloadavg(),
        }
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
