"""What sequence batching buys: perf_analyzer sequences on a batch-wide accumulator, ``oldest``
batching against one-slot ``direct``.

    .venv/bin/python perf/sequence_batching.py [--repeat 3] [--measurement-interval 3000] [--json OUT.json]

Target: inferences per second with ``oldest`` at least 3 x those with one-slot ``direct``.

The model is examples/triton's seq_state_torch (TorchScript, the control inputs START and READY
as tensors, the running sum as implicit state; scripts/build_sequence_models.py builds it), in a
temporary repository as ``seq_bench`` with one of two configs:

  oldest    max_batch_size 64, ``oldest { max_candidate_sequences: 64 }``: the next requests of
            up to 64 sequences run as one batch
  direct1   max_batch_size 1, ``direct { }``: one slot, so one sequence runs at a time and the
            others wait in the backlog for it to end

perf_analyzer runs ``--sequence-length 20`` at concurrency 64 (64 sequences at once) over gRPC.
Each system is started alone, measured and stopped before the next, in rounds whose order
rotates (perf/side_by_side.py's helpers); the table shows each one's medians over the rounds."""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
from pathlib import Path
from typing import Any

PERF = Path(__file__).resolve().parent
sys.path.insert(0, str(PERF.parent))  # run as a script from anywhere
sys.path.insert(0, str(PERF))

import side_by_side as sbs  # noqa: E402

SYSTEMS = ("oldest", "direct1")
MODEL = "seq_bench"
CONCURRENCY = 64
TARGET_RATIO = 3.0  # oldest / direct1, inferences per second
SEQUENCES = ("--sequence-length", "20", "--sequence-id-range", "1:1000000")
STRATEGIES = {
    "oldest": ("max_batch_size: 64", "oldest { max_candidate_sequences: 64 }"),
    "direct1": ("max_batch_size: 1", "direct { }"),
}


def repository(workspace: Path, name: str) -> Path:
    """A repository holding the accumulator as ``seq_bench`` with ``name``'s batching."""
    root = workspace / f"repository-{name}"
    source = sbs.ROOT / "examples" / "triton" / "seq_state_torch" / "config.pbtxt"
    batch, strategy = STRATEGIES[name]
    config = source.read_text().replace('"seq_state_torch"', f'"{MODEL}"')
    config = config.replace("max_batch_size: 8", batch).replace("direct { }", strategy)
    (root / MODEL).mkdir(parents=True)
    (root / MODEL / "config.pbtxt").write_text(config)
    spec = importlib.util.spec_from_file_location("build", sbs.ROOT / "scripts" / "build_sequence_models.py")
    assert spec is not None
    assert spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    build.build_torch(root / MODEL / "1" / "model.pt")
    return root


def run_round(names: list[str], args: argparse.Namespace, workspace: Path, n: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    pa = sbs.perf_analyzer_path(args.perf_analyzer)
    for name in names:
        spec = sbs.clipperd(name, "grpc", workspace / f"repository-{name}")
        try:
            with sbs.running(spec, workspace / f"{name}-round{n}.log", "grpc", MODEL):
                out = workspace / f"{name}-{n}.csv"
                interval = args.measurement_interval
                result = sbs.measure(pa, spec.address, "grpc", CONCURRENCY, interval, out, MODEL, SEQUENCES)
        except RuntimeError as error:
            result = {"error": str(error)}
        rows.append({"system": name, "concurrency": CONCURRENCY, "round": n, **result})
        print(f"  round {n} {name:10} {sbs.describe(result)}", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args = sbs.parse_round_args(parser, SYSTEMS, repeat=3)
    names = sbs.named_systems(args, SYSTEMS)
    workspace = sbs.round_workspace(args, "sequence-batching-")
    for name in names:
        shutil.rmtree(workspace / f"repository-{name}", ignore_errors=True)
        repository(workspace, name)
    before = sbs.machine()
    print(f"sequences, c={CONCURRENCY}: {', '.join(names)}; {args.repeat} round(s); logs {workspace}", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    for r in range(args.repeat):
        rows += run_round(names[r % len(names) :] + names[: r % len(names)], args, workspace, r + 1)
    summary = sbs.summarize(rows, names, [CONCURRENCY])
    sbs.print_table(summary, {})
    medians: dict[str, float] = {e["system"]: e["infer_per_s"] for e in summary if "infer_per_s" in e}
    if medians.get("oldest") and medians.get("direct1"):
        ratio = medians["oldest"] / medians["direct1"]
        met = "met" if ratio >= TARGET_RATIO else "MISSED"
        print(f"target oldest / one-slot direct infer/s >= {TARGET_RATIO}: {ratio:.2f} -> {met}")
    if args.json:
        report = {"command": sys.argv, "machine_before": before, "machine_after": sbs.machine(), "runs": rows}
        Path(args.json).write_text(json.dumps(report | {"summary": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
