"""The dashboard's figures, in process: rates and percentiles over the window (window.py), the
monitors' summaries (monitors.py), the feed's bounds (feed.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from schedulers.stats import LATENCY_BUCKETS_NS, latency_bucket
from server.core.repository import IndexEntry
from server.dashboard.feed import Dashboard, Sources
from server.dashboard.monitors import drift_summary, feedback_summary
from server.dashboard.window import Counts, History, quantile
from server.gpu import GpuReading


def counts(requests: int, failures: int = 0, durations_ns: tuple[int, ...] = ()) -> Counts:
    buckets = [0] * (len(LATENCY_BUCKETS_NS) + 1)
    for d in durations_ns:
        buckets[latency_bucket(d)] += 1
    return Counts(requests=requests, failures=failures, latency_buckets=tuple(buckets), executions=requests)


def test_the_first_look_has_no_rate_and_the_next_one_does() -> None:
    history = History(span_s=10, step_s=1)
    assert history.deltas(100.0, {"m": counts(50)}) == {}
    delta = history.deltas(102.0, {"m": counts(70, 4)})["m"]
    assert delta.seconds == 2.0
    assert delta.rate() == 10.0
    assert delta.failure_rate() == 2.0


def test_rates_are_measured_over_the_span_not_since_the_start() -> None:
    history = History(span_s=10, step_s=1)
    for second in range(30):  # 5 requests a second for 30 s
        history.deltas(float(second), {"m": counts(5 * second)})
    delta = history.deltas(30.0, {"m": counts(150 + 100)})  # then a burst of 100 in the last second
    assert 10.0 <= delta["m"].seconds <= 11.0
    assert delta["m"].rate() == pytest.approx((5 * delta["m"].seconds + 100) / delta["m"].seconds)


def test_the_history_is_bounded_however_often_it_is_asked() -> None:
    history = History(span_s=10, step_s=1)
    for i in range(10_000):  # many pages polling: at most one snapshot a step
        history.deltas(i * 0.01, {"m": counts(i)})
    assert len(history) == 11  # span / step + 1: the bound, reached


def test_a_look_after_a_long_pause_starts_a_new_window() -> None:
    history = History(span_s=10, step_s=1)
    history.deltas(0.0, {"m": counts(0)})
    assert history.deltas(3600.0, {"m": counts(1000)}) == {}  # not "1000 over an hour" as "now"


def test_a_reloaded_version_counts_from_zero() -> None:
    history = History()
    history.deltas(0.0, {"m": counts(500)})
    assert history.deltas(2.0, {"m": counts(8)})["m"].requests == 8


def test_percentiles_come_from_the_window_s_histogram() -> None:
    history = History()
    history.deltas(0.0, {"m": counts(1000, durations_ns=(20_000_000,) * 1000)})  # an old, slow past
    now = counts(2000, durations_ns=(20_000_000,) * 1000 + (700_000,) * 990 + (40_000_000,) * 10)
    delta = history.deltas(2.0, {"m": now})["m"]
    p50, p99 = quantile(0.5, delta.latency_buckets), quantile(0.99, delta.latency_buckets)
    assert p50 is not None
    assert 0.5 < p50 <= 1.0
    assert p99 is not None
    assert 0.5 < p99 <= 1.0
    assert quantile(0.995, delta.latency_buckets) == pytest.approx(25 + 0.5 * 25, rel=0.05)  # (25, 50] ms


def test_quantile_interpolates_as_prometheus_does() -> None:
    bounds = (10, 20, 40)
    assert quantile(0.5, [0, 10, 0, 0], bounds) == pytest.approx(15 / 1e6)
    assert quantile(0.25, [10, 10, 0, 0], bounds) == pytest.approx(5 / 1e6)
    assert quantile(0.99, [0, 0, 0, 5], bounds) == pytest.approx(40 / 1e6)  # in +Inf: the last bound
    assert quantile(0.5, [0, 0, 0, 0], bounds) is None


class Monitor:
    """A stand-in for a monitor of server/monitoring (built by other engineers in parallel): only
    its ``status()`` JSON, which is all the dashboard reads."""

    def __init__(self, status: Any) -> None:
        self._status = status

    def status(self) -> Any:
        if isinstance(self._status, Exception):
            raise self._status
        return self._status


class Version:
    def __init__(self, drift: Monitor | None = None, feedback: Monitor | None = None) -> None:
        self.name = "m"
        self.drift = drift
        self.feedback = feedback


def test_monitors_that_are_off_show_as_off() -> None:
    assert drift_summary(Version()) is None
    assert feedback_summary(Version()) is None
    assert drift_summary(object()) is None  # a version from before monitoring existed


def test_a_drift_alarm_names_the_features_and_tests_that_fire() -> None:
    """The shape of the drift monitor's status (branch 'drift' of issue 19)."""
    status = {
        "alarm": True,
        "samples": 5000,
        "tests": [
            {"feature": "INPUT0[3]", "test": "ks", "statistic": 0.2, "p_value": 1e-8, "alarm": True},
            {"feature": "INPUT0[4]", "test": "ks", "statistic": 0.01, "p_value": 0.6, "alarm": False},
            {"feature": "OUTPUT0", "test": "psi", "statistic": 0.3, "p_value": None, "alarm": True},
        ],
    }
    assert drift_summary(Version(drift=Monitor(status))) == {"alarm": True, "on": ["INPUT0[3] (ks)", "OUTPUT0 (psi)"]}


