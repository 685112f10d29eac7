"""The server's own event-loop lag measurement (server/metrics/loop_lag.py) and its metric."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from server.metrics.loop_lag import BUCKETS_S, LoopLagMonitor
from tests.adversary import Watch, loop_lag_histogram, stalls_over
from tests.serverproc import ServerProcess


def test_samples_fall_in_their_buckets() -> None:
    monitor = LoopLagMonitor()
    for lag in (0.0, 0.0004, 0.003, 0.3, 20.0):
        monitor.record(lag)
    assert monitor.counts[0] == 2  # up to 1 ms
    assert monitor.counts[BUCKETS_S.index(0.005)] == 1
    assert monitor.counts[BUCKETS_S.index(0.5)] == 1
    assert monitor.counts[-1] == 1  # past the last bound: +Inf
    (family,) = monitor.families()
    samples = {s.labels.get("le"): s.value for s in family.samples if s.name.endswith("_bucket")}
    assert samples["0.001"] == 2
    assert samples["0.25"] == 3
    assert samples["+Inf"] == 5


async def test_a_blocked_loop_is_seen_as_one_late_sample() -> None:
    monitor = LoopLagMonitor(interval_s=0.01)
    monitor.start()
    await asyncio.sleep(0.05)
    time.sleep(0.4)  # noqa: ASYNC251  # the loop is held on purpose: the timer due meanwhile fires late, once
    await asyncio.sleep(0.05)
    monitor.stop()
    late = sum(monitor.counts[BUCKETS_S.index(0.25) + 1 :])
    assert late == 1
    assert monitor.max_s >= 0.35


def test_the_server_exports_its_loop_lag(example_server: ServerProcess, tmp_path: Path) -> None:
    before = loop_lag_histogram(example_server)
    with Watch(example_server) as watch:
        time.sleep(0.6)
    after = loop_lag_histogram(example_server)
    assert after[float("inf")] > before[float("inf")]  # it keeps sampling
    assert stalls_over(before, after) == 0
    watch.check()
