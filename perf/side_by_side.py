"""clipperd side by side with the floor and with real peers, under NVIDIA perf_analyzer.

    .venv/bin/python perf/side_by_side.py [--protocol grpc|http|grpc,http] [--concurrency 1,8] [--repeat 3]
        [--measurement-interval 3000] [--systems clipperd,clipperd-grpcio,floor,tritonserver,pytriton,mlserver]
        [--baseline REV] [--server-cpus 1 --pa-cpus 0] [--json OUT.json]

Every system serves the same model, identity_fp32 (FP32 INPUT0 -> OUTPUT0, dims [-1, 16],
max_batch_size 64), over KServe v2 gRPC (or HTTP/REST with --protocol http, binary tensors as
perf_analyzer sends them by default) on 127.0.0.1, and gets the same load: perf_analyzer
at each concurrency, one after another, in windows of --measurement-interval ms until three in
a row agree within 25 % (at most 20 windows; the machine this was written on is a noisy 2-core
VM that perf_analyzer shares with the server). The systems:

  clipperd         this project: `python -m server.cli serve --model-repository model_repository`
  clipperd-grpcio  the same with `--grpc-frontend grpcio` (the grpc.aio front end); over HTTP it
                   is the same server as clipperd
  floor            perf/floor_grpc.py: grpc.aio + uvloop echoing the input, nothing else; over
                   HTTP perf/floor_http.py: aiohttp echoing the input, nothing else
  tritonserver     NVIDIA Triton 2.51's own binary (as PyTriton 0.7 bundles it) serving
                   identity_fp32 as a Triton Python-backend model, as Triton users serve Python
                   models (perf/peers/tritonserver/serve_tritonserver.py)
  pytriton         NVIDIA Triton 2.51 through PyTriton 0.7 (perf/peers/pytriton_identity.py)
  mlserver         Seldon MLServer 1.7 (perf/peers/mlserver_identity/launch.py); gRPC only: its
                   HTTP answers carry output parameters perf_analyzer cannot read
  clipperd@REV     clipperd (or clipperd-grpcio@REV) as commit REV has it, run from a git worktree
                   of REV made for the run and removed after it (perf/baseline.py); --baseline REV
                   adds clipperd@REV, and the run ends with a markdown table of the figures of
                   clipperd against clipperd@REV (new/old) and a PASS/FAIL line against 0.95

The peers live in virtual environments that perf/install_peers.sh makes under
$CLIPPERD_BENCH_HOME (default ~/.cache/clipperd-bench); a peer that is not installed is skipped
with a note. Each system is started in a session of its own, waited for (ModelReady over gRPC),
asked once for identity_fp32 (its answer must equal the input: perf_analyzer does not look at
answers, and a peer set up wrongly answers fast with empty tensors), measured at every
concurrency, and stopped (SIGTERM to its process group) before the next one starts, so no two
servers ever share the cores.

With --repeat N the whole sequence runs N rounds, the order of the systems rotating by one each
round, and the table shows per (system, concurrency) the median of the rounds' infer/s, p50 and
p99 (with the lowest and highest infer/s): single runs here vary by 20 % or more. The ratio
columns compare clipperd with each row: infer/s ours/this (above 1: we are faster) and p50
ours/this (below 1: we answer sooner). The project's targets follow the table. With
--protocol grpc,http each round measures both protocols, one after the other.

With --server-cpus and --pa-cpus (taskset lists) every server runs on its cores and
perf_analyzer on its own. On the 2-core VM neither placement settled HTTP c=8, whose runs land
near 10,000 or near 5,000 infer/s for either commit alike (docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import platform
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere; the messages live at the root

from baseline import Checkout, Figure, checkouts, report, rotate, split_name  # noqa: E402
from ports import free_port as free_port  # noqa: E402  (re-exported: the other scripts import it from here)

from server.proto import grpc_service_pb2 as pb  # noqa: E402

MODEL = "identity_fp32"
OURS = "clipperd"
SYSTEMS = ("clipperd", "clipperd-grpcio", "floor", "tritonserver", "pytriton", "mlserver")
CLIPPERDS = ("clipperd", "clipperd-grpcio")  # the systems that can also run from another checkout (NAME@REV)
REPOSITORY = ROOT / "model_repository"
BENCH_HOME = Path(os.environ.get("CLIPPERD_BENCH_HOME", Path.home() / ".cache" / "clipperd-bench"))
PERF = Path(__file__).resolve().parent
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0

# (concurrency, the other system, metric, "min" or "max", bound): ours/other must stay on the right side
TARGETS = {
    "grpc": (
        (8, "floor", "infer_per_s", "min", 0.75),
        (8, "pytriton", "infer_per_s", "min", 3.0),
        (1, "floor", "p50_us", "max", 1.3),
        # issue 14: the native gRPC front end keeps its lead over grpc.aio and over Triton itself
        (8, "clipperd-grpcio", "infer_per_s", "min", 1.5),
        (8, "tritonserver", "infer_per_s", "min", 1.4),
        (1, "tritonserver", "p50_us", "max", 0.8),
    ),
    "http": (
        (8, "floor", "infer_per_s", "min", 0.75),
        (8, "pytriton", "infer_per_s", "min", 4.0),
    ),
}


@dataclass
class System:
    name: str
    command: list[str]
    address: str
    env: dict[str, str] = field(default_factory=dict)
    missing: str | None = None  # why it cannot run here
    cwd: Path = ROOT


def port_in_use(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as s:
        return s.connect_ex((host, int(port))) == 0


def project_python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def peer_python(name: str) -> tuple[str, str | None]:
    python = BENCH_HOME / name / "bin" / "python"
    if python.exists():
        return str(python), None
    return str(python), f"not installed ({python} is missing): run perf/install_peers.sh"


def clipperd(
    name: str,
    protocol: str,
    repository: Path = REPOSITORY,
    checkout: Checkout | None = None,
    extra: Sequence[str] = (),
) -> System:
    """clipperd serving ``repository`` on a fresh port of ``protocol``, as this checkout has it or
    as ``checkout`` (another commit's worktree) has it: the same interpreter either way."""
    port = free_port()
    ports = ["--grpc-port", "0", "--http-port", str(port)]
    if protocol == "grpc":
        ports = ["--grpc-port", str(port), "--http-port", "0"]
    command = [project_python(), "-m", "server.cli", "serve", "--model-repository", str(repository)]
    command += ["--host", "127.0.0.1", *ports, "--metrics-port", "0", *extra]
    if checkout is None:
        return System(name, command, f"127.0.0.1:{port}")
    return System(name, command, f"127.0.0.1:{port}", env=checkout.env(), cwd=checkout.path)


def checkout_of(name: str, found: Mapping[str, Checkout] | None) -> Checkout | None:
    rev = split_name(name)[1]
    if rev is None:
        return None
    if found is None or rev not in found:
        raise ValueError(f"{name!r}: no worktree of {rev!r} was made for this run")
    return found[rev]


def system(
    name: str, protocol: str = "grpc", found: Mapping[str, Checkout] | None = None, repository: Path = REPOSITORY
) -> System:
    """The system's start command, with fresh ports where it can take any; ``address`` is the
    one of ``protocol``. ``NAME@REV`` runs from ``found[REV]``, the worktree of REV; clipperd
    serves ``repository`` whichever checkout it runs from."""
    http = protocol == "http"
    base, rev = split_name(name)
    if base in CLIPPERDS:
        grpcio = ["--grpc-frontend", "grpcio"] if base == "clipperd-grpcio" else []
        return clipperd(name, protocol, repository, checkout_of(name, found), grpcio)
    if name == "tritonserver":
        python, missing = peer_python("pytriton")
        grpc_port, http_port = free_port(), free_port()
        command = [python, str(PERF / "peers" / "tritonserver" / "serve_tritonserver.py")]
        command += ["--grpc-port", str(grpc_port), "--http-port", str(http_port)]
        return System(name, command, f"127.0.0.1:{http_port if http else grpc_port}", missing=missing)
    if name == "floor":
        port = free_port()
        script = PERF / ("floor_http.py" if http else "floor_grpc.py")
        return System(name, [project_python(), str(script), "--port", str(port)], f"127.0.0.1:{port}")
    if name == "pytriton":
        python, missing = peer_python("pytriton")
        # PyTriton makes (and removes) a workspace of its own in the temporary folder
        address = "127.0.0.1:18000" if http else "127.0.0.1:18001"
        return System(name, [python, str(PERF / "peers" / "pytriton_identity.py")], address, missing=missing)
    if name == "mlserver":
        python, missing = peer_python("mlserver")
        if http:
            missing = "its HTTP answers cannot be read by perf_analyzer (output parameters without binary_data_size)"
        command = [python, str(PERF / "peers" / "mlserver_identity" / "launch.py")]
        return System(name, command, "127.0.0.1:28081", missing=missing)
    if rev is not None:
        raise ValueError(f"{name!r}: only {' and '.join(CLIPPERDS)} run from another checkout (NAME@REV)")
    raise ValueError(f"unknown system {name!r}; choose from {', '.join(SYSTEMS)}")


def model_ready(address: str, protocol: str, model: str = MODEL) -> bool:
    if protocol == "http":
        try:
            with urllib.request.urlopen(f"http://{address}/v2/models/{model}/ready", timeout=2.0) as answer:
                return int(answer.status) == 200
        except OSError:  # refused, not ready yet (HTTPError), timed out
            return False
    with grpc.insecure_channel(address) as channel:
        rpc = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelReady",
            request_serializer=pb.ModelReadyRequest.SerializeToString,
            response_deserializer=pb.ModelReadyResponse.FromString,
        )
        try:
            return bool(rpc(pb.ModelReadyRequest(name=model), timeout=2.0).ready)
        except grpc.RpcError:
            return False


