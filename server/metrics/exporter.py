"""Prometheus metrics on ``--metrics-port`` (8002): Triton's names, types, help texts and labels,
plus clipperd's own latency histograms and in-flight gauges.

Nothing is counted twice: a scrape reads the very ModelStats counters that the gRPC and HTTP
statistics endpoints report (on the event loop, where they are updated, so one scrape sees one
consistent state). The Prometheus text format is written here, because prometheus-client's own
writer renames every counter ``<name>_total`` and Triton's dashboards expect the bare names;
OpenMetrics (when the Accept header asks for it) goes through prometheus-client, with Triton's
counters typed ``unknown`` there so that they keep their names (OpenMetrics wants ``_total`` on a
counter's samples)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import HistogramMetricFamily, Metric

from backends.remote.endpoints import LATENCY_BOUNDS_S, EndpointStatistics
from schedulers.cache import ResponseCache
from schedulers.protocol import DeviceStatistics, RemoteEndpoints, SequenceScheduling, SequenceStatistics
from schedulers.stats import LATENCY_BUCKETS_NS, Duration, FailureReason, ModelStats, Rejection
from server.core.model_version import ModelVersion
from server.metrics.drift import drift_families
from server.metrics.feedback import feedback_families

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_MODEL_LABELS = ("model", "version")

# (name, help, which cumulative duration of ModelStats) for Triton's latency counters
_DURATIONS: tuple[tuple[str, str, Callable[[ModelStats], Duration]], ...] = (
    (
        "nv_inference_request_duration_us",
        "Cumulative inference request duration in microseconds (includes cached requests)",
        lambda s: s.success,
    ),
    (
        "nv_inference_queue_duration_us",
        "Cumulative inference queuing duration in microseconds (includes cached requests)",
        lambda s: s.queue,
    ),
    (
        "nv_inference_compute_input_duration_us",
        "Cumulative compute input duration in microseconds (does not include cached requests)",
        lambda s: s.compute_input,
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "Cumulative compute inference duration in microseconds (does not include cached requests)",
        lambda s: s.compute_infer,
    ),
    (
        "nv_inference_compute_output_duration_us",
        "Cumulative inference compute output duration in microseconds (does not include cached requests)",
        lambda s: s.compute_output,
    ),
)


# clipperd's own per-device families: each device's batcher, its AIMD state and its queue
_DEVICE_SCALARS: tuple[tuple[str, str, str, Callable[[DeviceStatistics], float]], ...] = (
    (
        "clipperd_batch_size_cap",
        "The largest batch the device's batcher forms now: max_batch_size, or the AIMD cap under a latency target",
        "gauge",
        lambda d: d.batch_size_cap,
    ),
    (
        "clipperd_batch_latency_seconds",
        "Execution time of the latest batch on the device, as the AIMD controller saw it",
        "gauge",
        lambda d: d.batch_latency_ns / 1e9,
    ),
    (
        "clipperd_batches_over_latency_target",
        "Batches whose execution took longer than the model's batch latency target",
        "counter",
        lambda d: d.batches_over_target,
    ),
    (
        "clipperd_batch_time_over_latency_target_seconds",
        "Time by which batches overran the model's batch latency target, summed",
        "counter",
        lambda d: d.time_over_target_ns / 1e9,
    ),
    (
        "clipperd_device_executions",
        "Batches executed on the device",
        "counter",
        lambda d: d.executions,
    ),
    (
        "clipperd_device_inline_executions",
        "Requests executed at once on the event loop (an idle device, a short request): no queue, no thread switch",
        "counter",
        lambda d: d.inline_executions,
    ),
    (
        "clipperd_device_inference_count",
        "Inferences (rows) executed on the device",
        "counter",
        lambda d: d.rows,
    ),
    (
        "clipperd_queue_depth",
        "Requests queued or executing on the device, per instance: what requests are spread by",
        "gauge",
        lambda d: d.depth,
    ),
)


# clipperd's per-endpoint families of a remote model (backends/remote/endpoints.py)
_REMOTE_SCALARS: tuple[tuple[str, str, str, Callable[[EndpointStatistics], float]], ...] = (
    ("clipperd_remote_requests", "Remote calls sent to the endpoint, one per batch", "counter", lambda e: e.requests),
    (
        "clipperd_remote_failures",
        "Remote calls the endpoint failed: connection refused or lost, UNAVAILABLE, timeout",
        "counter",
        lambda e: e.failures,
    ),
    ("clipperd_remote_ejections", "Times the endpoint was taken out of rotation", "counter", lambda e: e.ejections),
    ("clipperd_remote_inflight", "Batches sent to the endpoint and not answered yet", "gauge", lambda e: e.in_flight),
    ("clipperd_remote_healthy", "1 while the endpoint is in rotation, else 0", "gauge", lambda e: int(e.healthy)),
)


# Triton's per-model response cache families (durations in microseconds, as Triton's)
_CACHE_PER_MODEL: tuple[tuple[str, str, str, Callable[[ModelStats], int]], ...] = (
    ("nv_cache_num_hits_per_model", "Number of cache hits per model", "counter", lambda s: s.cache_hit.count),
    ("nv_cache_num_misses_per_model", "Number of cache misses per model", "counter", lambda s: s.cache_miss.count),
    (
        "nv_cache_hit_duration_per_model",
        "Total cache hit duration per model, in microseconds",
        "counter",
        lambda s: s.cache_hit.ns // 1000,
    ),
    (
        "nv_cache_miss_duration_per_model",
        "Total cache miss (lookup and insertion) duration per model, in microseconds",
        "counter",
        lambda s: s.cache_miss.ns // 1000,
    ),
)

# clipperd's own families for the response cache as a whole
_CACHE_TOTALS: tuple[tuple[str, str, str, Callable[[ResponseCache], float]], ...] = (
    ("clipperd_cache_size_bytes", "Bytes the response cache's entries take now", "gauge", lambda c: c.size),
    ("clipperd_cache_capacity_bytes", "The response cache's size (--cache-config)", "gauge", lambda c: c.capacity),
    ("clipperd_cache_entries", "Responses held in the response cache now", "gauge", len),
    (
        "clipperd_cache_evictions",
        "Responses evicted (least recently used first) to make room for new ones",
        "counter",
        lambda c: c.evictions,
    ),
)


def _float(value: float) -> str:
    """A value as Prometheus writes it (Go's formatting of specials)."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


_BUCKET_BOUNDS = [*(_float(ns / 1e9) for ns in LATENCY_BUCKETS_NS), "+Inf"]


def family(name: str, help: str, typ: str, rows: Iterable[tuple[dict[str, str], float]]) -> Metric:
    """One metric family of ``typ``, a sample per (labels, value) row."""
    metric = Metric(name, help, typ)
    for labels, value in rows:
        metric.add_sample(name, labels, value)
    return metric


def _labels(model: ModelVersion) -> dict[str, str]:
    return {"model": model.name, "version": str(model.version)}


def model_families(models: list[ModelVersion]) -> Iterator[Metric]:
    """Triton's per-model families, then clipperd's own, one sample per loaded model version."""
    rows = [(_labels(m), m) for m in models]
    yield family(
        "nv_inference_request_success",
        "Number of successful inference requests, all batch sizes",
        "counter",
        ((labels, m.stats.success.count) for labels, m in rows),
    )
    yield family(
        "nv_inference_request_failure",
        "Number of failed inference requests, all batch sizes",
        "counter",
        (({**labels, "reason": r.value}, m.stats.failures[r]) for labels, m in rows for r in FailureReason),
    )
    yield family(
        "nv_inference_count",
        "Number of inferences performed (does not include cached requests)",
        "counter",
        ((labels, m.stats.inference_count) for labels, m in rows),
    )
    yield family(
        "nv_inference_exec_count",
        "Number of model executions performed (does not include cached requests)",
        "counter",
        ((labels, m.stats.execution_count) for labels, m in rows),
    )
    for name, help, duration in _DURATIONS:
        yield family(name, help, "counter", ((labels, duration(m.stats).ns // 1000) for labels, m in rows))
    yield family(
        "nv_inference_pending_request_count",
        "Instantaneous number of pending requests awaiting execution per-model.",
        "gauge",
        ((labels, m.scheduler.pending) for labels, m in rows),
    )
    yield family(
        "nv_model_load_duration_secs",
        "Model load time in seconds",
        "gauge",
        ((labels, m.load_secs) for labels, m in rows),
    )
    yield _latency_histogram(models)
    yield family(
        "clipperd_batch_size_executions",
        "Model executions by batch size (rows), the batch-size distribution",
        "counter",
        (
            ({**labels, "batch_size": str(size)}, batch.compute_infer.count)
            for labels, m in rows
            for size, batch in sorted(m.stats.batches.items())
        ),
    )
    yield family(
        "clipperd_rejections",
        "Requests the scheduler refused, by reason: queue_full, timeout (REJECT), unloading",
        "counter",
        (({**labels, "reason": r.value}, m.stats.rejections[r]) for labels, m in rows for r in Rejection),
    )
    yield family(
        "clipperd_inflight_requests",
        "Inference requests being handled now (validated, queued or executing), per model version",
        "gauge",
        ((labels, m.stats.inflight) for labels, m in rows),
    )
    devices = [(labels, d) for labels, m in rows for d in m.scheduler.device_statistics()]  # one snapshot each
    for name, help, typ, value in _DEVICE_SCALARS:
        yield family(name, help, typ, (({**labels, "device": d.device}, value(d)) for labels, d in devices))
    yield from remote_families(models)
    yield from sequence_families(models)
    yield from drift_families(models)


def remote_families(models: list[ModelVersion]) -> Iterator[Metric]:
    """Each remote endpoint's counters (backends/remote), labelled model, version, endpoint."""
    endpoints = [
        ({**_labels(m), "endpoint": e.endpoint}, e)
        for m in models
        if isinstance(m.scheduler, RemoteEndpoints)
        for e in m.scheduler.endpoint_statistics()
    ]
    for name, help, typ, value in _REMOTE_SCALARS:
        yield family(name, help, typ, ((labels, value(e)) for labels, e in endpoints))
    histogram = HistogramMetricFamily(
        "clipperd_remote_request_duration_seconds",
        "Round trip of the remote calls an endpoint answered (one call carries one batch)",
        labels=(*_MODEL_LABELS, "endpoint"),
    )
    bounds = [_float(b) for b in LATENCY_BOUNDS_S] + ["+Inf"]
    for labels, e in endpoints:
        buckets = list(zip(bounds, itertools.accumulate(e.latency_buckets), strict=True))
        histogram.add_metric([labels["model"], labels["version"], e.endpoint], buckets, e.latency_s)
    yield histogram


# the sequence batcher's counters (schedulers/sequence.py), per model version
_SEQUENCE_SCALARS: tuple[tuple[str, str, str, Callable[[SequenceStatistics], float]], ...] = (
    ("clipperd_sequences_active", "Sequences holding a batch slot now", "gauge", lambda s: s.active),
    ("clipperd_sequence_backlog", "Sequences waiting for a free batch slot now", "gauge", lambda s: s.backlog),
    ("clipperd_sequences_started", "Requests with sequence_start accepted", "counter", lambda s: s.started),
    ("clipperd_sequences_ended", "Sequences ended by a request with sequence_end", "counter", lambda s: s.ended),
    (
        "clipperd_sequences_expired",
        "Sequences freed after max_sequence_idle_microseconds without a request",
        "counter",
        lambda s: s.expired,
    ),
)


def sequence_families(models: list[ModelVersion]) -> Iterator[Metric]:
    """The sequence batcher's gauges and counters of the versions that have one."""
    rows = [
        (_labels(m), m.scheduler.sequence_statistics()) for m in models if isinstance(m.scheduler, SequenceScheduling)
    ]
    for name, help, typ, value in _SEQUENCE_SCALARS:
        yield family(name, help, typ, ((labels, value(s)) for labels, s in rows))


def cache_families(models: list[ModelVersion], cache: ResponseCache) -> Iterator[Metric]:
    """Triton's per-model response cache families, for the versions that cache (as Triton's), then
    clipperd's own for the cache as a whole."""
    rows = [(_labels(m), m.stats) for m in models if m.cache is not None]
    for name, help, typ, value in _CACHE_PER_MODEL:
        yield family(name, help, typ, ((labels, value(stats)) for labels, stats in rows))
    for name, help, typ, total in _CACHE_TOTALS:
        yield family(name, help, typ, [({}, total(cache))])


def _latency_histogram(models: list[ModelVersion]) -> HistogramMetricFamily:
    histogram = HistogramMetricFamily(
        "clipperd_request_duration_seconds",
        "End-to-end duration of successful inference requests, per model version",
        labels=_MODEL_LABELS,
    )
    for m in models:
        buckets = cumulative_buckets(m.stats.latency_buckets)
        histogram.add_metric([m.name, str(m.version)], buckets, m.stats.success.ns / 1e9)
    return histogram


def cumulative_buckets(counts: list[int]) -> list[tuple[str, int]]:
    """Counts per LATENCY_BUCKETS_NS bucket (then +Inf) as Prometheus' cumulative (bound, count) pairs."""
    return list(zip(_BUCKET_BOUNDS, itertools.accumulate(counts), strict=True))


class CpuMetrics:
    """Triton's CPU metrics from /proc: utilization between two scrapes, memory now."""

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self._proc = proc
        self._last = self._cpu_times()
        self._utilization = 0.0

    def _cpu_times(self) -> tuple[int, int] | None:
        """(busy, total) jiffies of all CPUs since boot; None where /proc/stat is not there."""
        try:
            with (self._proc / "stat").open() as f:
                fields = [int(v) for v in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        if len(fields) < 8:
            return None
        total = sum(fields)  # user nice system idle iowait irq softirq steal (guest is in user)
        return total - fields[3] - fields[4], total

    def utilization(self) -> float | None:
        now = self._cpu_times()
        if now is None or self._last is None:
            return None
        busy, total = now[0] - self._last[0], now[1] - self._last[1]
        if total > 0:  # two scrapes within one clock tick keep the last figure
            self._utilization = min(max(busy / total, 0.0), 1.0)
            self._last = now
        return self._utilization

    def memory(self) -> tuple[int, int] | None:
        """(total, used) bytes: used is MemTotal - MemAvailable."""
        values: dict[str, int] = {}
        try:
            with (self._proc / "meminfo").open() as f:
                for line in f:
                    key, _, rest = line.partition(":")
                    if key in ("MemTotal", "MemAvailable"):
                        values[key] = int(rest.split()[0]) * 1024
        except (OSError, ValueError, IndexError):
            return None
        if len(values) < 2:
            return None
        return values["MemTotal"], values["MemTotal"] - values["MemAvailable"]

    def families(self) -> Iterator[Metric]:
        utilization = self.utilization()
        if utilization is not None:
            yield family("nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]", "gauge", [({}, utilization)])
        memory = self.memory()
        if memory is not None:
            total, used = memory
            yield family("nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes", "gauge", [({}, total)])
            yield family("nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes", "gauge", [({}, used)])


class ServerCollector:
    """A prometheus-client collector that reads the server's counters at scrape time."""

    def __init__(
        self,
        models: Callable[[], list[ModelVersion]],
        cpu: CpuMetrics | None = None,
        cache: ResponseCache | None = None,
        extra: Callable[[], Iterable[Metric]] | None = None,
    ) -> None:
        self._models = models
        self._cpu = cpu or CpuMetrics()
        self._cache = cache
        self._extra = extra

    def collect(self) -> Iterator[Metric]:
        models = self._models()
        yield from model_families(models)
        if self._cache is not None:
            yield from cache_families(models, self._cache)
        yield from self._cpu.families()
        yield from feedback_families(models)
        if self._extra is not None:
            yield from self._extra()


def build_registry(
    models: Callable[[], list[ModelVersion]],
    cache: ResponseCache | None = None,
    extra: Callable[[], Iterable[Metric]] | None = None,
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(models, cache=cache, extra=extra))
    return registry


# -- exposition ---------------------------------------------------------------------------------


def _escape_help(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n")


def _escape(value: str) -> str:
    return _escape_help(value).replace('"', r"\"")


def _value(value: float) -> str:
    return str(value) if isinstance(value, int) else _float(value)


def encode_text(families: Iterable[Metric]) -> bytes:
    """The Prometheus text format 0.0.4, with every sample under the name it was given."""
    lines = []
    for family in families:
        typ = "untyped" if family.type == "unknown" else family.type
        lines.append(f"# HELP {family.name} {_escape_help(family.documentation)}")
        lines.append(f"# TYPE {family.name} {typ}")
        for sample in family.samples:
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(sample.labels.items()))
            name = f"{sample.name}{{{labels}}}" if labels else sample.name
            lines.append(f"{name} {_value(sample.value)}")
    lines.append("")
    return "\n".join(lines).encode()


class _Snapshot:
    """Families already collected, as the collector prometheus-client's encoders take."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


def _untyped_counters(families: list[Metric]) -> list[Metric]:
    out = []
    for family in families:
        if family.type == "counter":
            copy = Metric(family.name, family.documentation, "unknown")
            copy.samples = family.samples
            family = copy
        out.append(family)
    return out


def exposition(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """The body and content type for a scrape with this Accept header."""
    families = list(registry.collect())
    encoder, content_type = choose_encoder(accept)
    if content_type.startswith("application/openmetrics-text"):
        return encoder(_Snapshot(_untyped_counters(families))), content_type  # type: ignore[arg-type]
    return encode_text(families), TEXT_CONTENT_TYPE


# -- the endpoint -------------------------------------------------------------------------------

REGISTRY = web.AppKey("registry", CollectorRegistry)


async def metrics(request: web.Request) -> web.Response:
    body, content_type = exposition(request.app[REGISTRY], request.headers.get("Accept", ""))
    return web.Response(body=body, headers={"Content-Type": content_type})


@dataclass(frozen=True)
class MetricsOptions:
    host: str
    port: int  # 0 picks a free one


async def start_metrics_server(
    models: Callable[[], list[ModelVersion]],
    opts: MetricsOptions,
    cache: ResponseCache | None = None,
    extra: Callable[[], Iterable[Metric]] | None = None,
) -> tuple[web.AppRunner, int]:
    """Serves ``GET /metrics``; returns the runner (``cleanup()`` stops it) and the bound port.
    ``extra`` yields more families at each scrape (the applications')."""
    app = web.Application()
    app[REGISTRY] = build_registry(models, cache, extra)
    app.add_routes([web.get("/metrics", metrics)])
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, opts.host, opts.port, reuse_port=False)
    await site.start()
    addresses = runner.addresses
    return runner, int(addresses[0][1]) if addresses else opts.port
