"""schedulers/assembly.py: a version's scheduler built from its config and its backend's declared
capabilities, seen through the Scheduler protocol (execute, per-device statistics, close)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from backends import registry
from backends.base import Backend, Capabilities
from backends.common.config import load_model_config
from backends.devices import gpu_count
from backends.proto import model_config_pb2 as mc
from backends.pytorch_backend import PyTorchBackend
from schedulers.assembly import build_scheduler, instance_devices
from schedulers.protocol import DeviceStatistics
from tests.serverproc import EXAMPLES


@pytest.mark.parametrize("backend", sorted(registry.BACKENDS))
def test_every_backend_declares_its_capabilities(backend: str) -> None:
    cls = registry.BACKENDS[backend]
    declared = next(c for c in cls.__mro__ if "capabilities" in vars(c))
    assert declared is not Backend, f"{cls.__name__} inherits the contract's default instead of declaring"
    assert isinstance(cls.capabilities, Capabilities)


@pytest.mark.skipif(gpu_count() > 0, reason="checks the CPU-only placement")
def test_kind_auto_is_the_cpu_without_a_gpu() -> None:
    config = mc.ModelConfig(name="m")
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_AUTO, count=2)
    assert PyTorchBackend.capabilities.gpu
    assert [d.name for _, d in instance_devices(config, PyTorchBackend)] == ["cpu", "cpu"]


async def test_a_built_scheduler_runs_and_reports_its_device() -> None:
    folder = EXAMPLES / "identity_fp32"
    config = load_model_config(folder)
    scheduler = await build_scheduler(config, 1, folder / "1")
    try:
        x = np.ones((3, 16), dtype=np.float32)
        outputs = await scheduler.execute({"INPUT0": x}, 3)
        np.testing.assert_array_equal(outputs["OUTPUT0"], x)
        await asyncio.sleep(0)  # an inline execution is counted at the loop's next turn, after its answer
        (device,) = scheduler.device_statistics()
        assert isinstance(device, DeviceStatistics)
        assert (device.device, device.batch_size_cap, device.executions, device.rows) == ("cpu", 64, 1, 3)
        assert device.inline_executions == 1  # a Python model runs on the event loop: its own execute
        assert device.batch_latency_ns > 0
        assert device.depth == 0.0
        assert scheduler.stats.execution_count == 1
    finally:
        await scheduler.close()
