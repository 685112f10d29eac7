"""Tensor merge and split, apart from queueing: many requests' inputs become one batch, one
batch's outputs become per-request views."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from backends.base import Tensors
from backends.common import datatypes
from backends.common.errors import ModelExecutionError
from backends.proto import model_config_pb2 as mc


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


class OutputChecker:
    """Checks a model's outputs against its config once per batch, so a wrong model fails its
    requests with a clear error instead of sending clients data the config does not describe."""

    def __init__(self, config: mc.ModelConfig) -> None:
        self.model = config.name
        self.batched = config.max_batch_size > 0
        self.specs = [
            (o.name, datatypes.from_config(mc.DataType.Name(o.data_type)), tuple(o.dims)) for o in config.output
        ]

    def check(self, outputs: object, batch_size: int) -> Tensors:
        if not isinstance(outputs, dict):
            raise ModelExecutionError(f"model '{self.model}' returned {type(outputs).__name__}, not a dict")
        for name, dtype, dims in self.specs:
            array = outputs.get(name)
            if array is None:
                raise ModelExecutionError(f"model '{self.model}' did not return output '{name}'")
            if not isinstance(array, np.ndarray):
                array = outputs[name] = np.asarray(array)
            self._check_type(name, dtype, array)
            self._check_shape(name, dims, array, batch_size)
        return outputs

    def _check_type(self, name: str, dtype: datatypes.DataType, array: np.ndarray) -> None:
        if dtype.wire == "BYTES":
            ok = array.dtype.kind in "OSU"
        else:
            ok = array.dtype == dtype.numpy
        if not ok:
            raise ModelExecutionError(
                f"model '{self.model}' returned output '{name}' as {array.dtype}, but its config says {dtype.config}"
            )

    def _check_shape(self, name: str, dims: tuple[int, ...], array: np.ndarray, batch_size: int) -> None:
        shape = array.shape[1:] if self.batched else array.shape
        ok = len(shape) == len(dims) and all(d in (-1, s) for d, s in zip(dims, shape, strict=True))
        if self.batched and (array.ndim == 0 or array.shape[0] != batch_size):
            ok = False
        if not ok:
            want = ([batch_size] if self.batched else []) + list(dims)
            raise ModelExecutionError(
                f"model '{self.model}' returned output '{name}' with shape {list(array.shape)}, expected {want}"
            )
