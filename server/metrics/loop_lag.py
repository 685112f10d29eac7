"""The event loop's own lag: how late a timer that should fire every ``interval`` fires.

Everything that serves clients runs on one event loop, so one client's bytes that take the loop
for long (a decompression bomb, a frame flood) delay every other client. This monitor measures
it from inside: the lateness of a periodic timer, exported as a histogram
(``clipperd_event_loop_lag_seconds``). The adversarial tests read it to assert that no attack
stalls the loop, which a probe from outside could only estimate through the machine's noise."""

from __future__ import annotations

import asyncio
import bisect
import itertools
import time
from collections.abc import Iterator

from prometheus_client.metrics_core import HistogramMetricFamily, Metric

INTERVAL_S = 0.025  # 40 samples a second: a stall of 50 ms or more is always seen
BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LoopLagMonitor:
    def __init__(self, interval_s: float = INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.counts = [0] * (len(BUCKETS_S) + 1)  # per bucket, then +Inf
        self.total_s = 0.0
        self.max_s = 0.0
        self._due = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._due = time.perf_counter() + self.interval_s
        self._timer = asyncio.get_running_loop().call_later(self.interval_s, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        now = time.perf_counter()
        self.record(max(0.0, now - self._due))
        self._due = now + self.interval_s
        self._timer = asyncio.get_running_loop().call_later(self.interval_s, self._tick)

    def record(self, lag_s: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS_S, lag_s)] += 1
        self.total_s += lag_s
        self.max_s = max(self.max_s, lag_s)

    def families(self) -> Iterator[Metric]:
        histogram = HistogramMetricFamily(
            "clipperd_event_loop_lag_seconds",
            f"How late a timer due every {self.interval_s * 1000:.0f} ms fired on the server's event loop",
        )
        bounds = [*(repr(b) for b in BUCKETS_S), "+Inf"]
        histogram.add_metric([], list(zip(bounds, itertools.accumulate(self.counts), strict=True)), self.total_s)
        yield histogram
