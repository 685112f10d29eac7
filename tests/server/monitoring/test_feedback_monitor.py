"""Accuracy from feedback, in-process: the intervals, the joins and their bounds, replacements,
bad labels, and the change detectors' delay and false alarms on seeded streams (the table in
docs/monitoring.md, "Feedback accuracy")."""

from __future__ import annotations

import dataclasses
import math
import tracemalloc

import numpy as np
import pytest
from scipy import stats

from backends.common.errors import ConfigError, InvalidArgument, NotFound
from backends.proto import model_config_pb2 as mc
from server.monitoring.feedback import FeedbackConfig, FeedbackMonitor, feedback_config
from server.monitoring.feedback.detector import ChangeDetector
from server.monitoring.feedback.monitor import MAX_ID_CHARS
from server.monitoring.feedback.statistics import t_interval, wilson_interval

SCORES = {0: np.array([[0.9, 0.1]], np.float32), 1: np.array([[0.2, 0.8]], np.float32)}


def monitor(**changes: object) -> FeedbackMonitor:
    config = dataclasses.replace(FeedbackConfig(output="y", batched=True), **changes)  # type: ignore[arg-type]
    return FeedbackMonitor("m", 1, config)


def test_wilson_interval_is_scipys_and_holds_the_rate() -> None:
    ci = wilson_interval(30, 200, 0.95)
    ref = stats.binomtest(30, 200).proportion_ci(0.95, "wilson")
    assert [ci.estimate, ci.low, ci.high] == pytest.approx([0.15, ref.low, ref.high])
    assert 0.0 == wilson_interval(0, 10, 0.95).low < wilson_interval(0, 10, 0.95).high < 0.31
    assert math.isnan(wilson_interval(0, 0, 0.95).estimate)


def test_t_interval_matches_scipy() -> None:
    values = np.random.default_rng(1).exponential(2.0, 500)
    ci = t_interval(float(values.sum()), float((values**2).sum()), len(values), 0.9)
    low, high = stats.t.interval(0.9, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    assert [ci.low, ci.high] == pytest.approx([low, high])


def test_labels_join_by_id_and_a_later_label_replaces_the_earlier() -> None:
    m = monitor()
    m.served("a", {"y": SCORES[1]})
    m.served("b", {"y": SCORES[0]})
    assert m.label("a", 1)["errors"] == [0.0]
    assert m.label("b", 1)["errors"] == [1.0]
    assert m.interval().estimate == 0.5
    again = m.label("b", 0)  # corrected: b was right after all
    assert again["replaced"]
    assert m.replaced == 1
    assert (m.status()["error"]["rows"], m.interval().estimate) == (2, 0.0)  # not 3 rows: no double count
    assert m.detector.seen == 2  # the detector saw first labels only
    for _ in range(1000):  # re-labelling one id cannot drive the rolling error or the detector
        m.label("b", 1)
    assert (m.status()["error"]["rows"], m.interval().estimate, m.detector.seen) == (2, 0.5, 2)


def test_unknown_and_evicted_ids_are_not_found_and_counted() -> None:
    m = monitor(window=3)
    for i in range(5):
        m.served(str(i), {"y": SCORES[1]})
    with pytest.raises(NotFound, match="older than its last 3 predictions"):
        m.label("0", 1)  # evicted
    with pytest.raises(NotFound, match="never served"):
        m.label("nope", 1)
    assert (m.unmatched, m.labels, m.joined, m.evicted) == (2, 2, 0, 2)
    assert m.label("4", 1)["errors"] == [0.0]


def test_a_million_distinct_ids_stay_within_the_window() -> None:
    m = monitor(window=10_000)
    y = {"y": SCORES[1]}
    for i in range(1_000_000):
        m.served(f"{i:032x}", y)
    assert len(m._kept) == 10_000
    assert m.evicted == 990_000
    tracemalloc.start()  # then: the memory of the table, and that nothing else grows per request
    try:
        for i in range(1_000_000, 1_020_000):  # twice the window: every entry now was made under tracing
            m.served(f"{i:032x}", y)
        full = tracemalloc.get_traced_memory()[0]
        for i in range(1_020_000, 1_100_000):
            m.served(f"{i:032x}", y)
        grown = tracemalloc.get_traced_memory()[0] - full
    finally:
        tracemalloc.stop()
    assert len(m._kept) == 10_000
    assert full < 10_000 * 400, f"{full / 10_000:.0f} bytes per kept prediction"
    assert grown < 50_000, f"the table grew by {grown} bytes past its window"


def test_ids_too_long_and_predictions_too_large_are_not_kept() -> None:
    m = monitor()
    m.served("x" * (MAX_ID_CHARS + 1), {"y": SCORES[1]})
    m.served("big", {"y": np.zeros((65, 2), np.float32)})  # 65 rows: past MAX_VALUES
    assert (len(m._kept), m.not_kept) == (0, 2)


@pytest.mark.parametrize(
    ("label", "message"),
    [
        (True, "a whole number or a string"),
        (1.5, "a whole number or a string"),
        ({"a": 1}, "a whole number or a string"),
        ("c" * 2000, "at most 1024 characters"),
        ([1, 0], "one label per row"),
        ([1] * 100_000, "one label per row"),
    ],
)
def test_bad_classification_labels_are_refused(label: object, message: str) -> None:
    m = monitor()
    m.served("a", {"y": SCORES[1]})
    with pytest.raises(InvalidArgument, match=message):
        m.label("a", label)
    assert (m.invalid, m.joined) == (1, 0)


def test_batched_predictions_take_one_label_per_row() -> None:
    m = monitor()
    m.served("batch", {"y": np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4]], np.float32)})
    assert m.label("batch", [0, 1, 1])["errors"] == [0.0, 0.0, 1.0]
    assert m.label("batch", ["0", 1.0, 0])["errors"] == [1.0, 0.0, 0.0]  # "0" is a string class, not 0


