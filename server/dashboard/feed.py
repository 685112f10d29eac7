"""The dashboard's JSON feed (``GET /v2/dashboard``): the state of the server at a glance, read
from the counters the statistics and metrics endpoints read, with rates and percentiles over
the last seconds (window.py).

Bounded: at most MAX_MODELS model versions and MAX_APPLICATIONS applications are listed (the
rest counted in ``omitted``); a model's name is cut to MAX_NAME characters; a built feed is
reused for REUSE_S, so any number of open pages costs one build per REUSE_S."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from schedulers.applications.application import Application
from schedulers.stats import ModelStats
from server.core.model_version import ModelVersion
from server.core.repository import IndexEntry
from server.dashboard.monitors import drift_summary, feedback_summary
from server.dashboard.window import Counts, Delta, History, quantile
from server.gpu import GpuReading

log = logging.getLogger(__name__)

MAX_MODELS = 500
MAX_APPLICATIONS = 200
MAX_NAME = 200
REUSE_S = 0.5


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def model_counts(stats: ModelStats, rows: int, executions: int) -> Counts:
    return Counts(
        requests=stats.success.count + stats.fail.count,
        failures=stats.fail.count,
        latency_buckets=tuple(stats.latency_buckets),
        cache_hits=stats.cache_hit.count,
        cache_misses=stats.cache_miss.count,
        executions=executions,
        rows=rows,
    )


def app_counts(app: Application) -> Counts:
    m = app.metrics
    return Counts(m.predictions, sum(m.defaults.values()), tuple(m.latency_buckets))


def _latency(delta: Delta | None, cumulative: Iterable[int]) -> dict[str, float | None]:
    """p50/p99 over the window; over the version's life when nothing ran in the window."""
    buckets = delta.latency_buckets if delta is not None and delta.requests else tuple(cumulative)
    return {"p50_ms": _round(quantile(0.5, buckets)), "p99_ms": _round(quantile(0.99, buckets))}


def _devices(mv: ModelVersion) -> list[dict[str, Any]]:
    return [
        {
            "device": d.device,
            "batch_size_cap": d.batch_size_cap,
            "queue_depth": round(d.depth, 2),
            "executions": d.executions,
            "mean_batch": round(d.rows / d.executions, 2) if d.executions else None,
        }
        for d in mv.scheduler.device_statistics()
    ]


def _window_batch(delta: Delta | None) -> float | None:
    if delta is None or not delta.executions:
        return None
    return round(delta.rows / delta.executions, 2)


def _cache_ratio(mv: ModelVersion, delta: Delta | None) -> float | None:
    if mv.cache is None:
        return None
    hits, misses = (delta.cache_hits, delta.cache_misses) if delta is not None else (0, 0)
    if hits + misses == 0:  # nothing in the window: over the version's life
        hits, misses = mv.stats.cache_hit.count, mv.stats.cache_miss.count
    return round(hits / (hits + misses), 4) if hits + misses else None


def model_row(entry: IndexEntry, mv: ModelVersion | None, delta: Delta | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": entry.name[:MAX_NAME],
        "version": entry.version[:32],
        "state": entry.state or "UNLOADED",
        "reason": entry.reason[:MAX_NAME],
    }
    if mv is None:
        return row
    stats = mv.stats
    row.update(
        requests=stats.success.count + stats.fail.count,
        failures=stats.fail.count,
        rate=_round(delta.rate() if delta else None),
        failure_rate=_round(delta.failure_rate() if delta else None),
        **_latency(delta, stats.latency_buckets),
        inflight=stats.inflight,
        queue=mv.scheduler.pending,
        batch_size=_window_batch(delta),
        cache_hit_ratio=_cache_ratio(mv, delta),
        devices=_devices(mv),
        drift=drift_summary(mv),
        feedback=feedback_summary(mv),
    )
    return row


