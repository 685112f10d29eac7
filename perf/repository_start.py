"""From start to READY: the bundled repository from a local folder, and the same repository from
an S3 API server (moto, in server mode, on 127.0.0.1) with a cold and with a warm cache.

    .venv/bin/python perf/repository_start.py [--rounds 3] [--json OUT.json]

The script starts moto, uploads model_repository/ (without Python's caches) to s3://models/repo,
then each round starts clipperd three times with default settings: from the folder; from
``s3://127.0.0.1:PORT/models/repo`` with an empty cache folder (cold: it lists twice, 1 s apart,
and downloads everything); and again on the cache the cold start left (warm: one listing, nothing
downloaded). The local start comes first in even rounds and last in odd ones. Each time is from
the process's spawn to the first 200 of GET /v2/health/ready; the server is then stopped
(SIGTERM). The bucket's own part, from the spawn to the log line that ends the copy, is shown
beside it: loading the models (Spark, TensorFlow) takes most of a start and varies with the
machine's load. The goal: the median warm start within 1.5x the median local one."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ports import free_port

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = ROOT / "model_repository"
GOAL = 1.5  # warm / local
READY_TIMEOUT_S = 300.0
AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def start_moto(log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    end = time.monotonic() + 30
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto did not start")


def upload(port: int) -> int:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    s3.create_bucket(Bucket="models")
    count = 0
    for path in sorted(REPOSITORY.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            s3.upload_file(str(path), "models", f"repo/{path.relative_to(REPOSITORY).as_posix()}")
            count += 1
    return count


def copied_after(log: Path, spawned: float) -> float | None:
    """Seconds from the spawn to the log line saying the bucket is copied (None: a folder)."""
    for line in log.read_text(errors="replace").splitlines():
        if "server.storage.mirror: model repository" in line and " copied to " in line:
            stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            return round(stamp - spawned, 2)
    return None


def time_to_ready(repository: str, extra: list[str], log: Path) -> tuple[float, float | None]:
    """Seconds from spawning clipperd to its first ready answer, and to the end of the bucket's
    copy (from its log line); the server is stopped after."""
    http_port = free_port()
    command = [sys.executable, "-m", "server.cli", "serve", "--model-repository", repository]
    command += ["--host", "127.0.0.1", "--grpc-port", "0", "--http-port", str(http_port), "--metrics-port", "0"]
    url = f"http://127.0.0.1:{http_port}/v2/health/ready"
    env = {**os.environ, **AWS, "PYTHONPATH": str(ROOT)}
    with log.open("wb") as out:
        started, spawned = time.perf_counter(), time.time()
        proc = subprocess.Popen([*command, *extra], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            while time.perf_counter() - started < READY_TIMEOUT_S:
                if proc.poll() is not None:
                    raise SystemExit(f"clipperd exited with {proc.returncode}; see {log}")
                try:
                    with urllib.request.urlopen(url, timeout=1) as answer:
                        if answer.status == 200:
                            ready = time.perf_counter() - started
                            return ready, copied_after(log, spawned)
                except (urllib.error.URLError, OSError):
                    pass
                time.sleep(0.02)
            raise SystemExit(f"clipperd not ready after {READY_TIMEOUT_S} s; see {log}")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def one_round(round_no: int, port: int, workspace: Path) -> dict[str, Any]:
    url = f"s3://127.0.0.1:{port}/models/repo"
    cache = workspace / f"cache-{round_no}"
    runs: list[tuple[str, str, list[str]]] = [
        ("cold", url, ["--repository-cache-dir", str(cache)]),
        ("warm", url, ["--repository-cache-dir", str(cache)]),
    ]
    local: tuple[str, str, list[str]] = ("local", str(REPOSITORY), [])
    order = [local, *runs] if round_no % 2 == 0 else [*runs, local]
    row: dict[str, Any] = {"round": round_no, "order": [name for name, _, _ in order]}
    for name, repository, extra in order:
        ready, copied = time_to_ready(repository, extra, workspace / f"{name}-{round_no}.log")
        row[name] = round(ready, 2)
        if copied is not None:
            row[f"{name}_copied"] = copied
        print(f"round {round_no}: {name} {row[name]:.2f} s (bucket copied after {copied} s)", flush=True)
    shutil.rmtree(cache, ignore_errors=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    workspace = Path(tempfile.mkdtemp(prefix="clipperd-repository-start-"))
    moto, port = start_moto(workspace / "moto.log")
    try:
        objects = upload(port)
        print(f"uploaded {objects} objects of {REPOSITORY.name}/ to s3://models/repo at 127.0.0.1:{port}")
        rows = [one_round(r, port, workspace) for r in range(args.rounds)]
    finally:
        moto.terminate()
        moto.wait(10)
    names = ("local", "cold", "warm", "cold_copied", "warm_copied")
    medians = {name: statistics.median(row[name] for row in rows) for name in names}
    ratio = medians["warm"] / medians["local"]
    print("\nseconds from spawn to /v2/health/ready 200 (and to the end of the bucket's copy)")
    print("round  order               local   cold    warm   cold copied  warm copied")
    for row in [*rows, {"round": "median", "order": [], **medians}]:
        order = ",".join(row["order"])
        times = " ".join(f"{row[n]:>6.2f}" for n in names[:3])
        print(f"{row['round']:>6} {order:<18} {times} {row['cold_copied']:>12.2f} {row['warm_copied']:>12.2f}")
    print(f"warm / local = {ratio:.2f} (goal <= {GOAL}); logs in {workspace}")
    if args.json:
        args.json.write_text(json.dumps({"rounds": rows, "medians": medians, "warm_over_local": ratio}, indent=2))
    return 0 if ratio <= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
