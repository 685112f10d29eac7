"""Prometheus families of the applications (Clipper's per-application metrics): predictions,
default outputs by reason, stragglers, feedback, and the prediction latency histogram."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.metrics_core import HistogramMetricFamily, Metric

from schedulers.applications.application import DEFAULT_REASONS, Application
from server.metrics.exporter import cumulative_buckets, family


def application_families(apps: Callable[[], list[Application]]) -> Callable[[], Iterator[Metric]]:
    def families() -> Iterator[Metric]:
        rows = [({"application": app.name}, app) for app in apps()]
        yield family(
            "clipperd_application_predictions",
            "Predictions answered by each application (default outputs included)",
            "counter",
            ((labels, app.metrics.predictions) for labels, app in rows),
        )
        yield family(
            "clipperd_application_default_predictions",
            "Predictions answered with the default output, by reason: timeout, low_confidence, failed",
            "counter",
            (({**labels, "reason": r}, app.metrics.defaults[r]) for labels, app in rows for r in DEFAULT_REASONS),
        )
        yield family(
            "clipperd_application_stragglers",
            "Selected models that had not answered by the application's deadline (ignored)",
            "counter",
            ((labels, app.metrics.stragglers) for labels, app in rows),
        )
        yield family(
            "clipperd_application_feedback",
            "Feedback (true labels) received by each application",
            "counter",
            ((labels, app.metrics.feedback) for labels, app in rows),
        )
        yield family(
            "clipperd_application_member_comparisons",
            "Predictions with two or more member answers, whose classes are compared",
            "counter",
            ((labels, app.metrics.compared) for labels, app in rows),
        )
        yield family(
            "clipperd_application_member_disagreements",
            "Compared predictions whose members answered different classes (drift needs no label to show here)",
            "counter",
            ((labels, app.metrics.disagreed) for labels, app in rows),
        )
        histogram = HistogramMetricFamily(
            "clipperd_application_prediction_duration_seconds",
            "Duration of application predictions, fan-out to answer",
            labels=("application",),
        )
        for _, app in rows:
            buckets = cumulative_buckets(app.metrics.latency_buckets)
            histogram.add_metric([app.name], buckets, app.metrics.latency_ns / 1e9)
        yield histogram

    return families
