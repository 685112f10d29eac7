"""Batch bookkeeping apart from queueing: which requests may share a batch, and one batch's
outputs as per-request views (the inputs are gathered by the backend: ``Backend.stage``)."""

from __future__ import annotations

from collections.abc import Sequence

from backends.base import Tensors


def batch_key(inputs: Tensors) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    """Requests batch together only when every input agrees past the batch dimension."""
    return tuple((name, a.shape[1:], a.dtype.str) for name, a in inputs.items())


def split(outputs: Tensors, sizes: Sequence[int]) -> list[Tensors]:
    """Per-request views of the batch outputs, in the order of ``sizes``."""
    if len(sizes) == 1:
        return [outputs]
    result: list[Tensors] = []
    start = 0
    for size in sizes:
        result.append({name: array[start : start + size] for name, array in outputs.items()})
        start += size
    return result
