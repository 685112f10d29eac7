"""perf/paired.py, the way docs/benchmarks.md runs it for issue 15: this checkout's clipperd and
one run from a temporary git worktree of REV, both up at once, perf_analyzer alternating between
them. One tiny configuration (identity_fp32, gRPC, concurrency 1, two pairs of short windows): it
checks the mechanics (both measured, ratios paired, the worktree removed), not the speed."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.perf.test_perf_baseline import MARKER, marked_head, worktrees
from tests.serverproc import ROOT, perf_analyzer

pytestmark = pytest.mark.timeout(180)


def test_paired_windows_of_head_against_this_checkout(tmp_path: Path) -> None:
    rev = marked_head(tmp_path)
    out = tmp_path / "report.json"
    command = [sys.executable, str(ROOT / "perf" / "paired.py"), "--baseline", rev, "--protocol", "grpc"]
    command += ["--concurrency", "1", "--pairs", "2", "--window-ms", "300", "--json", str(out), "--logs", str(tmp_path)]
    env = {**os.environ, "CLIPPERD_PERF_ANALYZER": str(perf_analyzer())}
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=150, env=env, check=False)
    output = f"exit {run.returncode}\nstdout:\n{run.stdout[-4000:]}\nstderr:\n{run.stderr[-4000:]}"
    assert run.returncode == 0, output
    report: dict[str, Any] = json.loads(out.read_text())
    (level,) = report["levels"]
    assert (level["where"], level["concurrency"]) == ("grpc", 1)
    assert len(level["pairs"]) == 2
    for pair in level["pairs"]:
        for name in ("new", "old"):  # each served requests and used CPU for them
            assert pair[name]["infer_per_s"] > 0, pair
            assert pair[name]["cpu_us"] > 0, pair
        assert all(math.isfinite(r) and r > 0 for r in pair["ratios"].values()), pair
    assert set(level["medians"]) == {"infer_per_s", "p50", "cpu_per_request"}
    assert "| grpc c=1 | 2 |" in run.stdout, output
    assert "no regression (every throughput and p50 median >= 0.95):" in run.stdout, output
    # the old server ran the worktree's code, the new one this checkout's; the worktree is gone
    assert MARKER in (tmp_path / "old.log").read_text()
    assert MARKER not in (tmp_path / "new.log").read_text()
    assert "clipperd-baseline-" not in worktrees()
