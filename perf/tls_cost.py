"""What TLS costs on the native gRPC front end: clipperd with ``--grpc-use-ssl`` against the same
server in plaintext, under NVIDIA perf_analyzer (``--ssl-grpc-use-ssl true``).

    .venv/bin/python perf/tls_cost.py [--rounds 3] [--concurrency 8] [--measurement-interval 3000]
        [--grpc-frontend native|grpcio] [--json OUT.json]

The certificates (a P-256 CA and a server certificate for 127.0.0.1) are made with the openssl
command in a temporary folder; the repository holds identity_fp32 only. Each round starts
clipperd twice (fresh ports), once per setting, the order alternating from round to round, and
drives identity_fp32 over gRPC with perf_analyzer (the command and stability criterion of
side_by_side.py). The table gives each round's infer/s, the medians, and tls/plain as the ratio
of the medians and per round; the goal is a cost of at most 25 % (tls/plain >= 0.75). It also
gives the server's CPU time per call (from /proc, over the whole perf_analyzer run), which a busy
machine disturbs far less than throughput: on a 2-core machine perf_analyzer's own TLS work
competes with the server's."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from side_by_side import ROOT, System, free_port, measure, model_ready, perf_analyzer_path, project_python, stop

GOAL = 0.75  # tls/plain infer/s
_EXT = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key), P-256, valid for a day."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"]
    ca, ca_key, cert, key, csr, ext = (folder / n for n in ("ca.pem", "ca.key", "server.pem", "server.key", "csr", "x"))
    ext.write_text(_EXT)
    for command in (
        ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-subj", "/CN=clipperd perf CA"],
        ["req", "-new", *ec[:-2], "-keyout", key, "-out", csr, "-subj", "/CN=localhost"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "1", "-extfile", ext,
         "-out", cert],
    ):  # fmt: skip
        subprocess.run(["openssl", *map(str, command)], check=True, capture_output=True)
    return ca, cert, key


def clipperd(tls: bool, repo: Path, certs: tuple[Path, Path, Path], frontend: str) -> tuple[System, str]:
    """The server as a System whose address is its plaintext HTTP port (side_by_side.running waits
    for readiness there), and its gRPC address."""
    grpc_port, http_port = free_port(), free_port()
    command = [project_python(), "-m", "server.cli", "serve", "--model-repository", str(repo), "--host", "127.0.0.1"]
    command += ["--grpc-port", str(grpc_port), "--http-port", str(http_port), "--no-allow-metrics"]
    command += ["--grpc-frontend", frontend]
    if tls:
        command += ["--grpc-use-ssl=true", "--grpc-server-cert", str(certs[1]), "--grpc-server-key", str(certs[2])]
    return System("tls" if tls else "plain", command, f"127.0.0.1:{http_port}"), f"127.0.0.1:{grpc_port}"


@contextlib.contextmanager
def serving(spec: System, log: Path) -> Iterator[int]:
    """Starts the server, waits until identity_fp32 is ready on its HTTP port; yields its pid."""
    with log.open("wb") as out:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(spec.command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not model_ready(spec.address, "http"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{spec.name}: not ready; see {log}")
            time.sleep(0.25)
        yield proc.pid
    finally:
        stop(proc)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def calls(http_address: str) -> int:
    with urllib.request.urlopen(f"http://{http_address}/v2/models/identity_fp32/stats", timeout=10) as answer:
        return int(json.load(answer)["model_stats"][0]["inference_count"])


def run_one(tls: bool, args: argparse.Namespace, workspace: Path, round_no: int) -> dict[str, Any]:
    certs = (workspace / "ca.pem", workspace / "server.pem", workspace / "server.key")
    spec, grpc_address = clipperd(tls, workspace / "repo", certs, args.grpc_frontend)
    row: dict[str, Any] = {"setting": spec.name, "round": round_no, "loadavg_1m": round(os.getloadavg()[0], 2)}
    extra = ("--ssl-grpc-use-ssl", "true", "--ssl-grpc-root-certifications-file", str(certs[0])) if tls else ()
    with serving(spec, workspace / f"{spec.name}-{round_no}.log") as pid:
        csv = workspace / f"{spec.name}-{round_no}.csv"
        pa = perf_analyzer_path(args.perf_analyzer)
        cpu, done = cpu_seconds(pid), calls(spec.address)
        row.update(measure(pa, grpc_address, "grpc", args.concurrency, args.measurement_interval, csv, extra=extra))
        cpu, done = cpu_seconds(pid) - cpu, calls(spec.address) - done
        row["server_cpu_us_per_call"] = round(cpu / done * 1e6, 1) if done else None
    shown = f"{row['infer_per_s']:.0f} infer/s" if "infer_per_s" in row else f"error: {row.get('error')}"
    shown += f", server CPU {row['server_cpu_us_per_call']} µs a call"
    print(f"  round {round_no} {spec.name:5} {shown}", file=sys.stderr, flush=True)
    return row


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def rates(setting: str) -> dict[int, float]:
        return {r["round"]: r["infer_per_s"] for r in rows if r["setting"] == setting and "infer_per_s" in r}

    tls, plain = rates("tls"), rates("plain")
    paired = [tls[r] / plain[r] for r in sorted(tls.keys() & plain.keys())]
    summary: dict[str, Any] = {"tls": sorted(tls.values()), "plain": sorted(plain.values()), "paired": paired}
    for setting in ("tls", "plain"):
        costs = [
            r["server_cpu_us_per_call"] for r in rows if r["setting"] == setting and r.get("server_cpu_us_per_call")
        ]
        summary[f"cpu_{setting}"] = statistics.median(costs) if costs else None
    if tls and plain:
        summary["median_tls"] = statistics.median(tls.values())
        summary["median_plain"] = statistics.median(plain.values())
        summary["ratio_of_medians"] = summary["median_tls"] / summary["median_plain"]
        summary["goal_met"] = summary["ratio_of_medians"] >= GOAL
    return summary


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--measurement-interval", type=int, default=3000, help="perf_analyzer window, ms")
    parser.add_argument("--grpc-frontend", default="native", choices=("native", "grpcio"))
    parser.add_argument("--perf-analyzer", help="default: $CLIPPERD_PERF_ANALYZER, then .tools/pa/bin/perf_analyzer")
    parser.add_argument("--json", help="write every run and the summary here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if not perf_analyzer_path(args.perf_analyzer).exists():
        sys.exit(f"perf_analyzer not found at {perf_analyzer_path(args.perf_analyzer)}")
    workspace = Path(tempfile.mkdtemp(prefix="clipperd-tls-cost-"))
    print(f"logs and CSVs in {workspace}", file=sys.stderr)
    make_certificates(workspace)
    shutil.copytree(ROOT / "model_repository" / "identity_fp32", workspace / "repo" / "identity_fp32")
    rows: list[dict[str, Any]] = []
    for round_no in range(1, args.rounds + 1):
        order = (True, False) if round_no % 2 else (False, True)
        rows += [run_one(tls, args, workspace, round_no) for tls in order]
    summary = summarize(rows)
    print(f"\nidentity_fp32, gRPC ({args.grpc_frontend}), concurrency {args.concurrency}, {args.rounds} rounds")
    print(f"TLS:       {', '.join(f'{v:.0f}' for v in summary['tls'])}")
    print(f"plaintext: {', '.join(f'{v:.0f}' for v in summary['plain'])}")
    if "ratio_of_medians" in summary:
        paired = ", ".join(f"{r:.3f}" for r in summary["paired"])
        print(f"median TLS {summary['median_tls']:.0f} / plaintext {summary['median_plain']:.0f} infer/s")
        print(f"tls/plain: {summary['ratio_of_medians']:.3f} (ratio of medians); rounds: {paired}")
        print(f"goal tls/plain >= {GOAL}: {'met' if summary['goal_met'] else 'MISSED'}")
    if summary["cpu_tls"] and summary["cpu_plain"]:
        print(f"server CPU a call, median: TLS {summary['cpu_tls']:.0f} µs, plaintext {summary['cpu_plain']:.0f} µs")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary, "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
