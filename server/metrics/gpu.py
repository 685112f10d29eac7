"""Triton's GPU families (``nv_gpu_*``, ``nv_energy_consumption``, label ``gpu_uuid``) from the
latest readings of server/gpu.py's sampler; a figure a GPU does not report has no sample."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.metrics_core import Metric

from server.gpu import GpuReading, GpuSampler
from server.metrics.exporter import family

_GAUGES: tuple[tuple[str, str, Callable[[GpuReading], float | None]], ...] = (
    ("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0]", lambda r: r.utilization),
    ("nv_gpu_memory_total_bytes", "GPU total memory, in bytes", lambda r: r.memory_total_bytes),
    ("nv_gpu_memory_used_bytes", "GPU used memory, in bytes", lambda r: r.memory_used_bytes),
    ("nv_gpu_power_usage", "GPU power draw, in watts", lambda r: r.power_usage_w),
    ("nv_gpu_power_limit", "GPU power management limit, in watts", lambda r: r.power_limit_w),
)


def gpu_families(sampler: GpuSampler) -> Iterator[Metric]:
    """Nothing before the first reading; then one sample per GPU and figure it reports."""
    readings = sampler.readings
    if not readings:
        return
    for name, help, value in _GAUGES:
        rows = [({"gpu_uuid": r.uuid}, v) for r in readings if (v := value(r)) is not None]
        yield family(name, help, "gauge", rows)
    energy = [({"gpu_uuid": r.uuid}, j) for r in readings if (j := sampler.energy_j(r)) is not None]
    yield family(
        "nv_energy_consumption", "GPU energy used since the server started reading it, in joules", "counter", energy
    )