def check_echo(address: str, protocol: str) -> None:
    """One request before measuring: the system must answer identity_fp32 with its input (a peer
    set up wrongly may answer fast and empty, and perf_analyzer does not look at answers)."""
    sent = [float(i) for i in range(16)]
    if protocol == "http":
        body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": sent}]}
        request = urllib.request.Request(f"http://{address}/v2/models/{MODEL}/infer", data=json.dumps(body).encode())
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                got = [float(x) for x in json.loads(answer.read())["outputs"][0]["data"]]
        except (OSError, ValueError, KeyError, IndexError) as error:
            raise RuntimeError(f"identity_fp32 over HTTP failed: {error}") from error
    else:
        got = grpc_echo(address, sent)
    if got != sent:
        raise RuntimeError(f"identity_fp32 answered {got[:4]}... ({len(got)} values) to {sent[:4]}... (16 values)")


def grpc_echo(address: str, sent: list[float]) -> list[float]:
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(struct.pack("<16f", *sent))
    with grpc.insecure_channel(address) as channel:
        rpc = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        try:
            answer = rpc(request, timeout=30)
        except grpc.RpcError as error:
            raise RuntimeError(f"identity_fp32 over gRPC failed: {error.code()}") from error
    if answer.raw_output_contents:  # binary, as Triton and clipperd answer; MLServer may answer typed
        raw = answer.raw_output_contents[0]
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    return [float(x) for x in answer.outputs[0].contents.fp32_contents] if answer.outputs else []


def stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with contextlib.suppress(ProcessLookupError):  # children that outlived their parent
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def running(spec: System, log: Path, protocol: str, model: str = MODEL) -> Iterator[None]:
    """Starts the system in a session of its own, waits until ``model`` is ready, stops it after
    (and waits until its port is free again: Triton's own server may outlive its parent)."""
    if port_in_use(spec.address):
        raise RuntimeError(f"{spec.address} is already taken by another process")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            spec.command,
            cwd=spec.cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **spec.env},
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not model_ready(spec.address, protocol, model):
            if proc.poll() is not None:
                raise RuntimeError(f"exited with status {proc.returncode} before it was ready; see {log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{model} not ready after {READY_TIMEOUT_S:.0f} s; see {log}")
            time.sleep(0.25)
        yield
    finally:
        stop(proc)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while port_in_use(spec.address) and time.monotonic() < deadline:
            time.sleep(0.25)


def pinned(spec: System, cpus: str | None) -> System:
    """The system started under ``taskset -c cpus`` (unchanged when cpus is None)."""
    if cpus:
        spec.command = ["taskset", "-c", cpus, *spec.command]
    return spec


def pinned_perf_analyzer(pa: Path, base: Path, cpus: str | None) -> Path:
    """perf_analyzer behind taskset (a wrapper script in ``base``, since measure runs a path)."""
    if not cpus:
        return pa
    wrapper = base / "perf_analyzer"
    wrapper.write_text(f'#!/bin/sh\nexec taskset -c {cpus} {pa} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def perf_analyzer_path(given: str | None) -> Path:
    configured = given or os.environ.get("CLIPPERD_PERF_ANALYZER")
    return Path(configured) if configured else ROOT / ".tools" / "pa" / "bin" / "perf_analyzer"


def measure(
    pa: Path,
    address: str,
    protocol: str,
    concurrency: int,
    interval_ms: int,
    out_csv: Path,
    model: str = MODEL,
    extra: tuple[str, ...] = (),
    stability: int = 25,
) -> dict[str, Any]:
    command = [str(pa), "-m", model, "-u", address, "-i", protocol, *extra]
    command += ["--concurrency-range", f"{concurrency}:{concurrency}", "--measurement-interval", str(interval_ms)]
    command += ["--stability-percentage", str(stability), "--max-trials", "20", "-f", str(out_csv)]
    timeout = 90 + 25 * interval_ms / 1000
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"perf_analyzer ran past {timeout:.0f} s"}
    if run.returncode != 0 or not out_csv.exists():
        lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
        return {"error": " / ".join(lines[-2:]) or f"perf_analyzer exited with {run.returncode}"}
    with out_csv.open() as f:
        row = next(csv.DictReader(f))
    return {
        "infer_per_s": float(row["Inferences/Second"]),
        "p50_us": int(row["p50 latency"]),
        "p99_us": int(row["p99 latency"]),
    }


