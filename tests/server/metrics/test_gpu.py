"""The GPU sampler (server/gpu.py) and Triton's GPU families (server/metrics/gpu.py), in process.

The sampler's reader is an injected function here: it stands for NVML, which this CPU machine
does not have; the real NVML is tested where a GPU is (test_gpu_server.py), and nvml_reader()
itself is tested here as it behaves without one."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from server.gpu import GpuReading, GpuSampler, nvml_reader, start_gpu_sampler
from server.metrics.exporter import encode_text
from server.metrics.gpu import gpu_families
from server.settings import parse_interval_ms

GPU_FAMILIES = {
    "nv_gpu_utilization",
    "nv_gpu_memory_total_bytes",
    "nv_gpu_memory_used_bytes",
    "nv_gpu_power_usage",
    "nv_gpu_power_limit",
    "nv_energy_consumption",
}


def reading(uuid: str = "GPU-0", energy_mj: int | None = 5_000_000, **figures: float | None) -> GpuReading:
    values: dict[str, float | None] = {
        "utilization": 0.25,
        "memory_total_bytes": 80 * 2**30,
        "memory_used_bytes": 2**30,
        "power_usage_w": 120.5,
        "power_limit_w": 700.0,
        **figures,
    }
    return GpuReading(uuid=uuid, energy_mj=energy_mj, **values)  # type: ignore[arg-type]


def samples(sampler: GpuSampler) -> dict[tuple[str, str], float]:
    return {(m.name, s.labels["gpu_uuid"]): s.value for m in gpu_families(sampler) for s in m.samples}


async def test_the_families_carry_each_gpu_s_figures_under_its_uuid() -> None:
    readings = [[reading("GPU-a"), reading("GPU-b", utilization=0.75)]]
    sampler = GpuSampler(lambda: readings[0], interval_s=1.0)
    assert list(gpu_families(sampler)) == []  # before the first reading: absent, not zero
    await sampler.sample()
    got = samples(sampler)
    assert {name for name, _ in got} == GPU_FAMILIES
    assert got["nv_gpu_utilization", "GPU-a"] == 0.25
    assert got["nv_gpu_utilization", "GPU-b"] == 0.75
    assert got["nv_gpu_memory_total_bytes", "GPU-a"] == 80 * 2**30
    assert got["nv_gpu_power_usage", "GPU-a"] == 120.5
    assert got["nv_gpu_power_limit", "GPU-b"] == 700.0
    assert got["nv_energy_consumption", "GPU-a"] == 0.0  # counted from the server's first reading
    text = encode_text(gpu_families(sampler)).decode()
    assert "# TYPE nv_energy_consumption counter" in text
    assert 'nv_gpu_utilization{gpu_uuid="GPU-a"} 0.25' in text


async def test_energy_counts_joules_since_the_first_reading() -> None:
    energy = [5_000_000]
    sampler = GpuSampler(lambda: [reading(energy_mj=energy[0])], interval_s=1.0)
    await sampler.sample()
    energy[0] = 5_012_500  # 12.5 J later
    await sampler.sample()
    assert samples(sampler)["nv_energy_consumption", "GPU-0"] == 12.5


async def test_a_figure_the_gpu_does_not_report_has_no_sample() -> None:
    sampler = GpuSampler(lambda: [reading(power_usage_w=None, energy_mj=None)], interval_s=1.0)
    await sampler.sample()
    names = {name for name, _ in samples(sampler)}
    assert names == GPU_FAMILIES - {"nv_gpu_power_usage", "nv_energy_consumption"}


async def test_a_failing_read_keeps_the_last_figures_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    fail = [False]

    def read() -> list[GpuReading]:
        if fail[0]:
            raise RuntimeError("NVML went away")
        return [reading()]

    sampler = GpuSampler(read, interval_s=1.0)
    await sampler.sample()
    fail[0] = True
    with caplog.at_level(logging.WARNING, logger="server.gpu"):
        await sampler.sample()
        await sampler.sample()
    assert samples(sampler)["nv_gpu_utilization", "GPU-0"] == 0.25
    assert len([r for r in caplog.records if "NVML went away" in r.getMessage()]) == 1


async def test_a_slow_read_runs_off_the_event_loop() -> None:
    """A read blocked in NVML holds the sampler's thread, never the loop: timers keep firing,
    and the sampler does not start a second read while the first one hangs."""
    release, entered = threading.Event(), threading.Event()
    calls = [0]

    def read() -> list[GpuReading]:
        calls[0] += 1
        entered.set()
        release.wait(30)
        return [reading()]

    sampler = GpuSampler(read, interval_s=0.01)
    sampler.start()
    try:
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, 30)
        for _ in range(20):  # the loop turns while the read is blocked
            await asyncio.sleep(0.005)
        assert calls[0] == 1
        assert sampler.readings == []
        release.set()
        deadline = asyncio.get_running_loop().time() + 30
        while not sampler.readings:
            assert asyncio.get_running_loop().time() < deadline, "no reading kept after the read returned"
            await asyncio.sleep(0.01)
    finally:
        release.set()
        await sampler.stop()


async def test_the_sampler_reads_again_at_its_interval() -> None:
    seen = asyncio.Event()
    loop = asyncio.get_running_loop()
    calls = [0]

    def read() -> list[GpuReading]:
        calls[0] += 1
        if calls[0] == 3:
            loop.call_soon_threadsafe(seen.set)
        return [reading()]

    sampler = start_gpu_sampler(100, reader=lambda: read)
    assert sampler is not None
    try:
        await asyncio.wait_for(seen.wait(), 30)
    finally:
        await sampler.stop()


def nvml_sees_a_gpu() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetCount()) > 0
    except Exception:
        return False


@pytest.mark.skipif(nvml_sees_a_gpu(), reason="this machine has a GPU: test_gpu_server.py checks the real figures")
def test_without_a_gpu_there_is_no_sampler_and_no_error(caplog: pytest.LogCaptureFixture) -> None:
    """This machine has no NVIDIA driver: the real nvml_reader says so in one info line."""
    with caplog.at_level(logging.DEBUG):
        assert nvml_reader() is None
        assert start_gpu_sampler(2000) is None  # no task, no thread: nothing runs
    assert [r.levelname for r in caplog.records if r.name == "server.gpu"] == ["INFO", "INFO"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(("text", "value"), [("2000", 2000), ("100", 100), ("60000", 60000)])
def test_metrics_interval_takes_milliseconds(text: str, value: int) -> None:
    assert parse_interval_ms(text) == value


@pytest.mark.parametrize("text", ["0", "99", "-5", "2s", ""])
def test_metrics_interval_refuses_what_is_not_a_sane_interval(text: str) -> None:
    with pytest.raises(ValueError, match=r"ms|milliseconds"):
        parse_interval_ms(text)