def app_row(app: Application, delta: Delta | None) -> dict[str, Any]:
    m = app.metrics
    defaults_share = None
    if delta is not None and delta.requests:
        defaults_share = round(delta.failures / delta.requests, 4)
    elif m.predictions:
        defaults_share = round(sum(m.defaults.values()) / m.predictions, 4)
    return {
        "name": app.name[:MAX_NAME],
        "policy": app.definition.policy,
        "models": [name[:MAX_NAME] for name in app.model_names()[:16]],
        "predictions": m.predictions,
        "rate": _round(delta.rate() if delta else None),
        "default_ratio": defaults_share,
        "defaults": dict(m.defaults),
        **_latency(delta, m.latency_buckets),
    }


def gpu_row(r: GpuReading) -> dict[str, Any]:
    return {
        "uuid": r.uuid[:MAX_NAME],
        "utilization": r.utilization,
        "memory_used_bytes": r.memory_used_bytes,
        "memory_total_bytes": r.memory_total_bytes,
        "power_w": r.power_usage_w,
        "power_limit_w": r.power_limit_w,
    }


@dataclass
class Sources:
    """Where the feed reads from (injected by the lifecycle, so that this package imports no
    transport and no repository internals)."""

    index: Callable[[], list[IndexEntry]]  # every model version and its state
    loaded: Callable[[], list[ModelVersion]]  # the versions serving now
    applications: Callable[[], list[Application]]
    gpus: Callable[[], list[GpuReading]]  # the latest readings; empty without a GPU
    server: dict[str, str]  # name and version, as ServerMetadata says


class Dashboard:
    def __init__(self, sources: Sources, max_models: int = MAX_MODELS, max_apps: int = MAX_APPLICATIONS) -> None:
        self.sources = sources
        self.max_models = max_models
        self.max_apps = max_apps
        self.history = History()
        self._started = time.monotonic()
        self._built: tuple[float, bytes] | None = None

    def json(self, now_s: float | None = None) -> bytes:
        """The feed as JSON bytes; the same bytes again within REUSE_S."""
        now_s = time.monotonic() if now_s is None else now_s
        if self._built is not None and 0 <= now_s - self._built[0] < REUSE_S:
            return self._built[1]
        body = json.dumps(self.build(now_s), separators=(",", ":")).encode()
        self._built = (now_s, body)
        return body

    def build(self, now_s: float) -> dict[str, Any]:
        entries = self.sources.index()
        loaded = {(mv.name, str(mv.version)): mv for mv in self.sources.loaded()}
        every_app = self.sources.applications()
        shown, apps = entries[: self.max_models], every_app[: self.max_apps]
        counts = {f"m/{e.name}/{e.version}": _counts(mv) for e in shown if (mv := loaded.get((e.name, e.version)))}
        counts.update({f"a/{app.name}": app_counts(app) for app in apps})
        deltas = self.history.deltas(now_s, counts)
        models = [model_row(e, loaded.get((e.name, e.version)), deltas.get(f"m/{e.name}/{e.version}")) for e in shown]
        window = next(iter(deltas.values())).seconds if deltas else None
        return {
            "server": {**self.sources.server, "uptime_s": round(now_s - self._started, 1)},
            "window_s": _round(window, 2),
            "totals": _totals(models),
            "models": models,
            "applications": [app_row(app, deltas.get(f"a/{app.name}")) for app in apps],
            "gpus": [gpu_row(r) for r in self.sources.gpus()],
            "omitted": {
                "models": max(0, len(entries) - self.max_models),
                "applications": max(0, len(every_app) - self.max_apps),
            },
        }


def _counts(mv: ModelVersion) -> Counts:
    devices = mv.scheduler.device_statistics()
    return model_counts(mv.stats, sum(d.rows for d in devices), sum(d.executions for d in devices))


def _alarmed(model: dict[str, Any]) -> bool:
    return bool((model.get("drift") or {}).get("alarm") or (model.get("feedback") or {}).get("alarm"))


def _totals(models: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [m["rate"] for m in models if m.get("rate") is not None]
    return {
        "models": len(models),
        "ready": sum(1 for m in models if m["state"] == "READY"),
        "requests": sum(m.get("requests", 0) for m in models),
        "rate": _round(sum(rates)) if rates else None,
        "alarms": sum(1 for m in models if _alarmed(m)),
    }
