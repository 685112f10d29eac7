"""Pinned (page-locked) host buffers where a GPU instance gathers its batches.

A batch's requests are concatenated straight into pinned memory, once, and the copy to the
device then runs as DMA on the instance's stream, asynchronously. Gathering into ordinary memory
instead would cost a second host copy: CUDA stages pageable memory through a pinned bounce
buffer of its own, synchronously. Each input has one buffer per instance, reused batch after
batch and grown (doubling) when a batch needs more: an instance runs one batch at a time and
synchronizes its stream before the next, so a buffer is never overwritten while a copy reads it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from backends.common.tensors import Tensors

_MIN_BYTES = 4096


class PinnedStaging:
    def __init__(self, torch: Any, pin: bool = True) -> None:
        self._torch = torch
        self._pin = pin  # False only where no CUDA runtime can pin memory: the CPU tests of gathering
        self._buffers: dict[str, tuple[Any, np.ndarray]] = {}  # input -> (pinned tensor, its bytes)

    def gather(self, parts: Sequence[Tensors]) -> Tensors:
        """The requests' inputs as one batch in pinned memory (BYTES inputs stay where they are)."""
        return {name: self._gather(name, [p[name] for p in parts]) for name in parts[0]}

    def _gather(self, name: str, arrays: list[np.ndarray]) -> np.ndarray:
        first = arrays[0]
        if first.dtype.hasobject:  # Python objects cannot live in pinned memory
            return first if len(arrays) == 1 else np.concatenate(arrays)
        shape = first.shape if len(arrays) == 1 else (sum(a.shape[0] for a in arrays), *first.shape[1:])
        nbytes = math.prod(shape) * first.dtype.itemsize
        staged = self._buffer(name, nbytes)[:nbytes].view(first.dtype).reshape(shape)
        if len(arrays) == 1:
            np.copyto(staged, first)
        else:
            np.concatenate(arrays, out=staged)
        return staged

    def _buffer(self, name: str, nbytes: int) -> np.ndarray:
        held = self._buffers.get(name)
        if held is not None and held[1].nbytes >= nbytes:
            return held[1]
        size = max(nbytes, _MIN_BYTES, 2 * held[1].nbytes if held else 0)
        tensor = self._torch.empty(size, dtype=self._torch.uint8, pin_memory=self._pin)
        self._buffers[name] = (tensor, tensor.numpy())
        return self._buffers[name][1]

    def is_pinned(self, array: np.ndarray) -> bool:
        """Whether ``array`` lies in one of this instance's pinned buffers (for checks)."""
        address = array.__array_interface__["data"][0]
        for _, held in self._buffers.values():
            start = held.__array_interface__["data"][0]
            if start <= address < start + held.nbytes:
                return True
        return False
