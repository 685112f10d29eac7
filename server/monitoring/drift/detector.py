"""One version's drift detector: the reference rows and a sliding window of the latest sampled
rows of each monitored tensor, and ``check``, which runs every test on them. Plain numpy, no
clock and no event loop: the monitor runs it on a thread, the tests call it directly."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from server.monitoring.drift import statistics
from server.monitoring.drift.config import DriftConfig, Kind, Monitored


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One test of one feature at one check. ``p_value`` is Benjamini-Hochberg adjusted over
    every p-value of the check; None for PSI, which has none (it alarms over a threshold)."""

    feature: str
    test: str  # ks, psi, chi2, mmd
    statistic: float
    p_value: float | None
    alarm: bool

    def to_json(self) -> dict[str, object]:
        return {
            "feature": self.feature,
            "test": self.test,
            "statistic": _finite(self.statistic),
            "p_value": None if self.p_value is None else _finite(self.p_value),
            "alarm": self.alarm,
        }


def _finite(value: float) -> float | None:
    """JSON has no NaN or infinity: null stands for them."""
    return value if math.isfinite(value) else None


class Rows:
    """A ring of the latest ``capacity`` rows of one tensor (a preallocated array: its memory
    is fixed at load), or, as a reference, the first ``capacity`` rows and then no more."""

    def __init__(self, capacity: int, width: int, dtype: type | np.dtype, frozen: bool = False) -> None:
        self.data: np.ndarray = (
            np.empty((capacity, width), dtype=dtype) if dtype is object else np.zeros((capacity, width), dtype)
        )
        self.count = 0  # rows written so far
        self.frozen = frozen

    @property
    def full(self) -> bool:
        return self.count >= len(self.data)

    def add(self, rows: np.ndarray) -> np.ndarray:
        """Takes ``rows``; returns those it had no room for (a frozen reference's surplus)."""
        capacity = len(self.data)
        if self.frozen:
            room = max(capacity - self.count, 0)
            self.data[self.count : self.count + min(room, len(rows))] = rows[:room]
            self.count += min(room, len(rows))
            return rows[room:]
        rows = rows[-capacity:]
        start = self.count % capacity
        first = min(len(rows), capacity - start)
        self.data[start : start + first] = rows[:first]
        self.data[: len(rows) - first] = rows[first:]
        self.count += len(rows)
        return rows[:0]

    def values(self) -> np.ndarray:
        return self.data[: min(self.count, len(self.data))]


def _dtype(tensor: Monitored) -> type | np.dtype:
    if tensor.kind is Kind.CATEGORICAL:
        return object
    return np.dtype(np.int64) if tensor.kind is Kind.CLASS else np.dtype(np.float64)


def as_rows(tensor: Monitored, array: np.ndarray, batched: bool = True) -> np.ndarray:
    """A request's tensor as (rows, columns) in the form the detector keeps: floats with the
    non-finite values clipped (numeric), a class per row, or the values themselves (categorical)."""
    rows = array.reshape(len(array) if batched else 1, -1)
    if tensor.kind is Kind.CLASS:
        classes = rows.argmax(axis=1) if rows.shape[1] > 1 else rows[:, 0]
        return classes.astype(np.int64).reshape(-1, 1)
    if tensor.kind is Kind.CATEGORICAL:
        return rows.astype(object) if rows.dtype.kind != "U" else np.char.encode(rows, "utf-8").astype(object)
    return np.nan_to_num(rows.astype(np.float64, copy=False), nan=0.0)