def test_string_classes_and_class_outputs() -> None:
    m = monitor(batched=False)
    m.served("s", {"y": np.array([b"cat"], dtype=object)})
    m.served("n", {"y": np.array([3], np.int64)})
    assert m.label("s", "cat")["errors"] == [0.0]
    assert m.label("n", 3)["errors"] == [0.0]
    assert m.label("n", 2.0)["errors"] == [1.0]


def test_regression_mean_absolute_error_and_threshold() -> None:
    m = monitor(kind="regression")
    m.served("r1", {"y": np.array([[2.0]], np.float32)})
    m.served("r2", {"y": np.array([[1.0]], np.float32)})
    assert m.label("r1", 2.5)["errors"] == [0.5]
    assert m.label("r2", [[3.0]])["errors"] == [2.0]
    assert m.interval().estimate == 1.25
    assert m.status()["error"]["metric"] == "mean_absolute_error"
    with pytest.raises(InvalidArgument, match="finite"):
        m.label("r1", [1.0, 2.0])
    with pytest.raises(InvalidArgument, match="number"):
        m.label("r1", "high")
    missed = monitor(kind="regression", threshold=1.0)
    missed.served("r", {"y": np.array([[2.0]], np.float32)})
    assert missed.label("r", 3.5)["errors"] == [1.0]
    assert missed.status()["error"]["metric"] == "error_rate"


def test_the_rolling_window_forgets_old_labels() -> None:
    m = monitor(rolling=100)
    for i in range(300):
        m.served(str(i), {"y": SCORES[1]})
        m.label(str(i), 0 if i < 200 else 1)  # wrong for 200, then right
    assert m.interval().estimate == 0.0
    assert m.status()["error"]["rows"] == 100


def test_clipper_update_joins_rows() -> None:
    m = monitor()
    m.join_row(np.array([0.1, 0.9], np.float32), np.array([1.0]))
    m.join_row(np.array([0.1, 0.9], np.float32), np.array([1.0, 0.0]))  # one-hot: class 0
    m.join_row(np.array([0.1, 0.9], np.float32), np.array([b"x"], dtype=object))
    assert m.joined == 3
    assert m.interval().estimate == pytest.approx(2 / 3)


def config_with(**params: str) -> mc.ModelConfig:
    config = mc.ModelConfig(name="m", max_batch_size=4)
    config.output.add(name="y")
    config.output.add(name="z")
    for key, value in params.items():
        config.parameters[key].string_value = value
    return config


def test_config_keys() -> None:
    assert feedback_config(config_with()) is None
    c = feedback_config(config_with(feedback_enable="true", feedback_output="z", feedback_window="50"))
    assert c is not None
    assert (c.output, c.window, c.batched, c.detector) == ("z", 50, True, "adwin")
    for key, value in [
        ("feedback_output", "nope"),
        ("feedback_window", "0"),
        ("feedback_kind", "ranking"),
        ("feedback_detector", "cusum"),
        ("feedback_confidence", "1"),
    ]:
        with pytest.raises(ConfigError, match=f"parameters.{key}"):
            feedback_config(config_with(feedback_enable="1", **{key: value}))


# -- the change detectors: delay and false alarms on seeded Bernoulli error streams ------------


def first_rise(detector: str, before: float, after: float, seed: int, n_before: int, n_after: int) -> int | None:
    """The index (0-based) of the first label at which the alarm rose, or None."""
    rng = np.random.default_rng(seed)
    d = ChangeDetector(FeedbackConfig(output="y", batched=True, detector=detector))
    stream = np.concatenate([rng.random(n_before) < before, rng.random(n_after) < after])
    for i, miss in enumerate(stream):
        if d.update(float(miss)) is True:
            return i
    return None


@pytest.mark.parametrize(("detector", "allowed"), [("adwin", 0), ("page_hinkley", 2)])
def test_few_false_alarms_on_a_steady_error(detector: str, allowed: int) -> None:
    false = sum(first_rise(detector, 0.1, 0.1, seed, 10_000, 0) is not None for seed in range(40))
    assert false <= allowed, f"{detector}: {false} of 40 steady runs of 10,000 labels raised the alarm"


@pytest.mark.parametrize(
    ("detector", "before", "after", "within"),
    [("adwin", 0.05, 0.5, 100), ("adwin", 0.1, 0.3, 300), ("page_hinkley", 0.05, 0.5, 150)],
)
def test_a_rise_in_the_error_is_flagged_within_the_stated_delay(
    detector: str, before: float, after: float, within: int
) -> None:
    for seed in range(40):
        rise = first_rise(detector, before, after, seed, 2_000, 2_000)
        assert rise is not None, seed
        assert 2_000 <= rise < 2_000 + within, (seed, rise)


def test_the_alarm_falls_when_the_error_comes_back() -> None:
    rng = np.random.default_rng(7)
    d = ChangeDetector(FeedbackConfig(output="y", batched=True))
    changes = [d.update(float(rng.random() < p)) for p in [0.05] * 1000 + [0.5] * 1000 + [0.05] * 1000]
    assert [c for c in changes if c is not None] == [True, False]
    assert d.changes == 2
    assert not d.alarm
