"""Dynamic batching side by side: clipperd, NVIDIA Triton (its own server, tritonserver; PyTriton on
request) and Seldon MLServer serving the same numpy model under the same load.

    .venv/bin/python perf/batching_peers.py [--concurrency 64] [--measurement-interval 3000]
        [--repeat 3] [--systems clipperd,tritonserver,mlserver] [--max-queue-delay-us US|SYSTEM=US,...]
        [--hidden 2048,2048] [--blas-threads 1] [--clipperd-execution-mode process|thread|event_loop]
        [--clipperd-args='--gil-switch-interval-us 100'] [--json OUT] [--logs DIR]

The model is perf/peers/numpy_mlp.py, one file that every system imports: FP32 INPUT0 [256] per
row -> dense 2048 -> ReLU -> dense 2048 -> ReLU -> dense 16 (``--hidden`` changes the hidden
widths), weights generated from a fixed seed at start, numpy matmul on the whole batch. Each
server batches up to 64 rows and waits up to its ``--max-queue-delay-us`` for a batch to fill:
2000 µs for clipperd, tritonserver and PyTriton, 20000 µs for MLServer, whose adaptive batcher
gathers next to nothing in 2 ms at this load (each was measured at 0.1 to 50 ms; see
DEFAULT_DELAYS_US):

  clipperd  this project: a Python-backend model (model.py importing numpy_mlp) written into a
            temporary repository, config.pbtxt with max_batch_size 64, dynamic_batching
            { max_queue_delay_microseconds }, one KIND_CPU instance, execution_mode ``process``:
            the model in a worker process with its GIL to itself, as the peers run theirs
            (Triton's Python backend in its stub process, PyTriton's in the Python process
            beside tritonserver, MLServer's in its inference worker process);
            ``--clipperd-execution-mode thread`` runs it on a thread of the server (numpy
            releases the GIL while it multiplies, its other steps take turns with the event
            loop), ``event_loop`` is the Python backend's default; served as
            perf/batching_gain.py serves (tests/serverproc.py)
  tritonserver  NVIDIA Triton 2.51's own binary (perf/peers/tritonserver/serve_tritonserver.py,
            the one PyTriton 0.7 bundles) serving numpy_mlp as a Triton Python-backend model
            (perf/peers/tritonserver/numpy_mlp_model.py) from a temporary repository with the
            same config.pbtxt as clipperd's (max_batch_size 64, dynamic_batching
            { max_queue_delay_microseconds }, one KIND_CPU instance): the Triton that the
            project's Triton targets are held to
  pytriton  PyTriton 0.7 (Triton 2.51 with PyTriton's Python process in the request path,
            perf/peers/pytriton_numpy_mlp.py): Triton's dynamic batcher in front of a @batch
            function; labelled PyTriton, never Triton; not run unless named in ``--systems``
  mlserver  MLServer 1.7 (perf/peers/mlserver_numpy_mlp/): its adaptive batching
            (max_batch_size 64, max_batch_time = the delay) in front of a custom MLModel

Every server gets the same BLAS threads (``--blas-threads``, default 1, through OMP_NUM_THREADS,
OPENBLAS_NUM_THREADS and MKL_NUM_THREADS): the machine this was written on has 2 cores, and
perf_analyzer and the server's own request handling need the other one. Before anything is
served, the model is timed in-process under each server's interpreter (the peers' virtual
environments carry other numpy/OpenBLAS builds: PyTriton needs numpy < 2), rows per second at
batch 1 and 64: the compute limit each server works against.

Each round starts each system in turn (the order rotating by one every round), waits until the
model is ready, checks that it computes numpy_mlp (one fixed request of 4 rows through
tritonclient over gRPC, outputs equal to numpy in-process within 1e-4), runs perf_analyzer over
gRPC at ``--concurrency`` (one row per request; perf/side_by_side.py's measure: windows of
``--measurement-interval`` ms until three agree within 25 %), reads how the requests were
batched (clipperd, tritonserver and PyTriton: ModelStatistics' executions per batch size;
MLServer: the rows its model got per call, a custom metric) and the machine's busy CPU time
meanwhile (both cores, /proc/stat), and stops it. The table gives per system the median over the rounds of infer/s,
p50, p99, the mean batch size, the CPU the whole machine spent per row (server and perf_analyzer:
on two cores, what a row costs decides the throughput) and the cores busy, then clipperd's
infer/s and p99 over each peer's, and the project's target: clipperd >= 2x each peer's infer/s
at a p99 no higher than theirs."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

ROOT = Path(__file__).resolve().parent.parent
PERF = ROOT / "perf"
PEERS = PERF / "peers"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(PEERS))

import side_by_side as sbs  # noqa: E402
from numpy_mlp import (  # noqa: E402
    DELAY_ENV,
    HIDDEN_ENV,
    IN_DIM,
    INPUT,
    MAX_BATCH,
    MODEL_NAME,
    OUT_DIM,
    OUTPUT,
    NumpyMLP,
    sample_input,
)

from tests.serverproc import running as clipperd_running  # noqa: E402

SYSTEMS = ("clipperd", "tritonserver", "pytriton", "mlserver")
DEFAULT_SYSTEMS = ("clipperd", "tritonserver", "mlserver")  # Triton is its own server, not PyTriton
PEER_NAMES = ("tritonserver", "pytriton", "mlserver")
LABELS = {"tritonserver": "Triton 2.51, its own server", "pytriton": "PyTriton 0.7", "mlserver": "MLServer 1.7"}
TARGET_THROUGHPUT = 2.0  # clipperd / peer infer/s, at a p99 no higher than the peer's
TOLERANCE = 1e-4
# the longest a batch waits to fill, by system: MLServer's adaptive batcher gathers little within
# a few ms at this load (2 ms: 3 rows a batch, 775 infer/s; 10 ms: 15, 1,161; 20 ms: 30, 1,246;
# 50 ms: 63, 1,188), Triton's batcher (under PyTriton) and clipperd's do as well at 0.1 to 10 ms
DEFAULT_DELAYS_US = {"clipperd": 2000, "tritonserver": 2000, "pytriton": 2000, "mlserver": 20000}
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
MLSERVER_METRICS = "http://127.0.0.1:28182/metrics"

CONFIG = """name: "numpy_mlp"
backend: "python"
max_batch_size: {max_batch}
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ {in_dim} ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ {out_dim} ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}
"""

MODEL_PY = '''"""numpy_mlp for clipperd's Python backend: perf/peers/numpy_mlp.py on the whole batch."""

