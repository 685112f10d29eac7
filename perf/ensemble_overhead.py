"""An ensemble against calling its steps one by one from the client, at concurrency 1 over gRPC.

    python perf/ensemble_overhead.py [--ensembles mlp_pipeline,diamond] [--requests 500] [--rounds 3]

Starts ``clipperd serve`` on the bundled repository (as perf/side_by_side.py does), then, per
round and per ensemble, with one synchronous tritonclient:
- ensemble: the p50 round trip of a batch-1 request to the ensemble;
- steps: the client walks the ensemble's own config (read from the server) and calls each step
  model with the tensors the step would receive, feeding outputs forward; per step, the p50 of
  its round trip; ``summed`` is their sum (what a client pays to run the DAG itself, step after
  step; ``chain`` is the p50 of that whole walk, for reference);
- server side: the ensemble's mean request time less its steps' (ModelStatistics): what the
  ensemble itself adds (planning, tasks, hand-offs).
The figure is ensemble / summed (the target: <= 0.5). Rounds alternate the two sides; the table
shows the medians of the rounds."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from side_by_side import machine, running, system  # perf/ is on sys.path: the script's own folder

TARGET = 0.5
NUMPY = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64}


def example_inputs(client: grpcclient.InferenceServerClient, model: str) -> dict[str, np.ndarray]:
    """One row of random data for every input the ensemble declares."""
    rng = np.random.default_rng(0)
    inputs = {}
    for tensor in client.get_model_metadata(model).inputs:
        shape = [1 if d == -1 else int(d) for d in tensor.shape]
        inputs[tensor.name] = rng.standard_normal(shape).astype(NUMPY[tensor.datatype])
    return inputs


def request(client: grpcclient.InferenceServerClient, model: str, tensors: dict[str, np.ndarray]) -> Any:
    inputs = []
    for name, data in tensors.items():
        tensor = grpcclient.InferInput(name, list(data.shape), grpcclient.np_to_triton_dtype(data.dtype))
        tensor.set_data_from_numpy(data)
        inputs.append(tensor)
    return client.infer(model, inputs)


def timed(client: grpcclient.InferenceServerClient, model: str, tensors: dict[str, np.ndarray]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = request(client, model, tensors)
    return result, (time.perf_counter() - started) * 1e6


def ordered_steps(config: Any) -> list[Any]:
    """The ensemble's steps in an order the client can run them: each after its inputs exist."""
    produced = {t.name for t in config.input}
    left, order = list(config.ensemble_scheduling.step), []
    while left:
        step = next(s for s in left if set(s.input_map.values()) <= produced)
        left.remove(step)
        order.append(step)
        produced |= set(step.output_map.values())
    return order


def walk_steps(
    client: grpcclient.InferenceServerClient, steps: list[Any], inputs: dict[str, np.ndarray]
) -> tuple[list[float], float]:
    """Runs the DAG from the client, step by step: each step's round trip and the whole walk (µs)."""
    tensors = dict(inputs)
    times = []
    started = time.perf_counter()
    for step in steps:
        step_inputs = {key: tensors[value] for key, value in step.input_map.items()}
        result, us = timed(client, step.model_name, step_inputs)
        times.append(us)
        for key, value in step.output_map.items():
            tensors[value] = result.as_numpy(key)
    return times, (time.perf_counter() - started) * 1e6


def success(client: grpcclient.InferenceServerClient, model: str) -> tuple[int, int]:
    stats = client.get_inference_statistics(model).model_stats[0].inference_stats
    return stats.success.count, stats.success.ns


def added_us(client: grpcclient.InferenceServerClient, model: str, steps: list[str], run: Any) -> tuple[float, float]:
    """Runs ``run()`` and returns what it returns with what the ensemble adds to its steps, from
    the server's statistics: its mean request time less the sum of its steps' mean request times."""
    names = [model, *steps]
    before = [success(client, n) for n in names]
    result = run()
    after = [success(client, n) for n in names]
    means = [(a[1] - b[1]) / max(a[0] - b[0], 1) / 1e3 for a, b in zip(after, before, strict=True)]
    return result, means[0] - sum(means[1:])


