"""The drift scenarios of issue 19's Prove-it, seeded: a reference, then a stream whose first
``window`` rows are undrifted and the rest drifted (or not), fed to a DriftDetector in steps of
its ``check_rows``, with a check whenever one is due, as the server's monitor does. Run as a
module it prints the table of docs/monitoring.md."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from server.monitoring.drift.config import DriftConfig, Kind, Monitored
from server.monitoring.drift.detector import DriftDetector, as_rows

FEATURES = 20
SHIFTED = 7  # the feature whose mean moves
CATEGORIES = np.array([b"red", b"green", b"blue", b"cyan", b"gray"], dtype=object)
CATEGORY_P = np.array([0.4, 0.25, 0.15, 0.1, 0.1])
CLASSES = 4
WIDE = 256
STRONG = 8  # the planes the wide input turns in
MEAN_NORM = 4.0
ROTATION_SPAN = 5000  # samples over which the rotation reaches 90 degrees

X = Monitored("x", False, Kind.NUMERIC, FEATURES)
COLOUR = Monitored("colour", False, Kind.CATEGORICAL, 1)
LABEL = Monitored("scores", True, Kind.CLASS, CLASSES)
PIXELS = Monitored("pixels", False, Kind.WIDE, WIDE)

# a batch of n rows starting at stream position `start` (negative: before the drift starts)
Source = Callable[[np.random.Generator, int, int], np.ndarray]


def numeric(shift: float) -> Source:
    def rows(rng: np.random.Generator, start: int, n: int) -> np.ndarray:
        x = rng.standard_normal((n, FEATURES))
        if start >= 0:
            x[:, SHIFTED] += shift
        return x

    return rows


def categorical(new_share: float) -> Source:
    def rows(rng: np.random.Generator, start: int, n: int) -> np.ndarray:
        values = rng.choice(CATEGORIES, size=(n, 1), p=CATEGORY_P)
        if start >= 0:
            values[rng.random(n) < new_share, 0] = b"magenta"
        return values

    return rows


def class_scores(priors: tuple[float, ...]) -> Source:
    """Softmax scores of a classifier whose true classes follow ``priors`` after the start."""

    def rows(rng: np.random.Generator, start: int, n: int) -> np.ndarray:
        p = np.array(priors) if start >= 0 else np.full(CLASSES, 1 / CLASSES)
        labels = rng.choice(CLASSES, size=n, p=p)
        logits = rng.standard_normal((n, CLASSES)) + 2.0 * np.eye(CLASSES)[labels]
        e = np.exp(logits)
        scores: np.ndarray = e / e.sum(axis=1, keepdims=True)
        return scores

    return rows


def rotation(span: int) -> Source:
    """A 256-wide input around a mean of norm MEAN_NORM (embeddings are seldom centred) that
    turns, in STRONG planes at once, by an angle growing from 0 at the start to 90 degrees
    ``span`` samples later (0: never)."""
    mean = np.zeros(WIDE)
    mean[:STRONG] = np.random.default_rng(123).standard_normal(STRONG)
    mean *= MEAN_NORM / np.linalg.norm(mean)

    def rows(rng: np.random.Generator, start: int, n: int) -> np.ndarray:
        x = rng.standard_normal((n, WIDE)) + mean
        if span == 0 or start < 0:
            return x
        angle = (np.pi / 2) * np.minimum((start + np.arange(n)) / span, 1.0)
        c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
        a, b = x[:, :STRONG].copy(), x[:, STRONG : 2 * STRONG].copy()
        x[:, :STRONG], x[:, STRONG : 2 * STRONG] = c * a - s * b, s * a + c * b
        return x

    return rows


@dataclass(frozen=True)
class Scenario:
    name: str
    sources: dict[Monitored, Source]
    within: int  # the Prove-it's bound on the detection delay, in samples


SCENARIOS = (
    Scenario("0.5 sd mean shift in 1 of 20 features", {X: numeric(0.5)}, 2000),
    Scenario("new category at 10 %", {COLOUR: categorical(0.10)}, 2000),
    Scenario("label shift in class outputs (25 % -> 40 %)", {LABEL: class_scores((0.4, 0.2, 0.2, 0.2))}, 2000),
    Scenario("slow rotation of a 256-wide input", {PIXELS: rotation(ROTATION_SPAN)}, 5000),
)
UNDRIFTED = {X: numeric(0.0), COLOUR: categorical(0.0), LABEL: class_scores((0.25,) * 4), PIXELS: rotation(0)}


def stream(sources: dict[Monitored, Source], seed: int, samples: int, **tuning: float) -> Iterator[tuple[int, bool]]:
    """(position after the drift started, alarm) at each check: a detector whose reference
    (as from a file) is ``reference_rows`` undrifted rows is fed a full window of undrifted
    samples, then ``samples`` from the sources as they are after the start."""
    config = DriftConfig(tensors=tuple(sources), seed=seed, **tuning)  # type: ignore[arg-type]
    rng = np.random.default_rng(seed)
    d = DriftDetector(config, {t.name: source(rng, -1, config.reference_rows) for t, source in sources.items()})
    step = config.check_rows
    for start in range(-config.window, samples, step):
        d.add({t.name: as_rows(t, source(rng, start, step)) for t, source in sources.items()})
        if d.due:
            yield start + step, any(r.alarm for r in d.check())


def delay(scenario: Scenario, seed: int, **tuning: float) -> int | None:
    """Samples after the drift started until the first alarm (None: none within 2x the bound);
    an alarm before the drift counts as a false alarm: -1."""
    for position, alarm in stream(scenario.sources, seed, 2 * scenario.within, **tuning):
        if alarm:
            return position if position > 0 else -1
    return None


def false_alarm(seed: int, samples: int = 10_000, **tuning: float) -> bool:
    """Whether any check alarms over ``samples`` undrifted samples (every kind of test at once)."""
    return any(alarm for position, alarm in stream(UNDRIFTED, seed, samples, **tuning) if position > 0)


def main() -> None:
    print("| drift | bound | delay (median, max over 10 seeds) |")
    print("|---|---|---|")
    for scenario in SCENARIOS:
        delays = [delay(scenario, seed) for seed in range(10)]
        found = sorted(d for d in delays if d is not None and d > 0)
        shown = f"{int(np.median(found))}, {max(found)}" if len(found) == len(delays) else f"missed: {delays}"
        print(f"| {scenario.name} | {scenario.within} | {shown} |")
    started = time.perf_counter()
    alarms = sum(false_alarm(seed) for seed in range(200))
    print(f"\nfalse alarms: {alarms} of 200 runs of 10,000 undrifted samples ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
