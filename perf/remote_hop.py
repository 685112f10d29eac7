"""What a clipperd front end costs and buys in front of one remote clipperd model container
(backends/remote), on perf/batching_gain.py's compute-bound ``wide_mlp``.

    CLIPPERD_PERF_ANALYZER=.tools/pa/bin/perf_analyzer .venv/bin/python perf/remote_hop.py \\
        [--repeat 5] [--concurrency 64] [--measurement-interval 3000] [--c1-interval 1500] \\
        [--stability 25] [--front-cpus 1] [--container-cpus 1] [--pa-cpus 0] [--front-count 1] [--front-max-batch 64] \\
        [--front-delay-us 50000] [--front-protocol grpc|http] [--c1-only] [--json OUT]

Every system is started once and stays up, idle but for the one perf_analyzer measures; each
round measures three groups, one after the other: wide_mlp at c=64 (batched, pair, unbatched),
wide_mlp at c=1 (container, pair), identity_fp32 at c=1 (container, pair, floor). A group's
measurements are neighbours a few seconds apart, so its ratios see one state of this drifting
machine (the floor's p50 has moved 270-720 us within an hour); the order within each group
turns by one each round. The summary gives each ratio by round, the median round, and in how
many rounds each target holds. For each c=64 measurement the computing server's ModelStatistics
give its rows per batch, time per batch and compute share (throughput x compute time per row:
the share of the time the model computes), and each round pair / batched at equal compute speed
(the ratio of the shares): the machine's speed, which moves the model's time per batch by 20 %
within minutes, moves both figures of a share alike. The workspace (/tmp/remote-hop-*) is removed after a run, kept
with its logs after a failed one.

Measures, in each round (the figures are the median round's):
- ``batched``: perf_analyzer straight at a container serving wide_mlp with dynamic batching
  (batching_gain.py's config: max_batch_size 64, 50 ms max queue delay): the container's own best;
- ``unbatched``: straight at a container serving it without dynamic batching;
- ``pair``: perf_analyzer at a front end whose ``wide_mlp`` is a remote model over
  ``--front-protocol`` (default grpc, the remote backend's default) to that unbatched container: the front
  end batches as the batched container does: ``--front-count`` batches in flight
  (instance_group count, default 1), each of at most ``--front-max-batch`` rows
  (max_batch_size, default 64) formed within ``--front-delay-us`` (max_queue_delay, default
  50 ms: the returning callers make one full batch; with 20 ms the 64 callers split into
  cohorts of about 21 rows that never merge again); all three at concurrency 64, one row a
  request;
- at concurrency 1, p50 of: the unbatched container straight, the pair, and the grpc.aio floor
  (perf/floor_grpc.py, identity_fp32) straight: the hop's cost (pair p50 - container p50) against
  one gRPC round trip of the floor. Also identity_fp32 through the pair and straight, where the
  model's own time (about 16 ms for wide_mlp at batch 1) does not hide the hop (the front
  end's identity_fp32: count 1, no queue delay, the container's max_batch_size).

Placement on this 2-core machine (taskset): perf_analyzer on ``--pa-cpus`` (core 0) and every
server on the other core: the batched and the unbatched container, the floor server, and the
pair's front end (``--front-cpus``) with its container (``--container-cpus``, the unbatched
one), so that every system under test has the same one core (the container's one instance
computes with one intra-op thread; while it computes, the front end has nothing to do). ``--front-cpus 0`` puts
the front end with perf_analyzer instead (the placement before 2026-12-07 evening). An empty
value (``--front-cpus ''``) leaves that process unpinned; ``--c1-only`` measures only the
identity_fp32 c=1 hop and the floor. Targets (issue 17): pair >= 0.9 x batched and >= 3 x
unbatched at c=64; pair p50 - container p50 <= the floor's p50 at c=1."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tritonclient.grpc as grpcclient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from batching_gain import build_wide_mlp, repository_copy  # noqa: E402
from side_by_side import (  # noqa: E402
    REPOSITORY,
    System,
    clipperd,
    free_port,
    machine,
    measure,
    model_ready,
    perf_analyzer_path,
    pinned,
    pinned_perf_analyzer,
    running,
    system,
)

WIDE = "wide_mlp"
ECHO = "identity_fp32"
FRONT_CONFIG = """name: "{name}"
backend: "remote"
max_batch_size: {max_batch}
dynamic_batching {{ max_queue_delay_microseconds: {delay} }}
instance_group [ {{ kind: KIND_CPU, count: {count} }} ]
parameters {{ key: "endpoints" value {{ string_value: "{endpoint}" }} }}
parameters {{ key: "protocol" value {{ string_value: "{protocol}" }} }}
"""


def open_http(spec: System) -> str:
    """Opens the container's HTTP port too (for ``--front-protocol http``); its address."""
    port = free_port()
    spec.command[spec.command.index("--http-port") + 1] = str(port)
    return f"127.0.0.1:{port}"