def run_round(
    names: list[str],
    levels: list[int],
    args: argparse.Namespace,
    workspace: Path,
    round_no: int,
    protocol: str | None = None,
    found: Mapping[str, Checkout] | None = None,
) -> list[dict[str, Any]]:
    """Each system in turn, started, measured at every level over ``protocol`` (default
    ``args.protocol``) and stopped."""
    protocol = protocol or args.protocol
    rows: list[dict[str, Any]] = []
    pa = pinned_perf_analyzer(perf_analyzer_path(args.perf_analyzer), workspace, args.pa_cpus)
    for name in names:
        spec = pinned(system(name, protocol, found, args.model_repository), args.server_cpus)
        stem = f"{name.replace('/', '_')}-{protocol}"  # a revision may hold a slash (origin/main)
        log = workspace / f"{stem}-round{round_no}.log"
        tag = {"system": name, "protocol": protocol, "round": round_no}
        try:
            with running(spec, log, protocol):
                check_echo(spec.address, protocol)
                for c in levels:
                    started = {"started": time.strftime("%H:%M:%S"), "loadavg_1m": round(os.getloadavg()[0], 2)}
                    out = workspace / f"{stem}-{round_no}-{c}.csv"
                    window = args.measurement_interval
                    result = measure(pa, spec.address, protocol, c, window, out, stability=args.stability_percentage)
                    rows.append({**tag, "concurrency": c, **started, **result})
                    print(
                        f"  round {round_no} {protocol} {name:15} c={c:<3} {describe(result)}",
                        file=sys.stderr,
                        flush=True,
                    )
        except RuntimeError as error:
            print(f"  round {round_no} {protocol} {name}: {error}", file=sys.stderr, flush=True)
            rows += [{**tag, "concurrency": c, "error": str(error)} for c in levels]
    return rows


