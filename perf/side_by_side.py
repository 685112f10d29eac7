"""clipperd side by side with the floor and with real peers, under NVIDIA perf_analyzer.

    .venv/bin/python perf/side_by_side.py [--protocol grpc|http] [--concurrency 1,8] [--repeat 3]
        [--measurement-interval 3000] [--systems clipperd,clipperd-grpcio,floor,tritonserver,pytriton,mlserver]
        [--json OUT.json]

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
ours/this (below 1: we answer sooner). The project's targets follow the table."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere; the messages live at the root

from server.proto import grpc_service_pb2 as pb  # noqa: E402

MODEL = "identity_fp32"
OURS = "clipperd"
SYSTEMS = ("clipperd", "clipperd-grpcio", "floor", "tritonserver", "pytriton", "mlserver")
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def system(name: str, protocol: str = "grpc") -> System:
    """The system's start command, with fresh ports where it can take any; ``address`` is the
    one of ``protocol``."""
    http = protocol == "http"
    if name in ("clipperd", "clipperd-grpcio"):
        port = free_port()
        ports = (
            ["--grpc-port", "0", "--http-port", str(port)] if http else ["--grpc-port", str(port), "--http-port", "0"]
        )
        command = [project_python(), "-m", "server.cli", "serve", "--model-repository", "model_repository"]
        command += ["--host", "127.0.0.1", *ports, "--metrics-port", "0"]
        if name == "clipperd-grpcio":
            command += ["--grpc-frontend", "grpcio"]
        return System(name, command, f"127.0.0.1:{port}")
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
            cwd=ROOT,
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
) -> dict[str, Any]:
    command = [str(pa), "-m", model, "-u", address, "-i", protocol, *extra]
    command += ["--concurrency-range", f"{concurrency}:{concurrency}", "--measurement-interval", str(interval_ms)]
    command += ["--stability-percentage", "25", "--max-trials", "20", "-f", str(out_csv)]
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
    names: list[str], levels: list[int], args: argparse.Namespace, workspace: Path, round_no: int
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    pa = perf_analyzer_path(args.perf_analyzer)
    for name in names:
        spec = system(name, args.protocol)
        log = workspace / f"{name}-round{round_no}.log"
        try:
            with running(spec, log, args.protocol):
                check_echo(spec.address, args.protocol)
                for c in levels:
                    started = {"started": time.strftime("%H:%M:%S"), "loadavg_1m": round(os.getloadavg()[0], 2)}
                    out = workspace / f"{name}-{round_no}-{c}.csv"
                    result = measure(pa, spec.address, args.protocol, c, args.measurement_interval, out)
                    rows.append({"system": name, "concurrency": c, "round": round_no, **started, **result})
                    print(f"  round {round_no} {name:15} c={c:<3} {describe(result)}", file=sys.stderr, flush=True)
        except RuntimeError as error:
            print(f"  round {round_no} {name}: {error}", file=sys.stderr, flush=True)
            rows += [{"system": name, "concurrency": c, "round": round_no, "error": str(error)} for c in levels]
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
    parser.add_argument("--protocol", default="grpc", choices=["grpc", "http"], help="what perf_analyzer speaks")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated concurrency levels")
    return parse_round_args(parser, SYSTEMS, repeat=1)


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


def main() -> None:
    args = parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    names = [n.strip() for n in args.systems.split(",") if n.strip()]
    workspace = Path(args.logs) if args.logs else Path(tempfile.mkdtemp(prefix="side-by-side-"))
    workspace.mkdir(parents=True, exist_ok=True)
    notes = {n: s.missing for n in names if (s := system(n, args.protocol)).missing is not None}
    runnable = [n for n in names if n not in notes]
    if not perf_analyzer_path(args.perf_analyzer).exists():
        sys.exit(
            f"perf_analyzer not found at {perf_analyzer_path(args.perf_analyzer)}: run scripts/install-perf-analyzer.sh"
        )
    before = machine()
    print(
        f"side by side over {args.protocol}: {', '.join(runnable)}; concurrency {levels}; "
        f"{args.repeat} round(s); logs in {workspace}",
        file=sys.stderr,
    )
    rows: list[dict[str, Any]] = []
    for r in range(args.repeat):
        order = runnable[r % len(runnable) :] + runnable[: r % len(runnable)] if runnable else []
        rows += run_round(order, levels, args, workspace, r + 1)
    summary = summarize(rows, runnable, levels)
    print_table(summary, notes)
    checks = check_targets(summary, args.protocol)
    for check in checks:
        print(f"target {check['target']}: {check['ratio']:.3f} -> {'met' if check['met'] else 'MISSED'}")
    if args.json:
        report = {
            "command": sys.argv,
            "model": MODEL,
            "protocol": args.protocol,
            "machine_before": before,
            "machine_after": machine(),
            "measurement_interval_ms": args.measurement_interval,
            "repeat": args.repeat,
            "skipped": notes,
            "runs": rows,
            "summary": summary,
            "targets": checks,
        }
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