def repositories(base: Path, wide: bool) -> dict[str, Path]:
    """The containers' repositories (``on``: wide_mlp batched, ``off``: unbatched; identity_fp32
    in both) and the front end's (``front``: its models remote, the endpoint written in at run
    time). Without ``wide`` (``--c1-only``) only identity_fp32, in ``off`` and ``front``."""
    if wide:
        folder = base / "models" / WIDE
        build_wide_mlp(folder, 8192, 64, 50000)
        repos = {mode: repository_copy(base, folder, mode) for mode in ("on", "off")}
    else:
        repos = {"off": base / "batching-off"}
    for repo in repos.values():
        shutil.copytree(REPOSITORY / ECHO, repo / ECHO)
    repos["front"] = base / "front"
    return repos


def write_front(front: Path, endpoint: str, args: argparse.Namespace) -> None:
    for name in (ECHO,) if args.c1_only else (WIDE, ECHO):
        wide = name == WIDE  # identity_fp32 as the container has it: the c=1 hop alone
        text = FRONT_CONFIG.format(
            name=name,
            endpoint=endpoint,
            count=args.front_count if wide else 1,
            protocol=args.front_protocol,
            delay=args.front_delay_us if wide else 0,
            max_batch=args.front_max_batch if wide else 0,
        )
        (front / name / "1").mkdir(parents=True, exist_ok=True)
        (front / name / "config.pbtxt").write_text(text)


def servers(repos: dict[str, Path], args: argparse.Namespace) -> dict[str, System]:
    """Every system of the run, in the order they start (the front end after its container):
    the batched container (not with ``--c1-only``), the unbatched container, the front end over
    it, and the floor."""
    found: dict[str, System] = {}
    if not args.c1_only:
        found["batched"] = pinned(clipperd("batched", "grpc", repos["on"]), args.container_cpus)
    container = found["container"] = pinned(clipperd("container", "grpc", repos["off"]), args.container_cpus)
    http_address = open_http(container)
    write_front(repos["front"], http_address if args.front_protocol == "http" else container.address, args)
    found["front"] = pinned(clipperd("front", "grpc", repos["front"]), args.front_cpus)
    found["floor"] = pinned(system("floor"), args.container_cpus)
    return found


# Each group's measurements follow one another, so its ratio compares neighbours a few seconds
# apart; the order within a group turns by one each round, so none is always measured first.
C64 = (("batched_c64", "batched"), ("pair_c64", "front"), ("unbatched_c64", "container"))
C1_WIDE = (("container_c1", "container"), ("pair_c1", "front"))
C1_ECHO = (("container_echo_c1", "container"), ("pair_echo_c1", "front"), ("floor_c1", "floor"))
# the server whose model computes each c=64 measurement's batches (the pair's: its container)
COMPUTED_BY = {"batched_c64": "batched", "pair_c64": "container", "unbatched_c64": "container"}


def wait_ready(addresses: list[str], model: str, within_s: float = 120.0) -> None:
    deadline = time.monotonic() + within_s
    for address in addresses:
        while not model_ready(address, "grpc", model):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{address}: {model} not ready within {within_s:.0f} s")
            time.sleep(0.25)


def batch_counts(address: str, model: str) -> tuple[int, int, int]:
    """The server's rows, executions and compute time (ns, over all batch sizes) of ``model`` so
    far, from its ModelStatistics."""
    with grpcclient.InferenceServerClient(address) as client:
        stats = client.get_inference_statistics(model).model_stats[0]
    compute_ns = sum(int(b.compute_infer.ns) for b in stats.batch_stats)
    return int(stats.inference_count), int(stats.execution_count), compute_ns


