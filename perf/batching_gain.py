"""What dynamic batching buys on a model that is compute-bound on this CPU: ``mlp_torch``
(TorchScript, 64 -> 256 -> 256 -> 10) at concurrency 64, against its physical limit here.

    .venv/bin/python perf/batching_gain.py [--concurrency 64] [--measurement-interval 3000]

Measures, in one run:
- the limit: the model called in-process, back to back, at batch sizes 1 to max_batch_size,
  with the intra-op threads the server gives its one CPU instance; rows per second at the best
  batch size;
- clipperd serving the bundled mlp_torch (``dynamic_batching { }``), perf_analyzer over gRPC at
  the given concurrency, batch 1 per request;
- the same server with batching off (the config without ``dynamic_batching``).
Prints rows/s for each and the ratios the project's targets are about: batched / limit (>= 0.85)
and batched / unbatched (>= 4)."""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.model_version import cpu_threads_per_instance  # noqa: E402
from tests.serverproc import EXAMPLES, running  # noqa: E402

MODEL = "mlp_torch"


def perf_analyzer() -> Path:
    configured = os.environ.get("CLIPPERD_PERF_ANALYZER")
    return Path(configured) if configured else ROOT / ".tools" / "pa" / "bin" / "perf_analyzer"


def in_process_limit(seconds_per_size: float = 1.0) -> tuple[int, float, dict[int, float]]:
    """(best batch size, its rows/s, rows/s by batch size)."""
    torch.set_num_threads(cpu_threads_per_instance(1))
    module = torch.jit.load(str(EXAMPLES / MODEL / "1" / "model.pt"), map_location="cpu").eval()
    rates: dict[int, float] = {}
    size = 1
    with torch.inference_mode():
        while size <= 128:
            x = torch.randn(size, 64)
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


def serve_and_measure(repository: Path, concurrency: int, interval_ms: int, logs: Path) -> dict[str, Any]:
    with running(repository, log_dir=logs) as server:
        out = logs / f"{repository.name}.csv"
        command = [str(perf_analyzer()), "-m", MODEL, "-u", server.url, "-i", "grpc"]
        command += ["--concurrency-range", f"{concurrency}:{concurrency}", "--measurement-interval", str(interval_ms)]
        command += ["--stability-percentage", "25", "--max-trials", "20", "-f", str(out)]
        run = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        if run.returncode != 0:
            return {"error": (run.stdout + run.stderr).strip().splitlines()[-1:]}
        with out.open() as f:
            row = next(csv.DictReader(f))
        return {"rows_per_s": float(row["Inferences/Second"]), "p99_us": int(row["p99 latency"])}


def repository_copy(base: Path, batching: bool) -> Path:
    repo = base / ("batching-on" if batching else "batching-off")
    shutil.copytree(EXAMPLES / MODEL, repo / MODEL)
    if not batching:
        config = repo / MODEL / "config.pbtxt"
        config.write_text(config.read_text().replace("dynamic_batching { }", ""))
    return repo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--measurement-interval", type=int, default=3000)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    best, limit, rates = in_process_limit()
    print(f"in-process: best batch {best}, {limit:.0f} rows/s; by size: "
          + ", ".join(f"{s}: {r:.0f}" for s, r in rates.items()), flush=True)  # fmt: skip
    base = Path(tempfile.mkdtemp(prefix="batching-gain-"))
    results = {}
    for batching in (True, False):
        name = "on" if batching else "off"
        results[name] = serve_and_measure(
            repository_copy(base, batching), args.concurrency, args.measurement_interval, base
        )
        print(f"clipperd batching {name}: {results[name]}", flush=True)
    on, off = results["on"].get("rows_per_s"), results["off"].get("rows_per_s")
    if on and off:
        print(f"batched / limit: {on / limit:.2f} (target >= 0.85); batched / unbatched: {on / off:.2f} (target >= 4)")
    if args.json:
        report = {"limit": {"best": best, "rows_per_s": limit, "by_size": rates}, "server": results,
                  "concurrency": args.concurrency, "loadavg": os.getloadavg()}  # fmt: skip
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