def one_round(client: grpcclient.InferenceServerClient, model: str, requests: int, flip: bool) -> dict[str, Any]:
    inputs = example_inputs(client, model)
    steps = ordered_steps(client.get_model_config(model).config)

    def ensemble_side() -> float:
        return statistics.median(timed(client, model, inputs)[1] for _ in range(requests))

    def steps_side() -> tuple[list[float], float]:
        walks = [walk_steps(client, steps, inputs) for _ in range(requests)]
        per_step = [statistics.median(w[0][i] for w in walks) for i in range(len(steps))]
        return per_step, statistics.median(w[1] for w in walks)

    for _ in range(max(requests // 10, 10)):  # warm both paths
        timed(client, model, inputs)
        walk_steps(client, steps, inputs)
    names = [s.model_name for s in steps]
    if flip:
        per_step, chain = steps_side()
        ensemble, added = added_us(client, model, names, ensemble_side)
    else:
        ensemble, added = added_us(client, model, names, ensemble_side)
        per_step, chain = steps_side()
    summed = sum(per_step)
    return {"ensemble_p50_us": ensemble, "steps_p50_us": dict(zip(names, per_step, strict=True)),
            "summed_us": summed, "chain_p50_us": chain, "ratio": ensemble / summed,
            "server_added_us": added}  # fmt: skip


def wait_until_ready(client: grpcclient.InferenceServerClient, timeout_s: float = 300.0) -> None:
    """The server loads its models concurrently: wait until all are (the others' loading would
    take the CPU from the first round)."""
    deadline = time.monotonic() + timeout_s
    while not client.is_server_ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server is not ready after {timeout_s:.0f} s")
        time.sleep(0.25)


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("ensemble_p50_us", "summed_us", "chain_p50_us", "ratio", "server_added_us")
    summary: dict[str, Any] = {k: statistics.median(r[k] for r in rounds) for k in keys}
    summary["steps_p50_us"] = {
        n: statistics.median(r["steps_p50_us"][n] for r in rounds) for n in rounds[0]["steps_p50_us"]
    }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ensembles", default="mlp_pipeline,diamond", help="comma-separated ensemble models")
    parser.add_argument("--requests", type=int, default=500, help="requests per side, per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="write every round and the medians here")
    args = parser.parse_args()
    models = [m for m in args.ensembles.split(",") if m]
    spec = system("clipperd", "grpc")
    log = Path(tempfile.mkdtemp(prefix="ensemble-overhead-")) / "clipperd.log"
    before = machine()
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in models}
    with running(spec, log, "grpc", model=models[-1]), grpcclient.InferenceServerClient(spec.address) as client:
        wait_until_ready(client)
        for r in range(args.rounds):
            for model in models:
                results[model].append(one_round(client, model, args.requests, flip=r % 2 == 1))
                print(f"  round {r + 1} {model}: {results[model][-1]['ratio']:.3f}", file=sys.stderr, flush=True)
    print(f"{'ensemble':14} {'ensemble p50 us':>16} {'steps summed us':>16} {'chain p50 us':>13} {'ratio':>6}  target")
    summaries = {m: summarize(rounds) for m, rounds in results.items()}
    for model, s in summaries.items():
        verdict = "met" if s["ratio"] <= TARGET else "MISSED"
        print(
            f"{model:14} {s['ensemble_p50_us']:16.0f} {s['summed_us']:16.0f} {s['chain_p50_us']:13.0f} "
            f"{s['ratio']:6.3f}  <= {TARGET} {verdict}"
        )
        steps = ", ".join(f"{n} {us:.0f}" for n, us in s["steps_p50_us"].items())
        print(f"{'':14} steps p50 us: {steps}; the ensemble adds {s['server_added_us']:.0f} us to its steps")
    if args.json:
        report = {"command": sys.argv, "machine_before": before, "machine_after": machine(), "rounds": results,
                  "summary": summaries, "target": TARGET}  # fmt: skip
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
