"""The soak (perf/soak.py) for one minute, as a test: the bundled repository under perf_analyzer
(gRPC, HTTP, system shared memory), bad requests, shared-memory regions and connection churn must
leave the server's RSS, descriptors, threads and /dev/shm where the warm-up left them; and the same
minute against a model that leaks memory and descriptors must fail, so the checks are known to
catch a real leak.

What one minute can hold a server to: descriptors, threads and the /dev/shm objects it holds are
compared exactly, at quiet points (no client connected, which the soak waits for, whatever the
machine's speed); RSS is held to 20 MB of growth (the rise of the fitted line) over the ~45 s
after a 15 s warm-up, where a 1 MB/min slope would be noise. The leaky model keeps 4 KB a batch
(hundreds of batches a second: 100 MB or more a minute) and a descriptor every 200 batches."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.serverproc import EXAMPLES, ROOT, perf_analyzer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ONE_MINUTE = [
    "--minutes",
    "1",
    "--warmup-minutes",
    "0.25",
    "--sample-seconds",
    "2",
    "--max-rss-growth-mb",
    "20",
    "--max-fd-drift",
    "0",
    "--max-thread-drift",
    "0",
]
SOAK_TIMEOUT_S = 600  # start (up to 180 s), the load (1 minute, 2 at most), the stop (60 s at most)
LEAKY_MODEL = """
import os

import numpy as np

KEPT = []  # never freed: the leak


class Model:
    batches = 0

    def execute(self, inputs):
        Model.batches += 1
        KEPT.append(np.ones(1024, dtype=np.float32))  # 4 KB a batch
        if Model.batches % 200 == 0:
            KEPT.append(os.open(os.devnull, os.O_RDONLY))  # a descriptor now and then
        return {"OUTPUT0": inputs["INPUT0"]}
"""


def soak(tmp_path: Path, repository: Path) -> tuple[int, str, dict[str, Any]]:
    out = tmp_path / "soak.json"
    command = [sys.executable, str(ROOT / "perf" / "soak.py"), *ONE_MINUTE, "--model-repository", str(repository)]
    command += ["--perf-analyzer", str(perf_analyzer()), "--json", str(out), "--logs", str(tmp_path)]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=SOAK_TIMEOUT_S, check=False)
    output = f"exit {run.returncode}\nstdout:\n{run.stdout[-6000:]}\nstderr:\n{run.stderr[-3000:]}"
    assert out.exists(), output
    return run.returncode, output, json.loads(out.read_text())


def test_one_minute_soak_leaves_the_server_as_warm_up_did(tmp_path: Path) -> None:
    rc, output, report = soak(tmp_path, EXAMPLES)
    assert rc == 0, output
    assert report["passed"], output
    # the load was the load described, not a quiet server
    good = [r for r in report["pa_runs"] if r["rc"] == 0]
    assert {r["kind"] for r in good} == {"grpc", "http", "grpc-shm", "http-shm"}, output
    side = report["side"]
    for action in ("grpc good infer: ok", "http good infer: ok", "shm grpc infer: ok", "shm http infer: ok"):
        assert side.get(action, 0) >= 1, (action, side)
    for action in (
        "grpc wrong datatype: refused",
        "http malformed json: refused",
        "grpc unregistered shm region: refused",
    ):
        assert side.get(action, 0) >= 1, (action, side)
    quiet_after_warmup = [
        s for s in report["samples"] if s["kind"] == "quiet" and s["t_s"] >= report["figures"]["warm_at_s"]
    ]
    assert len(quiet_after_warmup) >= 3, output
    assert report["exit_status"] == 0, output


def test_one_minute_soak_fails_on_a_model_that_leaks(tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    model = repository / "identity_fp32"
    (model / "1").mkdir(parents=True)
    shutil.copy(EXAMPLES / "identity_fp32" / "config.pbtxt", model / "config.pbtxt")
    (model / "1" / "model.py").write_text(LEAKY_MODEL)
    rc, output, report = soak(tmp_path, repository)
    assert rc == 1, output
    failed = {name for name, ok, _ in report["checks"] if not ok}
    assert failed == {"rss", "fds"}, output  # the leaks, and nothing else: the load ran, the server stopped cleanly
    assert report["figures"]["rss_rise_mb"] > 20, output
