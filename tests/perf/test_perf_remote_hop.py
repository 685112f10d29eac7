"""perf/remote_hop.py's mechanics on the smallest run (``--c1-only``, two rounds of short
windows): the container, a front end over it and the floor all up at once, the c=1 group
measured in a turning order, each round's hop set against that round's floor, the verdict
printed and the workspace removed. It checks the method, not the speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.serverproc import ROOT, perf_analyzer

pytestmark = pytest.mark.timeout(180)
sys.path.insert(0, str(ROOT / "perf"))

import remote_hop  # noqa: E402


def test_a_c1_run_measures_neighbours_in_turn_and_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    before = set(Path(tempfile.gettempdir()).glob("remote-hop-*"))
    command = [sys.executable, str(ROOT / "perf" / "remote_hop.py"), "--c1-only", "--repeat", "2"]
    command += ["--c1-interval", "300", "--stability", "100", "--json", str(out)]  # three windows, however noisy
    env = {**os.environ, "CLIPPERD_PERF_ANALYZER": str(perf_analyzer())}
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=150, env=env, check=False)
    output = f"exit {run.returncode}\nstdout:\n{run.stdout[-4000:]}\nstderr:\n{run.stderr[-4000:]}"
    assert run.returncode == 0, output
    report: dict[str, Any] = json.loads(out.read_text())
    first, second = report["rounds"]
    assert first["order"] == ["container_echo_c1", "pair_echo_c1", "floor_c1"]
    assert second["order"] == ["pair_echo_c1", "floor_c1", "container_echo_c1"]
    for found in (first, second):
        assert found["pair_echo_c1"]["p50_us"] > 0, found
        hop = found["pair_echo_c1"]["p50_us"] - found["container_echo_c1"]["p50_us"]
        assert found["ratios"]["hop_echo_us"] == hop
        assert found["ratios"]["hop_over_floor"] == hop / found["floor_c1"]["p50_us"]
    assert "targets by the median round: c=1 hop <= floor:" in run.stdout, output
    assert set(Path(tempfile.gettempdir()).glob("remote-hop-*")) <= before  # its workspace is gone


def ratios(**found: float) -> dict[str, Any]:
    return {"ratios": found}


def test_the_verdict_takes_each_targets_median_round() -> None:
    rounds = [
        ratios(hop_over_floor=0.8, pair_over_batched=0.85, pair_over_unbatched=5.0),
        ratios(hop_over_floor=1.3, pair_over_batched=0.95, pair_over_unbatched=2.0),
        ratios(hop_over_floor=0.9, pair_over_batched=0.92, pair_over_unbatched=4.0),
    ]
    assert remote_hop.verdict(rounds) == (
        "targets by the median round: c=1 hop <= floor: met (0.90); pair >= 0.9 x batched: met (0.92); "
        "pair >= 3 x unbatched: met (4.00)"
    )
    rounds[2] = ratios(hop_over_floor=1.1, pair_over_batched=0.8, pair_over_unbatched=2.5)
    assert remote_hop.verdict(rounds) == (
        "targets by the median round: c=1 hop <= floor: MISSED (1.10); pair >= 0.9 x batched: MISSED (0.85); "
        "pair >= 3 x unbatched: MISSED (2.50)"
    )


def test_each_group_turns_by_one_a_round() -> None:
    group = (("a", "x"), ("b", "y"), ("c", "z"))
    orders = [[name for name, _ in remote_hop.turned(group, n)] for n in range(4)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]


def test_the_compute_share_is_throughput_times_compute_time_a_row() -> None:
    # 640 rows in 10 batches of 64, 2 s of compute in all (200 ms a batch), at 300 infer/s: the
    # model computed 300 x 2 / 640 = 0.9375 of the time
    found = remote_hop.batching((100, 5, 10**9), (740, 15, 3 * 10**9), 300.0)
    assert found == {"rows_per_batch": 64.0, "compute_ms_per_batch": 200.0, "compute_share": 0.9375}
