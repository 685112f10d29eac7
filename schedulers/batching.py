"""Tensor merge and split, apart from queueing: many requests' inputs become one batch, one
batch's outputs become per-request views."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from backends.base import Tensors


def batch_key(inputs: Tensors) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    """Requests batch together only when every input agrees past the batch dimension."""
    return tuple((name, a.shape[1:], a.dtype.str) for name, a in inputs.items())


def merge(parts: Sequence[Tensors]) -> Tensors:
    """One concatenation per input; a single request is passed through without a copy."""
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


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
