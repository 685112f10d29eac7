"""Which devices this machine has, asked without importing a framework where possible."""

from __future__ import annotations

import functools
import importlib.util
import logging

log = logging.getLogger(__name__)


@functools.cache
def gpu_count() -> int:
    """NVIDIA GPUs visible to this process (NVML if present, else PyTorch if installed, else 0)."""
    if importlib.util.find_spec("pynvml") is not None:
        try:
            import pynvml  # type: ignore[import-not-found, unused-ignore]

            pynvml.nvmlInit()
            return int(pynvml.nvmlDeviceGetCount())
        except Exception as exc:  # no driver: a CPU machine
            log.debug("NVML unavailable: %s", exc)
    if importlib.util.find_spec("torch") is not None:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    return 0
