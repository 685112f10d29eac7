"""What application state in Redis costs an application's predictions: the same application
served with ``--app-state redis://`` against ``--app-state sqlite:///``, in the same run.

    .venv/bin/python perf/app_state_cost.py [--rounds 6] [--concurrency 8]
        [--measurement-interval 2000] [--delay-ms 1] [--json OUT.json]

One redis-server (127.0.0.1, nothing kept on disk) and two clipperd processes on one repository,
both running all along: one keeps its applications in SQLite, the other in Redis. Each holds the
same application (exp4 over two Python members, tests/data/app_models/model.py, ``delay_ms``
per batch) with learnt state for a few users from feedback. Rounds alternate the order of the
two; in each, perf_analyzer drives the application's KServe face over gRPC at ``concurrency``
(the command and stability criterion of side_by_side.py). Reported: each round's p50 and p99
latency, infer/s and the server's CPU time per prediction (/proc, over the run: a busy machine
disturbs it far less than latency), the medians, and redis/sqlite of the median p50; the goal
is at most 5 % added (<= 1.05). Feedback is not in the load: a prediction reads the policy state from memory,
and only feedback and admin calls write the store."""

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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from side_by_side import free_port, measure, perf_analyzer_path  # noqa: E402

from clipperd_admin import ApplicationAdmin  # noqa: E402
from tests.appmodels import add_model  # noqa: E402
from tests.serverproc import ServerProcess, running  # noqa: E402

GOAL = 1.05  # redis/sqlite, median p50
KEYS = ("p50_us", "p99_us", "infer_per_s", "server_cpu_us_per_prediction")
APP = "scored"
USERS = ("0", "alice", "bob", "carol")


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen([*args, "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis

        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            if time.monotonic() > deadline:
                raise SystemExit("redis-server did not answer within 10 s")
            time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def prepare(server: ServerProcess) -> None:
    """The application, and learnt state for each user (feedback through Clipper's REST API)."""
    admin = ApplicationAdmin(server.http_url)
    admin.register_application(APP, ["member_a", "member_b"], policy="exp4", default_output=-1, slo_micros=1_000_000)
    import urllib.request

    for uid in USERS:
        for i in range(3):
            body = json.dumps({"input": [float(i), 1, 2, 3], "label": 2, "uid": uid}).encode()
            request = urllib.request.Request(f"http://{server.http_url}/{APP}/update", data=body, method="POST")
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.status == 200


def cpu_seconds(pid: int) -> float:
    """The process's user + system CPU time so far (/proc/<pid>/stat, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def predictions(server: ServerProcess) -> int:
    return int(ApplicationAdmin(server.http_url).get_application(APP)["metrics"]["predictions"])


def run_one(store: str, server: ServerProcess, args: argparse.Namespace, workspace: Path, n: int) -> dict[str, Any]:
    """One perf_analyzer run (tried again once when it finds no stable window on a busy machine),
    with the server's CPU time per prediction over it."""
    assert server.proc is not None
    for attempt in (1, 2):
        cpu, count = cpu_seconds(server.proc.pid), predictions(server)
        csv = workspace / f"{store}-{n}-{attempt}.csv"
        out = measure(args.pa, server.url, "grpc", args.concurrency, args.measurement_interval, csv, APP, ("-x", "1"))
        if "error" not in out:
            break
        print(f"perf_analyzer ({store}, round {n}, try {attempt}): {out['error']}", file=sys.stderr)
    else:
        raise SystemExit(f"perf_analyzer ({store}, round {n}): no stable measurement twice")
    used = (cpu_seconds(server.proc.pid) - cpu) / max(predictions(server) - count, 1)
    row = {"round": n, "store": store, **out, "server_cpu_us_per_prediction": round(used * 1e6, 1)}
    print(json.dumps(row), file=sys.stderr)
    return row


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    median = {
        store: {key: round(statistics.median(r[key] for r in rows if r["store"] == store), 1) for key in KEYS}
        for store in ("sqlite", "redis")
    }
    ratio = median["redis"]["p50_us"] / median["sqlite"]["p50_us"]
    cpu = median["redis"]["server_cpu_us_per_prediction"] / median["sqlite"]["server_cpu_us_per_prediction"]
    return {
        "medians": median,
        "redis_over_sqlite_p50": round(ratio, 4),
        "redis_over_sqlite_cpu": round(cpu, 4),
        "goal": GOAL,
        "met": ratio <= GOAL,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--measurement-interval", type=int, default=2000, help="perf_analyzer's window, ms")
    parser.add_argument("--delay-ms", type=float, default=1.0, help="each member's time per batch")
    parser.add_argument("--perf-analyzer", default=None, help="its path (default: CLIPPERD_PERF_ANALYZER)")
    parser.add_argument("--json", default="", help="write every round and the summary here")
    args = parser.parse_args()
    args.pa = perf_analyzer_path(args.perf_analyzer)
    if not args.pa.exists():
        raise SystemExit(f"perf_analyzer not found at {args.pa}: run scripts/install-perf-analyzer.sh")
    return args


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="app-state-cost-") as tmp:
        workspace = Path(tmp)
        repository = workspace / "models"
        for name in ("member_a", "member_b"):
            add_model(repository, name, value=1 if name == "member_a" else 2, delay_ms=args.delay_ms)
        quiet = ("--log-level", "WARNING", "--no-allow-metrics")
        sqlite = ("--app-state", f"sqlite:///{workspace}/state.sqlite")
        with contextlib.ExitStack() as stack:
            url = stack.enter_context(redis_server(workspace))
            servers = {
                "sqlite": stack.enter_context(running(repository, *sqlite, *quiet, log_dir=workspace)),
                "redis": stack.enter_context(running(repository, "--app-state", url, *quiet, log_dir=workspace)),
            }
            for server in servers.values():
                prepare(server)
            rows = []
            for n in range(1, args.rounds + 1):
                order = ("sqlite", "redis") if n % 2 else ("redis", "sqlite")
                rows += [run_one(store, servers[store], args, workspace, n) for store in order]
    summary = summarize(rows)
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args) | {"pa": str(args.pa)}, "rows": rows, **summary}))


if __name__ == "__main__":
    main()