def batching(before: tuple[int, int, int], after: tuple[int, int, int], infer_per_s: float) -> dict[str, float]:
    """What the computing server did in a measurement: rows per batch (whether the callers stayed
    one cohort), the model's time per batch, and the share of the time spent computing
    (throughput x compute time per row): a throughput that the machine's speed of the moment
    does not move, for this compute-bound model."""
    rows, executions, compute_ns = (a - b for a, b in zip(after, before, strict=True))
    per_batch_s = compute_ns / max(executions, 1) / 1e9
    return {
        "rows_per_batch": round(rows / max(executions, 1), 1),
        "compute_ms_per_batch": round(per_batch_s * 1e3, 2),
        "compute_share": infer_per_s * compute_ns / max(rows, 1) / 1e9,
    }


def turned(group: tuple[tuple[str, str], ...], n: int) -> tuple[tuple[str, str], ...]:
    k = n % len(group)
    return group[k:] + group[:k]


def one_round(n: int, up: dict[str, System], args: argparse.Namespace, base: Path, pa: Path) -> dict[str, Any]:
    """Round ``n``: every group measured once, all systems already up and idle but the one measured."""
    logs = base / "logs"
    result: dict[str, Any] = {"order": []}

    def run(name: str, server: str, concurrency: int, model: str, interval_ms: int) -> None:
        computing = up[COMPUTED_BY[name]].address if name in COMPUTED_BY else None
        before = batch_counts(computing, model) if computing else None
        address, csv = up[server].address, logs / f"{name}.csv"
        figures = measure(pa, address, "grpc", concurrency, interval_ms, csv, model, stability=args.stability)
        if computing and before and "error" not in figures:
            figures |= batching(before, batch_counts(computing, model), figures["infer_per_s"])
        result[name] = figures
        result["order"].append(name)
        print(f"  {name}: {figures}", flush=True)

    if not args.c1_only:
        for name, server in turned(C64, n):
            run(name, server, args.concurrency, WIDE, args.measurement_interval)
        for name, server in turned(C1_WIDE, n):
            run(name, server, 1, WIDE, args.measurement_interval)
    for name, server in turned(C1_ECHO, n):
        run(name, server, 1, ECHO, args.c1_interval)
    return result


def ratios(r: dict[str, Any]) -> dict[str, float]:
    hop = r["pair_echo_c1"]["p50_us"] - r["container_echo_c1"]["p50_us"]
    floor = r["floor_c1"]["p50_us"]
    echo = {"hop_echo_us": hop, "floor_p50_us": floor, "hop_over_floor": hop / floor}
    if "pair_c64" not in r:  # --c1-only
        return echo
    pair = r["pair_c64"]["infer_per_s"]
    return echo | {
        "pair_over_batched": pair / r["batched_c64"]["infer_per_s"],
        "pair_over_batched_at_equal_compute": r["pair_c64"]["compute_share"] / r["batched_c64"]["compute_share"],
        "pair_over_unbatched": pair / r["unbatched_c64"]["infer_per_s"],
        "hop_us": r["pair_c1"]["p50_us"] - r["container_c1"]["p50_us"],
    }