def describe(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"error: {result['error']}"
    p50, p99 = result["p50_us"] / 1000, result["p99_us"] / 1000
    return f"{result['infer_per_s']:9.0f} infer/s  p50 {p50:.2f} ms  p99 {p99:.2f} ms"


def summarize(rows: list[dict[str, Any]], names: list[str], levels: list[int]) -> list[dict[str, Any]]:
    """Per (system, concurrency): the median of the successful rounds, and the spread of infer/s."""
    summary = []
    for c in levels:
        for name in names:
            good = [r for r in rows if r["system"] == name and r["concurrency"] == c and "error" not in r]
            entry: dict[str, Any] = {"system": name, "concurrency": c, "runs": len(good)}
            if good:
                throughput = [r["infer_per_s"] for r in good]
                entry |= {
                    "infer_per_s": statistics.median(throughput),
                    "infer_per_s_min": min(throughput),
                    "infer_per_s_max": max(throughput),
                    "p50_us": statistics.median(r["p50_us"] for r in good),
                    "p99_us": statistics.median(r["p99_us"] for r in good),
                }
            else:
                errors = [r["error"] for r in rows if r["system"] == name and r["concurrency"] == c]
                entry["error"] = errors[-1] if errors else "not measured"
            summary.append(entry)
    add_ratios(summary)
    return summary


def add_ratios(summary: list[dict[str, Any]]) -> None:
    ours = {e["concurrency"]: e for e in summary if e["system"] == OURS and "infer_per_s" in e}
    for entry in summary:
        base = ours.get(entry["concurrency"])
        if base is None or "infer_per_s" not in entry:
            continue
        entry["ours_over_this_infer_per_s"] = base["infer_per_s"] / entry["infer_per_s"]
        entry["ours_over_this_p50"] = base["p50_us"] / entry["p50_us"]
        entry["ours_over_this_p99"] = base["p99_us"] / entry["p99_us"]


def print_table(summary: list[dict[str, Any]], notes: dict[str, str]) -> None:
    print(f"{'conc':>4}  {'system':15} {'runs':>4} {'infer/s':>8} {'(min-max)':>15}", end="")
    print(f" {'p50 ms':>7} {'p99 ms':>7}", end="")
    print(f"  {'ours/this infer/s':>17} {'ours/this p50':>13}")
    for e in summary:
        if e["system"] in notes:
            continue
        if "error" in e:
            print(f"{e['concurrency']:>4}  {e['system']:15} {e['runs']:>4}  error: {e['error']}")
            continue
        spread = f"({e['infer_per_s_min']:.0f}-{e['infer_per_s_max']:.0f})"
        print(
            f"{e['concurrency']:>4}  {e['system']:15} {e['runs']:>4} {e['infer_per_s']:8.0f} {spread:>15} "
            f"{e['p50_us'] / 1000:7.2f} {e['p99_us'] / 1000:7.2f}",
            end="",
        )
        if "ours_over_this_infer_per_s" in e:
            print(f"  {e['ours_over_this_infer_per_s']:16.2f}x {e['ours_over_this_p50']:12.2f}x")
        else:
            print()
    for name, note in notes.items():
        print(f"{name}: skipped, {note}")


def check_targets(summary: list[dict[str, Any]], protocol: str) -> list[dict[str, Any]]:
    found = {(e["system"], e["concurrency"]): e for e in summary}
    checks = []
    for c, other, metric, kind, bound in TARGETS[protocol]:
        entry = found.get((other, c))
        key = "ours_over_this_infer_per_s" if metric == "infer_per_s" else "ours_over_this_p50"
        if entry is None or key not in entry:
            continue
        ratio = entry[key]
        met = ratio >= bound if kind == "min" else ratio <= bound
        what = "infer/s" if metric == "infer_per_s" else "p50 latency"
        sign = ">=" if kind == "min" else "<="
        checks.append({"target": f"c={c} {what} ours/{other} {sign} {bound}", "ratio": ratio, "met": met})
    return checks


def machine() -> dict[str, Any]:
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", default="grpc", help="what perf_analyzer speaks: grpc, http or grpc,http")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated concurrency levels")
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run clipperd as commit REV has it (clipperd@REV, from a temporary git worktree) and compare",
    )
    parser.add_argument(
        "--model-repository",
        type=Path,
        default=REPOSITORY,
        help="what every clipperd serves, whichever checkout it runs from (it must hold identity_fp32)",
    )
    parser.add_argument(
        "--stability-percentage",
        type=int,
        default=25,
        help="perf_analyzer's: three windows in a row within this much of each other",
    )
    parser.add_argument("--server-cpus", help="taskset CPU list every server runs on (e.g. 1)")
    parser.add_argument("--pa-cpus", help="taskset CPU list perf_analyzer runs on (e.g. 0)")
    args = parse_round_args(parser, SYSTEMS, repeat=1)
    args.model_repository = args.model_repository.resolve()  # the servers of other checkouts run elsewhere
    args.protocols = [p.strip() for p in args.protocol.split(",") if p.strip()]
    if not args.protocols or any(p not in ("grpc", "http") for p in args.protocols):
        parser.error(f"--protocol {args.protocol!r}: grpc, http or both (grpc,http)")
    args.names = [n.strip() for n in args.systems.split(",") if n.strip()]
    if args.baseline:
        args.names.append(f"{OURS}@{args.baseline}")
    for name in args.names:
        try:
            base, rev = split_name(name)
        except ValueError as error:
            parser.error(str(error))
        if base not in SYSTEMS or (rev is not None and base not in CLIPPERDS):
            parser.error(f"unknown system {name!r}; choose from {', '.join(SYSTEMS)}, or NAME@REV for {CLIPPERDS}")
    return args


