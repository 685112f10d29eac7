"""The drift tests, as pure functions of a reference sample and a current one (rows first):
Kolmogorov-Smirnov per numeric column, chi-squared on category counts, the population
stability index, and MMD on a random projection for wide tensors. scipy does the statistics;
numpy only what scipy has no function for (PSI, the MMD kernel). The tests call these
in-process; the server calls them off the request path."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from scipy import stats

PSI_BINS = 10  # deciles of the reference, the usual PSI binning
PSI_FLOOR = 1e-4  # a share never taken as 0: an empty bin would make PSI infinite
MMD_POINTS = 300  # rows of each sample the kernel is built on (the cost is quadratic)
MMD_PERMUTATIONS = 200
OTHER = "(other)"  # the category of values outside the reference's most frequent ones


def ks(reference: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-sample Kolmogorov-Smirnov per column: (statistics, p-values)."""
    result = stats.ks_2samp(reference, current, axis=0, method="asymp")
    return np.atleast_1d(result.statistic), np.atleast_1d(result.pvalue)


def adjust(p_values: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values: an alarm at ``adjusted < alpha`` keeps the expected
    share of false alarms among a check's alarms at ``alpha``."""
    if not len(p_values):
        return np.zeros(0)
    return np.asarray(stats.false_discovery_control(np.asarray(p_values, dtype=np.float64)))


def psi_edges(reference: np.ndarray, bins: int = PSI_BINS) -> list[np.ndarray]:
    """Each column's PSI bin edges: the reference's quantiles (ties merged)."""
    cuts = np.linspace(0, 1, bins + 1)[1:-1]
    return [np.unique(np.quantile(reference[:, j], cuts)) for j in range(reference.shape[1])]


def histograms(edges: list[np.ndarray], values: np.ndarray) -> list[np.ndarray]:
    """Each column's counts in its bins."""
    return [np.bincount(np.searchsorted(e, values[:, j], "right"), minlength=len(e) + 1) for j, e in enumerate(edges)]


def psi(reference: np.ndarray, current: np.ndarray, bins: int = PSI_BINS) -> np.ndarray:
    """Population stability index per column, on the reference's quantile bins."""
    edges = psi_edges(reference, bins)
    expected, actual = histograms(edges, reference), histograms(edges, current)
    return np.array([psi_of_counts(e, a) for e, a in zip(expected, actual, strict=True)])


def psi_of_counts(expected: np.ndarray, actual: np.ndarray) -> float:
    """PSI of two histograms over the same bins: sum((a - e) * ln(a / e)) of their shares."""
    e = np.maximum(expected / max(expected.sum(), 1), PSI_FLOOR)
    a = np.maximum(actual / max(actual.sum(), 1), PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def categories(reference: Sequence[object], most: int) -> dict[object, int]:
    """The reference's ``most - 1`` most frequent values, each with its column of the count
    table; every other value (one unseen in the reference included) counts in the last, OTHER."""
    common = [value for value, _ in Counter(reference).most_common(most - 1)]
    return {value: i for i, value in enumerate(common)}


def counts(values: Sequence[object], index: dict[object, int]) -> np.ndarray:
    """Counts of ``values`` in the columns of ``index``, then OTHER."""
    row = np.zeros(len(index) + 1, dtype=np.int64)
    other = len(index)
    for value, count in Counter(values).items():
        row[index.get(value, other)] += count
    return row


def count_table(reference: Sequence[object], current: Sequence[object], index: dict[object, int]) -> np.ndarray:
    """2 x (len(index) + 1) counts: the reference's row, then the current one's."""
    return np.stack([counts(reference, index), counts(current, index)])


def chi2(table: np.ndarray) -> tuple[float, float]:
    """Chi-squared test of homogeneity of the two rows of ``table`` (reference, current):
    (statistic, p-value). Columns empty in both rows are left out; one column left: no test."""
    kept = table[:, table.sum(axis=0) > 0]
    if kept.shape[1] < 2 or (kept.sum(axis=1) == 0).any():
        return 0.0, 1.0
    result = stats.chi2_contingency(kept, correction=False)
    return float(result.statistic), float(result.pvalue)


def projection(width: int, dims: int, seed: int) -> np.ndarray:
    """A seeded Gaussian random projection from ``width`` to ``dims`` columns (Johnson-
    Lindenstrauss: distances, hence the kernel, are about kept)."""
    matrix: np.ndarray = np.random.default_rng(seed).standard_normal((width, dims)) / np.sqrt(dims)
    return matrix


def mmd(
    reference: np.ndarray,
    current: np.ndarray,
    rng: np.random.Generator,
    permutations: int = MMD_PERMUTATIONS,
    points: int = MMD_POINTS,
) -> tuple[float, float]:
    """Maximum mean discrepancy (squared, biased) with a Gaussian kernel of median bandwidth,
    between up to ``points`` rows of each sample: (statistic, p-value). The p-value is the tail
    of a gamma distribution fitted by moments to the statistic under ``permutations`` random
    relabellings (all in one matrix product): a plain permutation p-value could not go below
    1 / (permutations + 1), far above the alphas a monitor uses."""
    x = reference[rng.choice(len(reference), min(points, len(reference)), replace=False)]
    y = current[rng.choice(len(current), min(points, len(current)), replace=False)]
    z = (np.concatenate([x, y]) / (x.std(axis=0) + 1e-12)).astype(np.float32)
    squared = np.sum(z * z, axis=1)
    distances = np.maximum(squared[:, None] + squared[None, :] - 2 * z @ z.T, 0.0)
    some = distances[:: max(len(z) // 100, 1)]  # the median of a sample of rows: as good, far cheaper
    bandwidth = float(np.median(some[some > 0])) if (some > 0).any() else 1.0
    kernel = np.exp(-distances / bandwidth)
    n, m = len(x), len(y)
    signs = np.concatenate([np.full(n, 1 / n), np.full(m, -1 / m)]).astype(np.float32)
    observed = float(signs @ kernel @ signs)
    shuffled = signs[rng.permuted(np.tile(np.arange(n + m), (permutations, 1)), axis=1)]
    null = np.einsum("ij,ij->i", shuffled @ kernel, shuffled).astype(np.float64)
    mean, var = float(null.mean()), float(null.var())
    if mean <= 0 or var <= 0:
        return observed, 1.0
    return observed, float(stats.gamma.sf(observed, mean * mean / var, scale=var / mean))


def subsample(rows: np.ndarray, rng: np.random.Generator, points: int = MMD_POINTS) -> np.ndarray:
    return rows[rng.choice(len(rows), min(points, len(rows)), replace=False)]
