"""What dynamic batching buys on a model that is compute-bound on this CPU, at concurrency 64,
against the model's physical limit here.

    .venv/bin/python perf/batching_gain.py [--protocol grpc|http] [--repeat 3] [--json OUT]
        [--model wide_mlp|mlp_torch] [--hidden 8192] [--max-batch-size 64] [--delay-us 50000]
        [--target-us T] [--concurrency 64] [--measurement-interval 3000] [--baseline REV]

``wide_mlp`` (the default) is a TorchScript MLP 1024 -> 8192 -> 8192 -> 10 (76 M parameters,
about 150 MFLOP a row) built here, seeded, into a temporary repository: at batch 1 it streams its
300 MB of weights for every row, batched it computes. Its config: max_batch_size 64 (the load
never holds more rows), a 50 ms max queue delay (a batch waits for the requests that come back
together instead of leaving with the first), one CPU instance. ``mlp_torch`` is the bundled
small MLP, whose rows cost less than the requests that carry them.

Measures, in one run:
- the limit: the model called in-process, back to back, at batch sizes 1 to max_batch_size,
  with the intra-op threads the server gives its one CPU instance; rows per second at the best
  batch size;
- clipperd serving the model with dynamic batching, perf_analyzer at the given concurrency, one
  row per request;
- the same server with batching off (the config without ``dynamic_batching``);
- the same server under an AIMD latency target T (``batch_latency_target_us``; by default 1.25x
  the in-process time of a batch as large as the concurrency: the SLO an operator would set).
Prints rows/s for each and the ratios the project's targets are about: batched / limit (>= 0.85),
batched / unbatched (>= 4), and under AIMD p99 / T (<= 1.5) and throughput / limit (>= 0.8).

With --baseline REV, clipperd as commit REV has it (run from a temporary git worktree, see
perf/baseline.py) is measured too, in every round, the order of the two rotating: the figures
above are this checkout's, and a markdown table compares the two (rows/s new/old, gated at
0.95; p99 old/new, shown)."""

from __future__ import annotations

import argparse
import json
import math
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

from baseline import Checkout, Figure, checkouts, report, rotate, split_name  # noqa: E402
from side_by_side import REPOSITORY, clipperd, measure, perf_analyzer_path, project_python, running  # noqa: E402

from schedulers.assembly import cpu_threads_per_instance  # noqa: E402

OURS = "clipperd"
MODES = ("on", "off", "aimd")

WIDE_CONFIG = """name: "wide_mlp"
platform: "pytorch_libtorch"
max_batch_size: {max_batch_size}
input [ {{ name: "INPUT__0" data_type: TYPE_FP32 dims: [ 1024 ] }} ]
output [ {{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 10 ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
"""


def build_wide_mlp(folder: Path, hidden: int, max_batch_size: int, delay_us: int) -> None:
    torch.manual_seed(0)
    layers = nn.Sequential(
        nn.Linear(1024, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10)
    )
    (folder / "1").mkdir(parents=True)
    torch.jit.save(torch.jit.script(layers.eval()), str(folder / "1" / "model.pt"))
    config = WIDE_CONFIG.format(max_batch_size=max_batch_size, delay_us=delay_us)
    (folder / "config.pbtxt").write_text(config)


def model_folder(base: Path, args: argparse.Namespace) -> Path:
    folder: Path = base / "models" / str(args.model)
    if args.model == "wide_mlp":
        build_wide_mlp(folder, args.hidden, args.max_batch_size, args.delay_us)
    else:
        shutil.copytree(REPOSITORY / args.model, folder)
    return folder


def in_process_limit(
    folder: Path, width: int, max_batch_size: int, seconds_per_size: float = 1.0
) -> tuple[int, float, dict[int, float]]:
    """(best batch size, its rows/s, rows/s by batch size), batch sizes up to max_batch_size."""
    torch.set_num_threads(cpu_threads_per_instance(1))
    module = torch.jit.load(str(folder / "1" / "model.pt"), map_location="cpu").eval()
    rates: dict[int, float] = {}
    size = 1
    with torch.inference_mode():
        while size <= max_batch_size:
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