import importlib.util

_spec = importlib.util.spec_from_file_location("numpy_mlp", {path!r})
numpy_mlp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(numpy_mlp)


class Model:
    def initialize(self, context):
        self.mlp = numpy_mlp.NumpyMLP()

    def execute(self, inputs):
        return {{numpy_mlp.OUTPUT: self.mlp(inputs[numpy_mlp.INPUT])}}
'''


@dataclass
class Served:
    """A running system: where to send requests, and how to read its batch sizes."""

    name: str
    address: str
    batches: str  # "statistics" (ModelStatistics over gRPC) or "mlserver" (its model's metric)
    http_address: str = ""  # where perf_analyzer sends requests under --protocol http


def write_repository(base: Path, delay_us: int, parameter: tuple[str, str], model_py: str) -> Path:
    """numpy_mlp's config.pbtxt (with one string parameter) and model.py, in Triton's layout."""
    repo = base / "repository"
    version = repo / MODEL_NAME / "1"
    version.mkdir(parents=True, exist_ok=True)
    key, value = parameter
    config = CONFIG.format(max_batch=MAX_BATCH, in_dim=IN_DIM, out_dim=OUT_DIM, delay_us=delay_us, key=key, value=value)
    (repo / MODEL_NAME / "config.pbtxt").write_text(config)
    (version / "model.py").write_text(model_py)
    return repo


def clipperd_repository(base: Path, delay_us: int, mode: str) -> Path:
    model_py = MODEL_PY.format(path=str(PEERS / "numpy_mlp.py"))
    return write_repository(base, delay_us, ("execution_mode", mode), model_py)


def tritonserver_repository(base: Path, delay_us: int) -> Path:
    """The same config as clipperd's, the path of numpy_mlp.py in it for Triton's model.py."""
    model_py = (PEERS / "tritonserver" / "numpy_mlp_model.py").read_text()
    return write_repository(base, delay_us, ("numpy_mlp_path", str(PEERS / "numpy_mlp.py")), model_py)


PYTRITON_HTTP = "127.0.0.1:18100"


def tritonserver(repo: Path) -> tuple[sbs.System, str]:
    """tritonserver serving ``repo`` on free ports (side_by_side's launcher), and its HTTP address."""
    python, missing = sbs.peer_python(environment("tritonserver"))
    grpc_port, http_port = sbs.free_port(), sbs.free_port()
    command = [python, str(PEERS / "tritonserver" / "serve_tritonserver.py"), "--repository", str(repo)]
    command += ["--grpc-port", str(grpc_port), "--http-port", str(http_port)]
    return sbs.System("tritonserver", command, f"127.0.0.1:{grpc_port}", missing=missing), f"127.0.0.1:{http_port}"


def environment(name: str) -> str:
    """The peer's virtual environment: tritonserver is the binary inside the PyTriton wheel, and its
    Python-backend stub embeds that environment's interpreter."""
    return "pytriton" if name == "tritonserver" else name


def peer(name: str, delay_us: int = DEFAULT_DELAYS_US["pytriton"]) -> sbs.System:
    python, missing = sbs.peer_python(name)
    env = {DELAY_ENV: str(delay_us)}
    if name == "pytriton":
        command = [python, str(PEERS / "pytriton_numpy_mlp.py")]
        return sbs.System(name, command, "127.0.0.1:18101", env=env, missing=missing)
    script = PEERS / "mlserver_numpy_mlp" / "serve_numpy_mlp.py"
    return sbs.System(name, [python, str(script)], "127.0.0.1:28181", env=env, missing=missing)


def parse_delays(text: str) -> dict[str, int]:
    """``2000`` (every system) or ``mlserver=10000,...`` (those, the others keep their default)."""
    delays = dict(DEFAULT_DELAYS_US)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.rpartition("=")
        if not name:
            delays = dict.fromkeys(delays, int(value))
        elif name in delays:
            delays[name] = int(value)
        else:
            raise ValueError(f"unknown system {name!r} in --max-queue-delay-us")
    return delays


def interpreter(name: str) -> str:
    return sbs.project_python() if name == "clipperd" else sbs.peer_python(environment(name))[0]


@contextlib.contextmanager
def serving(name: str, args: argparse.Namespace, workspace: Path, round_no: int) -> Iterator[Served]:
    if name == "clipperd":
        repo = clipperd_repository(workspace / f"clipperd-round{round_no}", args.delays[name], args.execution_mode)
        with clipperd_running(repo, *args.clipperd_args.split(), log_dir=workspace) as server:
            yield Served(name, server.url, "statistics", server.http_url)
        return
    if name == "tritonserver":
        spec, http = tritonserver(tritonserver_repository(workspace / f"{name}-round{round_no}", args.delays[name]))
        with sbs.running(spec, workspace / f"{name}-round{round_no}.log", "grpc", MODEL_NAME):
            yield Served(name, spec.address, "statistics", http)
        return
    spec = peer(name, args.delays[name])
    with sbs.running(spec, workspace / f"{name}-round{round_no}.log", "grpc", MODEL_NAME):
        if name == "pytriton":
            yield Served(name, spec.address, "statistics", PYTRITON_HTTP)
        else:
            yield Served(name, spec.address, "mlserver")


def check_outputs(address: str, expected: np.ndarray, x: np.ndarray) -> float:
    """The largest difference between the server's answer and ``expected``; raises past the tolerance."""
    with grpcclient.InferenceServerClient(address) as client:
        tensor = grpcclient.InferInput(INPUT, list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        got = client.infer(MODEL_NAME, [tensor]).as_numpy(OUTPUT)
    if got is None or got.shape != expected.shape:
        raise RuntimeError(f"answer of shape {None if got is None else got.shape}, expected {expected.shape}")
    if not np.allclose(got, expected, rtol=TOLERANCE, atol=TOLERANCE):
        raise RuntimeError(f"outputs differ from numpy in-process by up to {np.abs(got - expected).max():.3g}")
    return float(np.abs(got - expected).max())


def batch_counts(served: Served) -> dict[str, Any]:
    """Cumulative: rows and executions, and executions by batch size where the server says."""
    if served.batches == "mlserver":
        with urllib.request.urlopen(MLSERVER_METRICS, timeout=5.0) as answer:
            text = answer.read().decode()
        total = {}
        for part in ("sum", "count"):
            found = re.search(rf"^numpy_mlp_batch_rows_{part}{{[^}}]*}} (\S+)$", text, re.MULTILINE)
            total[part] = float(found.group(1)) if found else 0.0
        return {"rows": int(total["sum"]), "executions": int(total["count"]), "by_size": {}}
    with grpcclient.InferenceServerClient(served.address) as client:
        stats = client.get_inference_statistics(MODEL_NAME, as_json=True)["model_stats"][0]
    by_size = {int(b["batch_size"]): int(b["compute_infer"].get("count", 0)) for b in stats.get("batch_stats", [])}
    return {
        "rows": int(stats.get("inference_count", 0)),
        "executions": int(stats.get("execution_count", 0)),
        "by_size": by_size,
    }


def busy_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine (every core) since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process and all it started (servers, perf_analyzer): the live ones
    from /proc, the ended ones from the children's resource usage."""
    ticks = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / ticks
    ours, total = {os.getpid()}, 0.0
    for pid in sorted(parents):  # a child has a higher pid than its parent, short of wrap-around
        if pid in ours or parents[pid] in ours:
            ours.add(pid)
            total += times[pid]
    ended = resource.getrusage(resource.RUSAGE_CHILDREN)
    return total + ended.ru_utime + ended.ru_stime


def batching_during(
    before: dict[str, Any], after: dict[str, Any], busy: float, own: float, wall: float
) -> dict[str, Any]:
    """How the rows served while perf_analyzer ran were batched, the machine's CPU per row
    (server and perf_analyzer together: both cores' busy time over the rows), and the cores that
    processes outside this benchmark kept busy meanwhile (above ~0.1 the figures are disturbed)."""
    rows, executions = after["rows"] - before["rows"], after["executions"] - before["executions"]
    sizes = {s: n - before["by_size"].get(s, 0) for s, n in after["by_size"].items()}
    sizes = {s: n for s, n in sorted(sizes.items()) if n > 0}
    return {
        "mean_batch": rows / executions if executions else None,
        "executions": executions,
        "executions_by_size": sizes,
        "rows_in_batches_of_32_or_more": sum(s * n for s, n in sizes.items() if s >= 32) / rows if sizes else None,
        "machine_cpu_us_per_row": busy * 1e6 / rows if rows else None,
        "machine_cores_busy": busy / wall,
        "other_cores_busy": max(busy - own, 0.0) / wall,
    }


def measure_system(
    name: str, args: argparse.Namespace, workspace: Path, round_no: int, reference: tuple[np.ndarray, np.ndarray]
) -> dict[str, Any]:
    started = {"started": time.strftime("%H:%M:%S"), "loadavg_1m": round(os.getloadavg()[0], 2)}
    with serving(name, args, workspace, round_no) as served:
        difference = check_outputs(served.address, reference[1], reference[0])
        before, busy, own, wall = batch_counts(served), busy_cpu_seconds(), own_cpu_seconds(), time.monotonic()
        out = workspace / f"{name}-{round_no}.csv"
        pa = sbs.perf_analyzer_path(args.perf_analyzer)
        address = served.address if args.protocol == "grpc" else served.http_address
        result = sbs.measure(pa, address, args.protocol, args.concurrency, args.measurement_interval, out, MODEL_NAME)
        busy, own, wall = busy_cpu_seconds() - busy, own_cpu_seconds() - own, time.monotonic() - wall
        batching = batching_during(before, batch_counts(served), busy, own, wall)
    return {"max_abs_difference": difference, **started, **result, **batching}


def in_process_rates(names: list[str], seconds: float) -> dict[str, dict[str, Any]]:
    """numpy_mlp timed back to back under each system's interpreter, with this run's environment."""
    rates: dict[str, dict[str, Any]] = {}
    for name in names:
        command = [interpreter(name), str(PEERS / "numpy_mlp.py"), "--sizes", "1,8,64", "--seconds", str(seconds)]
        run = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if run.returncode != 0:
            rates[name] = {"error": (run.stderr.strip().splitlines() or ["failed"])[-1]}
            continue
        found = json.loads(run.stdout)
        rates[name] = {"numpy": found["numpy"], **{f"b{s}": r for s, r in found["rows_per_s"].items()}}
    return rates


def summarize(rows: list[dict[str, Any]], names: list[str], concurrency: int) -> list[dict[str, Any]]:
    summary = sbs.summarize(rows, names, [concurrency])  # medians, and clipperd over each row
    for entry in summary:
        for key in ("mean_batch", "machine_cpu_us_per_row", "machine_cores_busy", "other_cores_busy"):
            values = [r[key] for r in rows if r["system"] == entry["system"] and r.get(key)]
            entry[key] = statistics.median(values) if values else None
    return summary


def check_targets(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    checks = []
    for entry in summary:
        if entry["system"] not in PEER_NAMES or "ours_over_this_infer_per_s" not in entry:
            continue
        throughput, p99 = entry["ours_over_this_infer_per_s"], entry["ours_over_this_p99"]
        met = throughput >= TARGET_THROUGHPUT and p99 <= 1.0
        checks.append({"peer": entry["system"], "infer_per_s_ratio": throughput, "p99_ratio": p99, "met": met})
    return checks


def print_report(summary: list[dict[str, Any]], rates: dict[str, dict[str, Any]], checks: list[dict[str, Any]]) -> None:
    print(f"{'system':12} {'runs':>4} {'infer/s':>8} {'(min-max)':>13} {'p50 ms':>7} {'p99 ms':>7}", end="")
    print(f" {'batch':>6}", end="")
    print(f" {'CPU us/row':>10} {'cores':>5} {'other':>5}  {'in-process rows/s b1 / b64 (numpy)':>36}")
    for e in summary:
        rate = rates.get(e["system"], {})
        limit = f"{rate['b1']:.0f} / {rate['b64']:.0f} ({rate['numpy']})" if "b64" in rate else rate.get("error", "")
        if "error" in e:
            print(f"{e['system']:12} {e['runs']:>4}  error: {e['error']}")
            continue
        spread = f"({e['infer_per_s_min']:.0f}-{e['infer_per_s_max']:.0f})"
        batch = f"{e['mean_batch']:6.1f}" if e["mean_batch"] else f"{'-':>6}"
        cpu = f"{e['machine_cpu_us_per_row']:10.0f}" if e["machine_cpu_us_per_row"] else f"{'-':>10}"
        cores = f"{e['machine_cores_busy']:5.2f}" if e["machine_cores_busy"] else f"{'-':>5}"
        cores += f" {e['other_cores_busy'] or 0.0:5.2f}"
        print(
            f"{e['system']:12} {e['runs']:>4} {e['infer_per_s']:8.0f} {spread:>13} {e['p50_us'] / 1000:7.2f} "
            f"{e['p99_us'] / 1000:7.2f} {batch} {cpu} {cores}  {limit:>36}"
        )
    for c in checks:
        verdict = "met" if c["met"] else "MISSED"
        print(
            f"clipperd/{c['peer']} ({LABELS[c['peer']]}): "
            f"infer/s {c['infer_per_s_ratio']:.2f}x (target >= {TARGET_THROUGHPUT}), "
            f"p99 {c['p99_ratio']:.2f}x (target <= 1) -> {verdict}"
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--protocol", default="grpc", choices=["grpc", "http"], help="what perf_analyzer speaks")
    parser.add_argument("--repeat", type=int, default=1, help="rounds over all systems; the table shows medians")
    parser.add_argument("--measurement-interval", type=int, default=3000, help="perf_analyzer window, ms")
    parser.add_argument(
        "--systems",
        default=",".join(DEFAULT_SYSTEMS),
        help="comma-separated, from: " + ", ".join(SYSTEMS) + " (default: " + ",".join(DEFAULT_SYSTEMS) + ")",
    )
    parser.add_argument(
        "--max-queue-delay-us",
        default="",
        help="the batching delay: US for every server, or SYSTEM=US,... (default "
        + ",".join(f"{k}={v}" for k, v in DEFAULT_DELAYS_US.items())
        + ")",
    )
    parser.add_argument("--hidden", default="2048,2048", help="hidden widths of the MLP")
    parser.add_argument("--blas-threads", type=int, default=1, help="numpy's BLAS threads in every server")
    parser.add_argument("--clipperd-execution-mode", dest="execution_mode", default="process")
    parser.add_argument(
        "--clipperd-args", default="", help="more clipperd serve flags: --clipperd-args='--gil-switch-interval-us 100'"
    )
    parser.add_argument("--limit-seconds", type=float, default=0.5, help="in-process timing per batch size")
    parser.add_argument("--perf-analyzer", help="the binary (default $CLIPPERD_PERF_ANALYZER or .tools/pa)")
    parser.add_argument("--json", help="write the machine, every run, the medians and the targets here")
    parser.add_argument("--logs", help="keep the servers' logs and perf_analyzer's CSVs in this folder")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.execution_mode not in ("thread", "event_loop", "process"):
        parser.error("--clipperd-execution-mode is thread, event_loop or process")
    try:
        args.delays = parse_delays(args.max_queue_delay_us)
    except ValueError as error:
        parser.error(str(error))
    return args


def code_version() -> dict[str, Any]:
    """The commit under test, and the server's files that differ from it (others may be editing)."""

    def git(*command: str) -> str:
        run = subprocess.run(["git", *command], cwd=ROOT, capture_output=True, text=True, check=False)
        return run.stdout.strip()

    changed = git("status", "--porcelain", "--", "server", "schedulers", "backends").splitlines()
    return {"commit": git("rev-parse", "--short", "HEAD"), "server_files_changed": [c[3:] for c in changed]}


def run_rounds(
    runnable: list[str], args: argparse.Namespace, workspace: Path, reference: tuple[np.ndarray, np.ndarray]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for r in range(args.repeat):
        order = runnable[r % len(runnable) :] + runnable[: r % len(runnable)] if runnable else []
        for name in order:
            row: dict[str, Any] = {"system": name, "concurrency": args.concurrency, "round": r + 1}
            try:
                row |= measure_system(name, args, workspace, r + 1, reference)
            except Exception as error:  # a system that fails is reported; the others still run
                row["error"] = f"{type(error).__name__}: {error}"
            rows.append(row)
            more = f"  mean batch {row['mean_batch']:.1f}" if row.get("mean_batch") else ""
            if row.get("machine_cpu_us_per_row"):
                more += f"  CPU {row['machine_cpu_us_per_row']:.0f} us/row"
                more += f"  other processes {row['other_cores_busy']:.2f} cores"
            print(f"  round {r + 1} {name:12} {sbs.describe(row)}{more}", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    args = parse_args()
    for variable in THREAD_VARIABLES:  # inherited by every server and by the in-process timing
        os.environ[variable] = str(args.blas_threads)
    os.environ[HIDDEN_ENV] = args.hidden
    names = sbs.named_systems(args, SYSTEMS)
    notes = {n: m for n in names if n != "clipperd" and (m := sbs.peer_python(environment(n))[1]) is not None}
    if args.protocol == "http" and "mlserver" in names:
        notes["mlserver"] = "perf_analyzer cannot read its HTTP answers (output parameters without binary_data_size)"
    runnable = [n for n in names if n not in notes]
    workspace = sbs.round_workspace(args, "batching-peers-")
    before = sbs.machine()
    model = NumpyMLP()
    x = sample_input(4)
    reference = (x, model(x))  # what every server must answer to x
    print(
        f"batching peers: {', '.join(runnable)}; numpy_mlp {model.dims} ({model.parameters:,} parameters); "
        f"concurrency {args.concurrency}; max queue delay (us) {args.delays}; BLAS threads "
        f"{args.blas_threads}; clipperd execution_mode {args.execution_mode}; {args.repeat} round(s); "
        f"logs in {workspace}",
        file=sys.stderr,
        flush=True,
    )
    rates = in_process_rates(runnable, args.limit_seconds)
    for name, rate in rates.items():
        print(f"  in-process under {name}'s interpreter: {rate}", file=sys.stderr, flush=True)
    rows = run_rounds(runnable, args, workspace, reference)
    summary = summarize(rows, runnable, args.concurrency)
    checks = check_targets(summary)
    print_report(summary, rates, checks)
    for name, note in notes.items():
        print(f"{name}: skipped, {note}")
    if args.json:
        report = {
            "command": sys.argv,
            "model": {"name": MODEL_NAME, "dims": model.dims, "parameters": model.parameters},
            "settings": {
                "concurrency": args.concurrency,
                "max_batch_size": MAX_BATCH,
                "max_queue_delay_us": args.delays,
                "clipperd_args": args.clipperd_args,
                "blas_threads": args.blas_threads,
                "clipperd_execution_mode": args.execution_mode,
                "measurement_interval_ms": args.measurement_interval,
                "repeat": args.repeat,
            },
            "code": code_version(),
            "machine_before": before,
            "machine_after": sbs.machine(),
            "in_process_rows_per_s": rates,
            "skipped": notes,
            "runs": rows,
            "summary": summary,
            "targets": checks,
        }
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
