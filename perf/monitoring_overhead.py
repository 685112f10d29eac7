"""What monitoring costs: throughput at concurrency 8 over gRPC with drift monitoring and with
traces, against the same server with neither, under perf_analyzer.

    .venv/bin/python perf/monitoring_overhead.py [--repeat 5] [--measurement-interval 3000] [--json OUT.json]

Targets (issue 19): with drift monitoring at a 10 % sample rate (traces off) infer/s >= 0.95 x
monitoring off; with traces at a 1 % rate (1 request of 100, exported over OTLP/HTTP to a
collector this script runs) >= 0.9 x. Both on ``identity_fp32`` and ``mlp_torch``.

The systems, each started alone, measured on both models and stopped before the next, in rounds
whose order rotates; the table shows each one's medians over the rounds:

  off      the two models, no drift_* parameters, tracing off (the default)
  drift    the same with drift_sample_rate 0.1 (reference: the first 2,000 sampled rows)
  traces   the same as off, with --trace-config rate=100 exporting to the collector

The server's statistics afterwards confirm the monitor sampled (clipperd_monitor_samples_total)
and the collector counts the exports it received."""

from __future__ import annotations

import argparse
import http.server
import json
import shutil
import statistics
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

PERF = Path(__file__).resolve().parent
sys.path.insert(0, str(PERF.parent))  # run as a script from anywhere
sys.path.insert(0, str(PERF))

import side_by_side as sbs  # noqa: E402

SYSTEMS = ("off", "drift", "traces")
MODELS = ("identity_fp32", "mlp_torch")
CONCURRENCY = 8
TARGETS = {"drift": 0.95, "traces": 0.9}
DRIFT = {"drift_sample_rate": "0.1"}


class Collector(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP endpoint that takes every export (and counts them), answering 200."""

    exports = 0


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # http.server's name
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        assert isinstance(self.server, Collector)
        self.server.exports += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return


def repository(workspace: Path, name: str) -> Path:
    root = workspace / f"repository-{name}"
    if root.exists():  # made in an earlier round
        return root
    for model in MODELS:
        shutil.copytree(sbs.ROOT / "model_repository" / model, root / model)
        if name == "drift":
            config = root / model / "config.pbtxt"
            lines = [f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}' for k, v in DRIFT.items()]
            config.write_text(config.read_text() + "\n".join(lines) + "\n")
    return root


def system(name: str, workspace: Path, collector: Collector) -> sbs.System:
    spec = sbs.system("clipperd", repository=repository(workspace, name))
    if name == "traces":
        url = f"http://127.0.0.1:{collector.server_address[1]}/v1/traces"
        for setting in (f"opentelemetry,url={url}", "level=TIMESTAMPS", "rate=100"):
            spec.command += ["--trace-config", setting]
    return spec


def monitor_samples(spec: sbs.System) -> float:
    """clipperd_monitor_samples_total over the models, from the server's metrics port."""
    family = "clipperd_monitor_samples_total"
    metrics_port = spec.command[spec.command.index("--metrics-port") + 1]
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(family + "{"))


def run_round(names: list[str], args: argparse.Namespace, workspace: Path, collector: Collector, n: int) -> list[Any]:
    rows: list[dict[str, Any]] = []
    pa = sbs.perf_analyzer_path(args.perf_analyzer)
    for name in names:
        spec = system(name, workspace, collector)
        spec.command[spec.command.index("--metrics-port") + 1] = str(sbs.free_port())
        try:
            with sbs.running(spec, workspace / f"{name}-round{n}.log", "grpc", model=MODELS[-1]):
                for model in MODELS:
                    out = workspace / f"{name}-{model}-{n}.csv"
                    result = sbs.measure(pa, spec.address, "grpc", CONCURRENCY, args.measurement_interval, out, model)
                    rows.append({"system": name, "model": model, "round": n, **result})
                    print(f"  round {n} {name:7} {model:14} {sbs.describe(result)}", file=sys.stderr, flush=True)
                if name == "drift":
                    print(f"  round {n} drift: {monitor_samples(spec):.0f} rows sampled", file=sys.stderr, flush=True)
        except RuntimeError as error:
            rows += [{"system": name, "model": m, "round": n, "error": str(error)} for m in MODELS]
    return rows


def medians(rows: list[dict[str, Any]], names: list[str]) -> dict[tuple[str, str], dict[str, float]]:
    table = {}
    for name in names:
        for model in MODELS:
            good = [r for r in rows if r["system"] == name and r["model"] == model and "error" not in r]
            if good:
                table[(name, model)] = {
                    k: statistics.median(r[k] for r in good) for k in ("infer_per_s", "p50_us", "p99_us")
                }
    return table


def verdicts(table: dict[tuple[str, str], dict[str, float]]) -> list[dict[str, Any]]:
    found = []
    for name, target in TARGETS.items():
        for model in MODELS:
            base, this = table.get(("off", model)), table.get((name, model))
            if base and this:
                ratio = this["infer_per_s"] / base["infer_per_s"]
                found.append({"system": name, "model": model, "ratio": ratio, "target": target, "met": ratio >= target})
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args = sbs.parse_round_args(parser, SYSTEMS, repeat=5)
    names = sbs.named_systems(args, SYSTEMS)
    workspace = sbs.round_workspace(args, "monitoring-")
    collector = Collector(("127.0.0.1", 0), _Handler)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    before = sbs.machine()
    print(f"monitoring overhead over gRPC, c={CONCURRENCY}: {', '.join(names)}; {args.repeat} round(s); "
          f"logs {workspace}", file=sys.stderr)  # fmt: skip
    rows: list[dict[str, Any]] = []
    for r in range(args.repeat):
        rows += run_round(names[r % len(names) :] + names[: r % len(names)], args, workspace, collector, r + 1)
    collector.shutdown()
    table = medians(rows, names)
    print(f"{'system':8} {'model':14} {'infer/s':>9} {'p50 us':>8} {'p99 us':>8}")
    for (name, model), row in table.items():
        print(f"{name:8} {model:14} {row['infer_per_s']:9.0f} {row['p50_us']:8.0f} {row['p99_us']:8.0f}")
    found = verdicts(table)
    for v in found:
        verdict = "met" if v["met"] else "MISSED"
        print(f"target {v['system']} / off infer/s on {v['model']} >= {v['target']}: {v['ratio']:.3f} -> {verdict}")
    print(f"collector: {collector.exports} OTLP exports received")
    if args.json:
        report = {"command": sys.argv, "machine_before": before, "machine_after": sbs.machine(), "runs": rows,
                  "summary": {f"{k[0]}/{k[1]}": v for k, v in table.items()}, "targets": found,
                  "exports": collector.exports}  # fmt: skip
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
