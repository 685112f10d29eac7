"""Prometheus families of accuracy from feedback (server/monitoring/feedback), per model version
with feedback on: labels, joins, unmatched labels, the rolling error with its confidence
interval, and the change alarm. The names are shared with the dashboard and the alert rules."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

from prometheus_client.metrics_core import Metric

from server.core.model_version import ModelVersion
from server.monitoring.feedback import FeedbackMonitor
from server.monitoring.feedback.statistics import Interval

_SCALARS: tuple[tuple[str, str, str, Callable[[FeedbackMonitor, Interval], float]], ...] = (
    ("clipperd_feedback_labels_total", "Labels received by feedback", "counter", lambda f, _: f.labels),
    (
        "clipperd_feedback_joined_total",
        "Labels joined to a prediction served (replacements included)",
        "counter",
        lambda f, _: f.joined,
    ),
    (
        "clipperd_feedback_unmatched_total",
        "Labels for an id with no prediction kept (never served, or past the window)",
        "counter",
        lambda f, _: f.unmatched,
    ),
    (
        "clipperd_feedback_error_rate",
        "Rolling error over the last feedback_rolling labelled predictions (error rate, or mean absolute error)",
        "gauge",
        lambda _, ci: ci.estimate,
    ),
    (
        "clipperd_feedback_error_rate_low",
        "Lower bound of the rolling error's confidence interval (feedback_confidence)",
        "gauge",
        lambda _, ci: ci.low,
    ),
    (
        "clipperd_feedback_error_rate_high",
        "Upper bound of the rolling error's confidence interval (feedback_confidence)",
        "gauge",
        lambda _, ci: ci.high,
    ),
    (
        "clipperd_feedback_change_alarm",
        "1 while the change detector says the error went up, else 0",
        "gauge",
        lambda f, _: float(f.detector.alarm),
    ),
)


def feedback_families(models: list[ModelVersion]) -> Iterator[Metric]:
    """One sample per family for each loaded version with feedback on; a gauge with no value yet
    (no label) is left out rather than exported as NaN."""
    rows = [
        ({"model": m.name, "version": str(m.version)}, m.feedback, m.feedback.interval())
        for m in models
        if m.feedback is not None
    ]
    for name, help, typ, value in _SCALARS:
        metric = Metric(name, help, typ)
        for labels, monitor, ci in rows:
            sample = float(value(monitor, ci))
            if math.isfinite(sample):
                metric.add_sample(name, labels, sample)
        yield metric
