"""GPU use read through NVML (the ``nvidia-ml-py`` package), off the request path.

A sampler task wakes every ``--metrics-interval-ms`` and runs one read of every GPU on a thread
of its own, so a slow NVML call never holds the event loop; the metrics endpoint and the
dashboard read the latest readings it kept. Without a GPU (no libnvidia-ml, or NVML refusing to
start) there is no sampler at all: one info line, no task, no thread, no families."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One GPU at one moment; None where the device does not report that figure."""

    uuid: str  # NVML's "GPU-..." string, Triton's gpu_uuid label
    utilization: float | None  # 0..1 over NVML's last sample period
    memory_total_bytes: int | None
    memory_used_bytes: int | None
    power_usage_w: float | None
    power_limit_w: float | None
    energy_mj: int | None  # millijoules since the driver loaded (NVML's counter)


Reader = Callable[[], list[GpuReading]]  # one read of every GPU; may block, may raise


def _figure(call: Callable[[], Any]) -> Any:
    """A figure NVML may not have on this device (NotSupported, NoPermission): None then."""
    import pynvml

    try:
        return call()
    except pynvml.NVMLError:
        return None


def _read_device(index: int) -> GpuReading:
    import pynvml

    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    uuid = pynvml.nvmlDeviceGetUUID(handle)
    utilization = _figure(lambda: pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    memory = _figure(lambda: pynvml.nvmlDeviceGetMemoryInfo(handle))
    power = _figure(lambda: pynvml.nvmlDeviceGetPowerUsage(handle))  # mW
    limit = _figure(lambda: pynvml.nvmlDeviceGetPowerManagementLimit(handle))  # mW
    return GpuReading(
        uuid=uuid.decode() if isinstance(uuid, bytes) else str(uuid),
        utilization=None if utilization is None else utilization / 100.0,
        memory_total_bytes=None if memory is None else int(memory.total),
        memory_used_bytes=None if memory is None else int(memory.used),
        power_usage_w=None if power is None else power / 1000.0,
        power_limit_w=None if limit is None else limit / 1000.0,
        energy_mj=_figure(lambda: int(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))),
    )


def read_all() -> list[GpuReading]:
    """Every GPU NVML sees (NVML already started)."""
    import pynvml

    return [_read_device(i) for i in range(pynvml.nvmlDeviceGetCount())]


def nvml_reader() -> Reader | None:
    """NVML's reader when a GPU is there; None (one info line) when the library is missing, NVML
    does not start, or it sees no GPU."""
    try:
        import pynvml
    except ImportError:
        log.info("GPU metrics off: the nvidia-ml-py package is not installed")
        return None
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except pynvml.NVMLError as error:  # no libnvidia-ml, no driver: a CPU machine
        log.info("GPU metrics off: NVML unavailable (%s)", error)
        return None
    if count == 0:
        log.info("GPU metrics off: NVML sees no GPU")
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()
        return None
    log.info("GPU metrics on: %d GPU(s) through NVML", count)
    return read_all


class GpuSampler:
    """Reads the GPUs every ``interval_s`` on its own thread and keeps the latest readings.

    Energy is reported since the sampler's first reading (as Triton's counter counts from its
    start), so it starts at 0 and only grows while the driver stays loaded."""

    def __init__(self, reader: Reader, interval_s: float) -> None:
        self._reader = reader
        self.interval_s = interval_s
        self.readings: list[GpuReading] = []
        self._energy_start: dict[str, int] = {}
        self._failing = False
        self._task: asyncio.Task[None] | None = None
        self._thread: ThreadPoolExecutor | None = None

    def start(self) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clipperd-nvml")
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._thread is not None:
            self._thread.shutdown(wait=False, cancel_futures=True)
            self._thread = None

    async def _run(self) -> None:
        while True:
            # one read at a time: a read that hangs delays the next, it never piles up threads
            await self.sample()
            await asyncio.sleep(self.interval_s)

    async def sample(self) -> None:
        """One reading on the sampler's thread, kept; a failed read keeps the last figures and
        is said once (warning) until a read succeeds again."""
        try:
            readings = await asyncio.get_running_loop().run_in_executor(self._thread, self._reader)
        except Exception as error:
            if not self._failing:
                log.warning("GPU metrics: reading NVML failed (%s); keeping the last figures", error)
            self._failing = True
            return
        self._failing = False
        self.keep(readings)

    def keep(self, readings: list[GpuReading]) -> None:
        for r in readings:
            if r.energy_mj is not None:
                self._energy_start.setdefault(r.uuid, r.energy_mj)
        self.readings = readings

    def energy_j(self, reading: GpuReading) -> float | None:
        """Joules the GPU used since the sampler's first reading of it."""
        start = self._energy_start.get(reading.uuid)
        if reading.energy_mj is None or start is None:
            return None
        return max(0, reading.energy_mj - start) / 1000.0


def start_gpu_sampler(interval_ms: int, reader: Callable[[], Reader | None] = nvml_reader) -> GpuSampler | None:
    """The sampler, started, when a GPU is there; None otherwise (nothing runs)."""
    found = reader()
    if found is None:
        return None
    sampler = GpuSampler(found, interval_ms / 1000.0)
    sampler.start()
    return sampler