def parse_round_args(parser: argparse.ArgumentParser, systems: Sequence[str], repeat: int) -> argparse.Namespace:
    """The arguments every side-by-side script takes (rounds, window, systems, outputs), parsed."""
    parser.add_argument("--repeat", type=int, default=repeat, help="rounds over all systems; the table shows medians")
    parser.add_argument("--measurement-interval", type=int, default=3000, help="perf_analyzer window, ms")
    parser.add_argument("--systems", default=",".join(systems), help="comma-separated, from: " + ", ".join(systems))
    parser.add_argument("--perf-analyzer", help="the binary (default $CLIPPERD_PERF_ANALYZER or .tools/pa)")
    parser.add_argument(
        "--json", help="write the machine, every run, the medians (and the targets, where checked) here"
    )
    parser.add_argument("--logs", help="keep the servers' logs and perf_analyzer's CSVs in this folder")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def named_systems(args: argparse.Namespace, systems: Sequence[str]) -> list[str]:
    """The systems ``--systems`` names, in its order; exits naming an unknown one."""
    names = [n.strip() for n in args.systems.split(",") if n.strip()]
    unknown = [n for n in names if n not in systems]
    if unknown:
        sys.exit(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(systems)}")
    return names


def round_workspace(args: argparse.Namespace, prefix: str) -> Path:
    """The folder for logs and CSVs (``--logs``, else a new temporary one); exits when
    perf_analyzer is missing."""
    if not perf_analyzer_path(args.perf_analyzer).exists():
        sys.exit(f"perf_analyzer not found at {perf_analyzer_path(args.perf_analyzer)}: run make tools")
    workspace = Path(args.logs) if args.logs else Path(tempfile.mkdtemp(prefix=prefix))
    workspace.mkdir(parents=True, exist_ok=True)
    return workspace


def ab_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """(new, old) for every NAME@REV whose NAME is measured too."""
    return [(base, name) for name in names for base, rev in [split_name(name)] if rev and base in names]


