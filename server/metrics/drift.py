"""The drift monitors' Prometheus families (server/monitoring/drift), per model version: each
test's statistic, adjusted p-value and alarm at the latest check (labels feature and test), and
the requests sampled and dropped."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import Metric

from server.core.model_version import ModelVersion

if TYPE_CHECKING:
    from server.monitoring.drift.monitor import DriftMonitor


def _family(name: str, help: str, typ: str, rows: list[tuple[dict[str, str], float]]) -> Metric:
    metric = Metric(name, help, typ)
    for labels, value in rows:
        metric.add_sample(name, labels, value)
    return metric


def drift_families(models: list[ModelVersion]) -> Iterator[Metric]:
    monitors: list[tuple[dict[str, str], DriftMonitor]] = [
        ({"model": m.name, "version": str(m.version)}, m.drift) for m in models if m.drift is not None
    ]
    if not monitors:
        return
    results = [({**labels, "feature": r.feature, "test": r.test}, r) for labels, d in monitors for r in d.results]
    yield _family(
        "clipperd_drift_statistic",
        "The drift test's statistic at the latest check (KS D, chi-squared, PSI, MMD squared)",
        "gauge",
        [(labels, r.statistic) for labels, r in results],
    )
    yield _family(
        "clipperd_drift_p_value",
        "The drift test's p-value at the latest check, Benjamini-Hochberg adjusted over the check's tests",
        "gauge",
        [(labels, r.p_value) for labels, r in results if r.p_value is not None],
    )
    yield _family(
        "clipperd_drift_alarm",
        "1 while the drift test alarms (adjusted p-value under drift_alpha, or PSI over drift_psi_threshold)",
        "gauge",
        [(labels, int(r.alarm)) for labels, r in results],
    )
    yield _family(
        "clipperd_monitor_samples_total",
        "Requests sampled for a monitor and copied into its buffer",
        "counter",
        [({**labels, "monitor": "drift"}, d.sampled) for labels, d in monitors],
    )
    yield _family(
        "clipperd_monitor_samples_dropped_total",
        "Requests drawn for a monitor's sample but dropped because its buffer was full",
        "counter",
        [({**labels, "monitor": "drift"}, d.dropped) for labels, d in monitors],
    )