def verdict(rounds: list[dict[str, Any]]) -> str:
    """Issue 17's targets, each judged by its median round."""
    # (label, ratio, bound, whether the ratio must stay at or under the bound)
    checks = [("c=1 hop <= floor", "hop_over_floor", 1.0, True)]
    if "pair_over_batched" in rounds[0]["ratios"]:
        checks += [("pair >= 0.9 x batched", "pair_over_batched", 0.9, False)]
        checks += [("pair >= 3 x unbatched", "pair_over_unbatched", 3.0, False)]
    shown = []
    for label, key, bound, at_most in checks:
        median = statistics.median(r["ratios"][key] for r in rounds)
        met = median <= bound if at_most else median >= bound
        shown.append(f"{label}: {'met' if met else 'MISSED'} ({median:.2f})")
    return "targets by the median round: " + "; ".join(shown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="rounds")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--measurement-interval", type=int, default=3000, help="wide_mlp's windows, ms")
    parser.add_argument("--c1-interval", type=int, default=1500, help="identity_fp32's c=1 windows, ms")
    parser.add_argument("--stability", type=int, default=25, help="perf_analyzer's --stability-percentage")
    parser.add_argument("--front-count", type=int, default=1, help="batches in flight from the front end")
    parser.add_argument("--front-max-batch", type=int, default=64, help="wide_mlp's max_batch_size at the front end")
    parser.add_argument("--front-delay-us", type=int, default=50000, help="wide_mlp's max_queue_delay at the front end")
    parser.add_argument("--front-protocol", choices=("grpc", "http"), default="grpc", help="front end to container")
    parser.add_argument("--container-cpus", default="1")
    parser.add_argument("--front-cpus", default="1")
    parser.add_argument("--pa-cpus", default="0")
    parser.add_argument("--c1-only", action="store_true", help="only identity_fp32 at c=1: the hop and the floor")
    parser.add_argument("--json")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="remote-hop-"))
    (base / "logs").mkdir()
    repos = repositories(base, not args.c1_only)
    pa = pinned_perf_analyzer(perf_analyzer_path(None), base, args.pa_cpus)
    rounds = []
    up = servers(repos, args)
    with contextlib.ExitStack() as stack:
        for name, spec in up.items():
            model = ECHO if name == "floor" or args.c1_only else WIDE
            stack.enter_context(running(spec, base / "logs" / f"{name}.log", "grpc", model=model))
        wait_ready([spec.address for name, spec in up.items() if name != "floor"], ECHO)
        for n in range(args.repeat):
            print(f"round {n + 1}", flush=True)
            found = one_round(n, up, args, base, pa)
            errors = {k: v["error"] for k, v in found.items() if isinstance(v, dict) and "error" in v}
            if errors:  # the workspace is kept for its logs
                sys.exit(f"remote_hop: {errors} (logs in {base / 'logs'})")
            rounds.append(found | {"ratios": ratios(found)})
            print(f"  {rounds[-1]['ratios']}", flush=True)
    # by the median round, and in how many rounds each target holds
    hops = sorted(rounds, key=lambda r: r["ratios"]["hop_over_floor"])
    echo = hops[len(rounds) // 2]["ratios"]
    under = sum(r["ratios"]["hop_over_floor"] <= 1 for r in rounds)
    by_round = ", ".join(f"{r['ratios']['hop_over_floor']:.2f}" for r in rounds)
    print(f"identity_fp32 c=1 hop / floor by round: {by_round}; median round {echo['hop_echo_us']:.0f} us "
          f"vs floor p50 {echo['floor_p50_us']:.0f} us (<= 1 in {under} of {len(rounds)} rounds)")  # fmt: skip
    if not args.c1_only:
        median = sorted(rounds, key=lambda r: r["ratios"]["pair_over_batched"])[len(rounds) // 2]["ratios"]
        wide_hop = statistics.median(r["ratios"]["hop_us"] for r in rounds)
        met = sum(r["ratios"]["pair_over_batched"] >= 0.9 for r in rounds)
        by_round = ", ".join(f"{r['ratios']['pair_over_batched']:.2f}" for r in rounds)
        print(f"pair / batched by round: {by_round} (>= 0.9 in {met} of {len(rounds)} rounds)")
        equal = [r["ratios"]["pair_over_batched_at_equal_compute"] for r in rounds]
        shown = ", ".join(f"{v:.3f}" for v in equal)
        print(f"pair / batched at equal compute speed (compute share) by round: {shown}; "
              f"median {statistics.median(equal):.3f}")  # fmt: skip
        print(f"median round: pair / batched {median['pair_over_batched']:.2f} (>= 0.9), pair / unbatched "
              f"{median['pair_over_unbatched']:.2f} (>= 3); wide_mlp c=1 pair - container {wide_hop:.0f} us "
              f"(median; the front end's batching window included)")  # fmt: skip
    print(verdict(rounds))
    shutil.rmtree(base)
    if args.json:
        report = {"args": vars(args), "machine": machine(), "loadavg_end": os.getloadavg(), "rounds": rounds}
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