def serve_and_measure(
    repository: Path, args: argparse.Namespace, logs: Path, name: str = OURS, checkout: Checkout | None = None
) -> dict[str, Any]:
    """clipperd (this checkout's, or ``checkout``'s) serving ``repository``, under perf_analyzer."""
    spec = clipperd(name, args.protocol, repository, checkout)
    stem = f"{name.replace('/', '_')}-{repository.name}"
    try:
        with running(spec, logs / f"{stem}.log", args.protocol, model=args.model):
            pa, window = perf_analyzer_path(None), args.measurement_interval
            result = measure(
                pa, spec.address, args.protocol, args.concurrency, window, logs / f"{stem}.csv", args.model
            )
    except RuntimeError as error:
        return {"error": str(error)}
    if "error" in result:
        return result
    return {"rows_per_s": result["infer_per_s"], "p99_us": result["p99_us"]}  # one row per request


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput (its own p99 with it), or the first error."""
    good = sorted((r for r in runs if "error" not in r), key=lambda r: r["rows_per_s"])
    return good[len(good) // 2] if good else runs[0]


def repository_copy(base: Path, folder: Path, mode: str, target_us: int = 0) -> Path:
    """The model as ``mode`` serves it: ``on`` (its config), ``off`` (no dynamic_batching) or
    ``aimd`` (its config plus a batch latency target)."""
    repo = base / f"batching-{mode}"
    shutil.copytree(folder, repo / folder.name)
    config = repo / folder.name / "config.pbtxt"
    lines = config.read_text().splitlines(keepends=True)
    if mode == "off":
        lines = [line for line in lines if not line.startswith("dynamic_batching")]
    if mode == "aimd":
        lines.append(f'parameters {{ key: "batch_latency_target_us" value {{ string_value: "{target_us}" }} }}\n')
    config.write_text("".join(lines))
    return repo


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="wide_mlp", choices=["wide_mlp", "mlp_torch"])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=1, help="rounds; the figures are the median round's")
    parser.add_argument("--protocol", default="grpc", choices=["grpc", "http"], help="what perf_analyzer speaks")
    parser.add_argument("--hidden", type=int, default=8192, help="wide_mlp: width of its two hidden layers")
    parser.add_argument("--max-batch-size", type=int, default=64, help="wide_mlp: its max_batch_size")
    parser.add_argument("--delay-us", type=int, default=50000, help="wide_mlp: its max_queue_delay_microseconds")
    parser.add_argument("--measurement-interval", type=int, default=3000)
    parser.add_argument("--target-us", type=int, default=0, help="AIMD batch latency target (default: 1.25x the "
                        "in-process time of a batch of --concurrency rows)")  # fmt: skip
    parser.add_argument(
        "--modes", type=_modes, default=MODES, help="comma-separated, from on, off, aimd (default: all three)"
    )
    parser.add_argument("--baseline", metavar="REV", help="also measure clipperd as commit REV has it, and compare")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def measure_rounds(
    repos: dict[str, Path], args: argparse.Namespace, base: Path, found: dict[str, Checkout]
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Runs by system and mode: each round every system (their order rotating) in every mode."""
    names = [OURS, *(f"{OURS}@{rev}" for rev in found)]
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {name: {mode: [] for mode in repos} for name in names}
    for round_no in range(args.repeat):  # rounds interleave the modes, so drift hits all alike
        for name in rotate(names, round_no):
            checkout = found[rev] if (rev := split_name(name)[1]) else None
            for mode, repo in repos.items():
                runs[name][mode].append(serve_and_measure(repo, args, base, name, checkout))
                print(f"round {round_no + 1} {name} batching {mode}: {runs[name][mode][-1]}", flush=True)
    return runs


def print_gains(results: dict[str, dict[str, Any]], limit: float, target_us: int) -> None:
    on, off, aimd = (results.get(mode, {}).get("rows_per_s") for mode in MODES)
    if on and off:
        print(f"batched / limit: {on / limit:.2f} (target >= 0.85); batched / unbatched: {on / off:.2f} (target >= 4)")
    if aimd:
        p99_over_target = results["aimd"]["p99_us"] / target_us
        print(f"AIMD, target {target_us} us: p99 / target {p99_over_target:.2f} (<= 1.5), "
              f"throughput / limit {aimd / limit:.2f} (>= 0.8)")  # fmt: skip


def ab_figures(new: dict[str, dict[str, Any]], old: dict[str, dict[str, Any]], where: str) -> list[Figure]:
    """Per mode: rows/s (new/old, gated) and p99 (old/new, shown); a missing figure is NaN and fails."""
    figures = []
    for mode in new:
        for key, label, scale, higher in (("rows_per_s", "rows/s", 1.0, True), ("p99_us", "p99 ms", 1e-3, False)):
            o, n = (float(r[mode].get(key, math.nan)) * scale for r in (old, new))
            figures.append(Figure(f"{where} batching {mode}", label, o, n, higher, gated=higher))
    return figures


def _modes(text: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise argparse.ArgumentTypeError(f"modes are {', '.join(MODES)}; got {text!r}")
    return modes


def main() -> None:
    args = parse_args()
    base = Path(tempfile.mkdtemp(prefix="batching-gain-"))
    folder = model_folder(base, args)
    max_batch = args.max_batch_size if args.model == "wide_mlp" else 128
    best, limit, rates = in_process_limit(folder, 1024 if args.model == "wide_mlp" else 64, max_batch)
    print(f"{args.model} in-process: best batch {best}, {limit:.0f} rows/s; by size: "
          + ", ".join(f"{s}: {r:.0f}" for s, r in rates.items()), flush=True)  # fmt: skip
    # the SLO an operator would set: a little above what a batch as large as the load takes here
    size = max(s for s in rates if s <= args.concurrency)
    target_us = args.target_us or round(1.25 * size / rates[size] * 1e6)
    repos = {mode: repository_copy(base, folder, mode, target_us) for mode in args.modes}
    try:
        with checkouts([args.baseline] if args.baseline else [], project_python()) as found:
            runs = measure_rounds(repos, args, base, found)
    except (ValueError, RuntimeError) as error:  # a revision that is not one, a worktree that imports elsewhere
        sys.exit(f"batching_gain: {error}")
    medians = {
        name: {mode: median_run(found_runs) for mode, found_runs in by_mode.items()} for name, by_mode in runs.items()
    }
    results = medians[OURS]
    print(f"medians of {args.repeat} round(s): {results}", flush=True)
    print_gains(results, limit, target_us)
    where = f"{args.protocol} c={args.concurrency}"
    compared = []
    for rev, checkout in found.items():
        old = f"{OURS}@{rev}"
        compared.append(report(ab_figures(results, medians[old], where), OURS, checkout, old, args.repeat))
    if args.json:
        report_json = {
            "model": args.model,
            "hidden": args.hidden,
            "max_batch_size": max_batch,
            "limit": {"best": best, "rows_per_s": limit, "by_size": rates},
            "server": results,
            "runs": runs[OURS],
            "aimd_target_us": target_us,
            "concurrency": args.concurrency,
            "protocol": args.protocol,
            "loadavg": os.getloadavg(),
            "baseline": [c | {"server": medians[str(c["old"])], "runs": runs[str(c["old"])]} for c in compared],
        }
        Path(args.json).write_text(json.dumps(report_json, indent=1) + "\n")


if __name__ == "__main__":
    main()