class DriftDetector:
    """The reference and the window of each monitored tensor, and the tests between them."""

    def __init__(self, config: DriftConfig, reference: Mapping[str, np.ndarray] | None = None) -> None:
        self.config = config
        self.rows_seen = 0
        self.rows_at_check = 0
        self._rng = np.random.default_rng(config.seed)
        self.reference: dict[str, Rows] = {}
        self.window: dict[str, Rows] = {}
        self._projections: dict[str, np.ndarray] = {}
        for i, t in enumerate(config.tensors):
            given = None if reference is None else as_rows(t, reference[t.name])
            size = len(given) if given is not None else config.reference_rows
            self.reference[t.name] = Rows(size, 1 if t.kind is Kind.CLASS else t.width, _dtype(t), frozen=True)
            if given is not None:
                self.reference[t.name].add(given)
            self.window[t.name] = Rows(config.window, 1 if t.kind is Kind.CLASS else t.width, _dtype(t))
            if t.kind is Kind.WIDE:
                self._projections[t.name] = statistics.projection(t.width, config.projection_dims, config.seed + i)
        self._categories: dict[str, list[tuple[dict[object, int], np.ndarray]]] = {}
        self._edges: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}

    @property
    def reference_ready(self) -> bool:
        return all(r.full for r in self.reference.values())

    @property
    def window_rows(self) -> int:
        return min((min(w.count, len(w.data)) for w in self.window.values()), default=0)

    @property
    def due(self) -> bool:
        """A check has new rows enough to run: the reference complete, ``check_rows`` rows
        since the last check and at least a minimum of rows in the window."""
        return (
            self.reference_ready
            and self.rows_seen - self.rows_at_check >= self.config.check_rows
            and self.window_rows >= min(self.config.check_rows, self.config.window)
        )

    def add(self, tensors: Mapping[str, np.ndarray]) -> None:
        """One request's (or many requests') rows of every monitored tensor, as ``as_rows`` gives
        them; the first rows fill a reference that was not given, the rest the window."""
        count = 0
        for name, rows in tensors.items():
            rest = self.reference[name].add(rows)
            self.window[name].add(rest)
            count = len(rest)
        self.rows_seen += count

    def check(self) -> list[CheckResult]:
        """Every test between the reference and the window; p-values adjusted together."""
        self.rows_at_check = self.rows_seen
        pending: list[tuple[str, str, float, float | None]] = []
        for t in self.config.tensors:
            ref, cur = self.reference[t.name].values(), self.window[t.name].values()
            pending += self._tests(t, ref, cur)
        tested = [i for i, row in enumerate(pending) if row[3] is not None]
        adjusted = statistics.adjust([pending[i][3] for i in tested])  # type: ignore[misc]
        p_of = dict(zip(tested, adjusted.tolist(), strict=True))
        results = []
        for i, (feature, test, statistic, _) in enumerate(pending):
            p = p_of.get(i)
            alarm = p < self.config.alpha if p is not None else statistic > self.config.psi_threshold
            results.append(CheckResult(feature, test, float(statistic), p, bool(alarm)))
        return results

    def _tests(self, t: Monitored, ref: np.ndarray, cur: np.ndarray) -> list[tuple[str, str, float, float | None]]:
        if t.kind is Kind.WIDE:
            projection = self._projections[t.name]  # of the rows MMD takes only: they are few
            rng = self._rng
            sample = statistics.subsample
            statistic, p = statistics.mmd(sample(ref, rng) @ projection, sample(cur, rng) @ projection, rng)
            return [(t.name, "mmd", statistic, p)]
        names = [t.name] if ref.shape[1] == 1 else [f"{t.name}[{j}]" for j in range(ref.shape[1])]
        if t.kind is Kind.NUMERIC:
            ks, ks_p = statistics.ks(ref, cur)
            edges, expected = self._bins(t.name, ref)
            psi = [
                statistics.psi_of_counts(e, a) for e, a in zip(expected, statistics.histograms(edges, cur), strict=True)
            ]
            tests: list[tuple[str, str, float, float | None]] = [
                (n, "ks", s, q) for n, s, q in zip(names, ks.tolist(), ks_p.tolist(), strict=True)
            ]
            return tests + [(n, "psi", v, None) for n, v in zip(names, psi, strict=True)]
        out: list[tuple[str, str, float, float | None]] = []
        for j, (name, (index, seen)) in enumerate(zip(names, self._categories_of(t.name, ref), strict=True)):
            table = np.stack([seen, statistics.counts(cur[:, j].tolist(), index)])
            statistic, p = statistics.chi2(table)
            out.append((name, "chi2", statistic, p))
            if t.kind is Kind.CLASS:
                out.append((name, "psi", statistics.psi_of_counts(table[0], table[1]), None))
        return out

    # the reference is fixed once complete: what the tests take of it is worked out once

    def _bins(self, name: str, ref: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        if name not in self._edges:
            edges = statistics.psi_edges(ref)
            self._edges[name] = edges, statistics.histograms(edges, ref)
        return self._edges[name]

    def _categories_of(self, name: str, ref: np.ndarray) -> list[tuple[dict[object, int], np.ndarray]]:
        if name not in self._categories:
            columns = []
            for j in range(ref.shape[1]):
                values = ref[:, j].tolist()
                index = statistics.categories(values, self.config.max_categories)
                columns.append((index, statistics.counts(values, index)))
            self._categories[name] = columns
        return self._categories[name]
