"""The statistics of feedback, pure functions over numbers: the confidence interval of a rolling
error rate (Wilson's, for classification misses) or of a mean absolute error (Student's t, for
regression), and the per-row errors of one prediction against its label."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Interval:
    estimate: float
    low: float
    high: float


def wilson_interval(errors: int, trials: int, confidence: float) -> Interval:
    """The error rate ``errors / trials`` with Wilson's score interval (scipy's binomtest): it
    stays within [0, 1] and is sound for small counts and rates near 0 or 1."""
    if trials <= 0:
        return Interval(math.nan, math.nan, math.nan)
    from scipy import stats  # here: a server without feedback models never imports scipy.stats

    ci = stats.binomtest(errors, trials).proportion_ci(confidence_level=confidence, method="wilson")
    return Interval(errors / trials, float(ci.low), float(ci.high))


def t_interval(total: float, squares: float, n: int, confidence: float) -> Interval:
    """The mean of ``n`` values (their sum and sum of squares) with Student's t interval."""
    if n <= 0:
        return Interval(math.nan, math.nan, math.nan)
    mean = total / n
    if n == 1:
        return Interval(mean, -math.inf, math.inf)
    from scipy import stats

    variance = max(squares - n * mean * mean, 0.0) / (n - 1)  # rounding can make it a hair negative
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * math.sqrt(variance / n)
    return Interval(mean, mean - half, mean + half)


def classes_of(rows: np.ndarray) -> tuple[int | str, ...]:
    """The class each row of a classifier's output names: its argmax when it holds scores, its
    one value (its first) when it holds a class, a number or a string. Vectorized: this runs on
    the request path, a microsecond for one row."""
    flat = rows.reshape(len(rows), -1)
    if flat.shape[1] == 1 or flat.dtype == object or flat.dtype.kind in "SU":
        return tuple(label_class(v) for v in flat[:, 0].tolist())
    return tuple(flat.argmax(axis=1).tolist())


def label_class(value: object) -> int | str:
    """A label as a class: whole numbers as int, bytes as text (a float class like 2.0 is 2)."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int | str):
        return value
    return str(value)


def misses(predicted: tuple[int | str, ...], labels: tuple[int | str, ...]) -> tuple[float, ...]:
    """1.0 per row whose predicted class is not its label, else 0.0."""
    return tuple(0.0 if p == t else 1.0 for p, t in zip(predicted, labels, strict=True))


def absolute_errors(predicted: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, ...]:
    """Per row, the mean absolute error over its values; with ``threshold`` > 0, 1.0 when that
    error is above it (a miss) and 0.0 otherwise."""
    errors = np.abs(predicted - labels).mean(axis=1)
    if threshold > 0:
        return tuple(float(e > threshold) for e in errors)
    return tuple(float(e) for e in errors)
