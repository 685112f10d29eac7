"""Rates and percentiles over the last seconds, from the server's cumulative counters.

The counters (schedulers/stats.py, the applications' metrics) only grow; a figure "now" is the
difference between the counters now and a snapshot taken a few seconds ago. Snapshots are taken
when the dashboard asks (never on the request path, nothing when no one looks), at most one per
``step_s``, and only the last ``span_s`` of them are kept: the history is bounded by
``span_s / step_s`` snapshots of the rows shown."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from schedulers.stats import LATENCY_BUCKETS_NS

SPAN_S = 10.0  # the window rates and percentiles are measured over
STEP_S = 1.0  # at most one snapshot a second
MIN_WINDOW_S = 0.5  # two snapshots closer than this give no rate (too noisy)


@dataclass(frozen=True, slots=True)
class Counts:
    """One row's cumulative counters at one moment (a model version or an application)."""

    requests: int = 0  # answered: successes and failures (an application's predictions)
    failures: int = 0  # failed requests (an application's default outputs)
    latency_buckets: tuple[int, ...] = ()  # successes per LATENCY_BUCKETS_NS bucket, then +Inf
    cache_hits: int = 0
    cache_misses: int = 0
    executions: int = 0  # batches executed
    rows: int = 0  # inferences (rows) in those batches


@dataclass(frozen=True, slots=True)
class Delta:
    """What one row did over ``seconds``."""

    seconds: float
    requests: int
    failures: int
    latency_buckets: tuple[int, ...]
    cache_hits: int
    cache_misses: int
    executions: int
    rows: int

    def rate(self) -> float:
        return self.requests / self.seconds

    def failure_rate(self) -> float:
        return self.failures / self.seconds


def _minus(now: Counts, then: Counts, seconds: float) -> Delta:
    if now.requests < then.requests or now.executions < then.executions:
        then = Counts()  # a reloaded version counts from zero again
    buckets = then.latency_buckets or (0,) * len(now.latency_buckets)
    return Delta(
        seconds,
        now.requests - then.requests,
        now.failures - then.failures,
        tuple(a - b for a, b in zip(now.latency_buckets, buckets, strict=False)),
        now.cache_hits - then.cache_hits,
        now.cache_misses - then.cache_misses,
        now.executions - then.executions,
        now.rows - then.rows,
    )


class History:
    """The last ``span_s`` of snapshots; ``deltas`` compares now with the oldest of them."""

    def __init__(self, span_s: float = SPAN_S, step_s: float = STEP_S) -> None:
        self.span_s = span_s
        self.step_s = step_s
        self._snapshots: deque[tuple[float, Mapping[str, Counts]]] = deque(maxlen=int(span_s / step_s) + 1)

    def __len__(self) -> int:
        return len(self._snapshots)

    def deltas(self, now_s: float, counts: Mapping[str, Counts]) -> dict[str, Delta]:
        """Each row's change since the oldest snapshot of the span (none on a first look, or
        when the last look is older than the span); then ``counts`` is kept as a snapshot."""
        while self._snapshots and now_s - self._snapshots[0][0] > self.span_s + self.step_s:
            self._snapshots.popleft()  # nobody looked for a while: too old to be "now"
        out: dict[str, Delta] = {}
        if self._snapshots:
            then_s, then = self._snapshots[0]
            seconds = now_s - then_s
            if seconds >= MIN_WINDOW_S:
                out = {key: _minus(c, then.get(key, Counts()), seconds) for key, c in counts.items()}
        if not self._snapshots or now_s - self._snapshots[-1][0] >= self.step_s:
            self._snapshots.append((now_s, dict(counts)))
        return out


def quantile(q: float, buckets: Sequence[int], bounds_ns: Sequence[int] = LATENCY_BUCKETS_NS) -> float | None:
    """The ``q`` quantile, in milliseconds, of counts per bucket (``bounds_ns``' buckets, then
    +Inf), interpolated linearly inside its bucket as Prometheus' histogram_quantile does; the
    largest finite bound when it falls in +Inf; None without any count."""
    total = sum(buckets)
    if total <= 0:
        return None
    target = q * total
    seen = 0
    for i, count in enumerate(buckets):
        if count and seen + count >= target:
            if i >= len(bounds_ns):
                return bounds_ns[-1] / 1e6
            lower = bounds_ns[i - 1] if i else 0
            return (lower + (bounds_ns[i] - lower) * (target - seen) / count) / 1e6
        seen += count
    return bounds_ns[-1] / 1e6
