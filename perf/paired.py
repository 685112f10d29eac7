"""Old code against new with both servers up at once: perf_analyzer alternates between them,
window by window, in ABBA order (new-old, old-new, ...), and each pair of neighbouring windows
gives one ratio; the figure is the median of those ratios. Two servers measured minutes apart on
this shared 2-core VM differ by ±20 % in either direction (side_by_side.py's rotated rounds); two
windows a few seconds apart see the same machine, so the pairing takes most of that drift out.

    CLIPPERD_PERF_ANALYZER=.tools/pa/bin/perf_analyzer .venv/bin/python perf/paired.py \\
        --baseline 6999563 [--protocol grpc,http] [--concurrency 1,8] [--pairs 12] \\
        [--window-ms 1500] [--model identity_fp32] [--json OUT]
    ... perf/paired.py --baseline 6999563 --batching on,off,aimd [--target-us 250000] \\
        [--concurrency 64] [--window-ms 3000]

``--batching`` measures batching_gain.py's compute-bound ``wide_mlp`` over gRPC instead, served
with dynamic batching (``on``), without (``off``) and under an AIMD target (``aimd``).

Per window: perf_analyzer's throughput and p50, and the server's CPU time (user + system, from
/proc) per request it counted (its statistics extension): a measure of the work a request costs
that does not depend on how the machine shares its cores at that moment. Ratios are written so
that at least 1 means no worse: throughput new/old, p50 and CPU per request old/new."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from baseline import BOUND, worktree  # noqa: E402
from side_by_side import REPOSITORY, System, check_echo, clipperd, free_port, machine, measure, perf_analyzer_path  # noqa: E402

SYSTEMS = ("new", "old")


def identity_cases(args: argparse.Namespace, base: Path) -> list[tuple[str, str, Path]]:
    """(label, protocol, repository) for each protocol: a repository holding only ``--model``
    (as bundled), so both servers start in seconds."""
    repo = base / "repository"
    shutil.copytree(REPOSITORY / args.model, repo / args.model)
    return [(protocol, protocol, repo) for protocol in args.protocol.split(",")]


def batching_cases(args: argparse.Namespace, base: Path) -> list[tuple[str, str, Path]]:
    """(label, protocol, repository) for each ``--batching`` mode: wide_mlp as batching_gain.py
    builds it (torch is imported only here)."""
    from batching_gain import build_wide_mlp, repository_copy

    args.model = "wide_mlp"
    folder = base / "models" / "wide_mlp"
    build_wide_mlp(folder, 8192, 64, 50000)
    modes = args.batching.split(",")
    return [(f"wide_mlp {mode}", "grpc", repository_copy(base, folder, mode, args.target_us)) for mode in modes]


def with_http(spec: System, protocol: str) -> str:
    """The server's HTTP address (its statistics), opening the HTTP port for a gRPC run."""
    if protocol == "http":
        return spec.address
    port = free_port()
    spec.command[spec.command.index("--http-port") + 1] = str(port)
    return f"127.0.0.1:{port}"