def test_a_drift_alarm_is_found_and_named_wherever_the_status_puts_it() -> None:
    status = {
        "alarm": True,
        "features": {"x0": {"alarm": False, "p_value": 0.4}, "x7": {"alarm": True, "p_value": 1e-9}},
        "outputs": [{"name": "scores", "alarm": 1}],
    }
    assert drift_summary(Version(drift=Monitor(status))) == {"alarm": True, "on": ["scores", "x7"]}
    quiet = {"alarm": False, "features": {"x0": {"alarm": False}}}
    assert drift_summary(Version(drift=Monitor(quiet))) == {"alarm": False, "on": []}


def test_a_monitor_that_fails_does_not_break_the_feed() -> None:
    assert drift_summary(Version(drift=Monitor(RuntimeError("boom")))) == {"alarm": False, "on": []}
    summary = feedback_summary(Version(feedback=Monitor(RuntimeError("boom"))))
    assert summary is not None
    assert summary["error"] is None


def feedback_status(alarm: bool, value: float | None = 0.12) -> dict[str, Any]:
    """The shape of the feedback monitor's status (branch 'feedback' of issue 19)."""
    return {
        "kind": "classification",
        "labels": 420,
        "error": {"metric": "error_rate", "rows": 400, "value": value, "low": 0.09, "high": 0.15},
        "detector": {"name": "adwin", "alarm": alarm, "changes": 1},
    }


def test_the_feedback_summary_reads_the_error_and_its_change_alarm() -> None:
    summary = feedback_summary(Version(feedback=Monitor(feedback_status(alarm=True))))
    assert summary == {"alarm": True, "metric": "error_rate", "error": 0.12, "low": 0.09, "high": 0.15, "labels": 420}
    quiet = feedback_summary(Version(feedback=Monitor(feedback_status(alarm=False, value=None))))
    assert quiet is not None
    assert quiet["alarm"] is False
    assert quiet["error"] is None


def test_a_deep_or_cyclic_status_is_read_within_bounds() -> None:
    deep: dict[str, Any] = {"alarm": False}
    node = deep
    for _ in range(1000):
        node["next"] = {"alarm": True}
        node = node["next"]
    summary = drift_summary(Version(drift=Monitor(deep)))  # no recursion error: read to MAX_DEPTH only
    assert summary is not None
    assert summary["alarm"] is True


def test_the_feed_lists_at_most_its_bound_of_model_versions() -> None:
    entries = [IndexEntry(f"model{i}", "1", "UNAVAILABLE", "bad config") for i in range(7)]
    sources = Sources(lambda: entries, list, list, list, {"name": "clipperd", "version": "0"})
    feed = json.loads(Dashboard(sources, max_models=3).json(0.0))
    assert [m["name"] for m in feed["models"]] == ["model0", "model1", "model2"]
    assert feed["omitted"] == {"models": 4, "applications": 0}
    assert feed["totals"] == {"models": 3, "ready": 0, "requests": 0, "rate": None, "alarms": 0}


def test_a_long_model_name_is_cut_and_the_feed_is_reused_briefly() -> None:
    entries = [IndexEntry("n" * 5000, "1", "READY", "")]
    feed = Dashboard(Sources(lambda: entries, list, list, list, {}))
    first = feed.json(10.0)
    assert len(json.loads(first)["models"][0]["name"]) == 200
    entries.append(IndexEntry("late", "1", "READY", ""))
    assert feed.json(10.1) is first  # many pages open: one build per half second
    assert b"late" in feed.json(11.0)


def test_the_gpus_are_shown_with_their_readings() -> None:
    reading = GpuReading("GPU-1234", 0.5, 80 * 2**30, 2**30, 250.0, 700.0, 10)
    feed = json.loads(Dashboard(Sources(list, list, list, lambda: [reading], {})).json(0.0))
    assert feed["gpus"] == [
        {
            "uuid": "GPU-1234",
            "utilization": 0.5,
            "memory_used_bytes": 2**30,
            "memory_total_bytes": 80 * 2**30,
            "power_w": 250.0,
            "power_limit_w": 700.0,
        }
    ]