def ab_figures(summary: list[dict[str, Any]], new: str, old: str) -> list[Figure]:
    """``new`` against ``old`` at each protocol and level: infer/s (new/old), p50 and p99 (old/new).
    A figure one of them lacks is NaN, which fails the gate."""
    found = {(e.get("protocol"), e["concurrency"], e["system"]): e for e in summary}
    figures = []
    for protocol, c, name in found:
        if name != new:
            continue
        n, o = found[(protocol, c, new)], found.get((protocol, c, old), {})
        where = f"{protocol} c={c}"
        for key, label, scale, higher, gated in (
            ("infer_per_s", "infer/s", 1.0, True, True),
            ("p50_us", "p50 ms", 1e-3, False, True),
            ("p99_us", "p99 ms", 1e-3, False, False),
        ):
            old_value, new_value = (float(e.get(key, math.nan)) * scale for e in (o, n))
            figures.append(Figure(where, label, old_value, new_value, higher, gated))
    return figures


def print_ab(
    summary: list[dict[str, Any]], names: Sequence[str], found: Mapping[str, Checkout], rounds: int
) -> list[dict[str, object]]:
    """For every clipperd@REV beside clipperd: the markdown table and the verdict line."""
    return [
        report(ab_figures(summary, new, old), new, found[split_name(old)[1] or ""], old, rounds)
        for new, old in ab_pairs(names)
    ]


def measure_all(
    args: argparse.Namespace, levels: list[int], workspace: Path, found: Mapping[str, Checkout]
) -> dict[str, Any]:
    """Every round (each protocol in it, the systems' order rotating), then the tables."""
    names, protocols = args.names, args.protocols
    notes = {p: {n: s.missing for n in names if (s := system(n, p, found)).missing} for p in protocols}
    runnable = {p: [n for n in names if n not in notes[p]] for p in protocols}
    print(
        f"side by side over {', '.join(protocols)}: {', '.join(names)}; concurrency {levels}; "
        f"{args.repeat} round(s); logs in {workspace}",
        file=sys.stderr,
    )
    rows: list[dict[str, Any]] = []
    for r in range(args.repeat):
        for protocol in protocols:
            rows += run_round(rotate(runnable[protocol], r), levels, args, workspace, r + 1, protocol, found)
    summary: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    for protocol in protocols:
        part = summarize([row for row in rows if row["protocol"] == protocol], runnable[protocol], levels)
        summary += [{"protocol": protocol, **e} for e in part]
        if len(protocols) > 1:
            print(f"\n{protocol}:")
        print_table(part, notes[protocol])
        for check in check_targets(part, protocol):
            checks.append({"protocol": protocol, **check})
            print(f"target {check['target']}: {check['ratio']:.3f} -> {'met' if check['met'] else 'MISSED'}")
    ab = print_ab(summary, names, found, args.repeat)
    return {"skipped": notes, "runs": rows, "summary": summary, "targets": checks, "baseline": ab}


def main() -> None:
    args = parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    workspace = Path(args.logs) if args.logs else Path(tempfile.mkdtemp(prefix="side-by-side-"))
    workspace.mkdir(parents=True, exist_ok=True)
    if not perf_analyzer_path(args.perf_analyzer).exists():
        sys.exit(
            f"perf_analyzer not found at {perf_analyzer_path(args.perf_analyzer)}: run scripts/install-perf-analyzer.sh"
        )
    before = machine()
    revs = [rev for name in args.names if (rev := split_name(name)[1])]
    try:
        with checkouts(revs, project_python()) as found:
            results = measure_all(args, levels, workspace, found)
    except (ValueError, RuntimeError) as error:  # a revision that is not one, a worktree that imports elsewhere
        sys.exit(f"side_by_side: {error}")
    if args.json:
        report = {
            "command": sys.argv,
            "model": MODEL,
            "protocol": args.protocol,
            "machine_before": before,
            "machine_after": machine(),
            "measurement_interval_ms": args.measurement_interval,
            "repeat": args.repeat,
            "placement": {"server_cpus": args.server_cpus, "pa_cpus": args.pa_cpus},
            "checkouts": {
                rev: {"commit": c.commit, "path": str(c.path), "package": c.package} for rev, c in found.items()
            },
            **results,
        }
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