@contextmanager
def serving(specs: dict[str, System], base: Path, model: str) -> Iterator[dict[str, int]]:
    """Both servers started, each in a session of its own, until they answer ``model``; their pids."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, spec in specs.items():
            log = (base / f"{name}.log").open("wb")
            env = {**os.environ, "PYTHONUNBUFFERED": "1", **spec.env}
            procs[name] = subprocess.Popen(
                spec.command, cwd=spec.cwd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        yield {name: proc.pid for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


def wait_ready(http: str, model: str, within_s: float = 60.0) -> None:
    deadline = time.monotonic() + within_s
    while True:
        try:
            urllib.request.urlopen(f"http://{http}/v2/models/{model}/ready", timeout=2)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{http}: {model} not ready within {within_s:.0f} s") from None
            time.sleep(0.3)


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def served(http: str, model: str) -> int:
    with urllib.request.urlopen(f"http://{http}/v2/models/{model}/stats", timeout=5) as answer:
        stats = json.load(answer)
    return int(stats["model_stats"][0]["inference_stats"]["success"]["count"])


def window(
    pa: Path, spec: System, http: str, pid: int, args: argparse.Namespace, protocol: str, c: int
) -> dict[str, Any]:
    before_cpu, before_n = cpu_s(pid), served(http, args.model)
    out = Path(args.workspace) / f"{spec.name}-{protocol}-{c}.csv"
    figures = measure(pa, spec.address, protocol, c, args.window_ms, out, args.model, stability=100)
    if "error" in figures:
        raise RuntimeError(f"{spec.name}: {figures['error']}")
    requests = served(http, args.model) - before_n
    return figures | {"cpu_us": (cpu_s(pid) - before_cpu) / max(requests, 1) * 1e6}


def ratios(pair: dict[str, dict[str, Any]]) -> dict[str, float]:
    new, old = pair["new"], pair["old"]
    return {
        "infer_per_s": new["infer_per_s"] / old["infer_per_s"],
        "p50": old["p50_us"] / new["p50_us"],
        "cpu_per_request": old["cpu_us"] / new["cpu_us"],
    }


def run_level(specs: dict[str, System], https: dict[str, str], pids: dict[str, int], args: argparse.Namespace,
              protocol: str, c: int) -> dict[str, Any]:  # fmt: skip
    pa = perf_analyzer_path(None)
    pairs = []
    for i in range(args.pairs):
        order = SYSTEMS if i % 2 == 0 else SYSTEMS[::-1]  # ABBA: neither always goes first
        pair = {name: window(pa, specs[name], https[name], pids[name], args, protocol, c) for name in order}
        pairs.append(pair | {"ratios": ratios(pair)})
        shown = ", ".join(f"{k} {v:.3f}" for k, v in pairs[-1]["ratios"].items())
        speeds = f"new {pair['new']['infer_per_s']:.0f} old {pair['old']['infer_per_s']:.0f} infer/s"
        print(f"  {args.model} {protocol} c={c} pair {i + 1}: {speeds}, ratios {shown}", file=sys.stderr, flush=True)
    medians = {k: statistics.median(p["ratios"][k] for p in pairs) for k in pairs[0]["ratios"]}
    return {"protocol": protocol, "concurrency": c, "pairs": pairs, "medians": medians}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="the old code's revision (a worktree is made of it)")
    parser.add_argument("--protocol", default="grpc,http")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--window-ms", type=int, default=1500)
    parser.add_argument("--model", default="identity_fp32")
    parser.add_argument("--batching", help="wide_mlp modes instead: on, off, aimd (comma-separated)")
    parser.add_argument("--target-us", type=int, default=250000, help="the aimd mode's batch latency target")
    parser.add_argument("--json")
    parser.add_argument("--logs", help="keep the servers' logs and the workspace here (default: removed)")
    args = parser.parse_args()
    base = Path(args.logs) if args.logs else Path(tempfile.mkdtemp(prefix="paired-"))
    args.workspace = str(base)
    levels = [int(c) for c in args.concurrency.split(",")]
    results = []
    try:
        cases = batching_cases(args, base) if args.batching else identity_cases(args, base)
        with worktree(args.baseline) as old:
            for label, protocol, repo in cases:
                specs = {"new": clipperd("new", protocol, repo), "old": clipperd(f"old@{old.rev}", protocol, repo, old)}
                https = {name: with_http(spec, protocol) for name, spec in specs.items()}
                with serving(specs, base, args.model) as pids:
                    for name, spec in specs.items():
                        wait_ready(https[name], args.model)
                        if args.model == "identity_fp32":
                            check_echo(spec.address, protocol)
                    results += [run_level(specs, https, pids, args, protocol, c) | {"where": label} for c in levels]
            report(results, old.rev, old.commit)
        if args.json:
            found = {"args": vars(args), "machine": machine(), "levels": results}
            Path(args.json).write_text(json.dumps(found, indent=1) + "\n")
    finally:
        if not args.logs:
            shutil.rmtree(base, ignore_errors=True)


def report(results: list[dict[str, Any]], rev: str, commit: str) -> None:
    print(f"\nnew (this checkout) against old ({rev}, {commit[:10]}), medians of paired ratios (>= 1: no worse):\n")
    print("| where | pairs | infer/s new/old | p50 old/new | CPU per request old/new |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        m = r["medians"]
        print(f"| {r['where']} c={r['concurrency']} | {len(r['pairs'])} | {m['infer_per_s']:.3f} | {m['p50']:.3f} | "
              f"{m['cpu_per_request']:.3f} |")  # fmt: skip
    below = [f"{r['where']} c={r['concurrency']} {k} {v:.3f}" for r in results for k, v in r["medians"].items()
             if k != "cpu_per_request" and v < BOUND]  # fmt: skip
    verdict = "FAIL: " + ", ".join(below) if below else "yes"
    print(f"\nno regression (every throughput and p50 median >= {BOUND}): {verdict}")


if __name__ == "__main__":
    main()
