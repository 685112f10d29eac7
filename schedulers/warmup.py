"""Model warm-up (``model_warmup``, Triton's semantics): the samples a version runs on each of
its instances before it becomes READY.

Each sample has a ``name``, a ``batch_size`` (at least 1; exactly 1 for a model without
batching; each input is repeated that many times along the batch dimension), ``count``
executions (0 means 1) and its ``inputs``: ``data_type`` and ``dims`` (without the batch
dimension) and one of ``zero_data`` (zeros; empty strings for TYPE_STRING), ``random_data``
(random values; TYPE_STRING gets empty strings, as Triton's) or ``input_data_file``, a file of
the model's ``warmup/`` folder holding the raw bytes of one batch element in row-major order
(TYPE_STRING: each element a 4-byte little-endian length, then its bytes). A bad sample is a load
error naming the sample."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backends.common import datatypes
from backends.common.errors import ClipperdError, InvalidArgument
from backends.common.tensors import Tensors, array_from_raw, element_count
from backends.proto import model_config_pb2 as mc

WARMUP_FOLDER = "warmup"
_MAX_BYTES = 1 << 30  # a sample (and a file, read whole) past 1 GiB cannot be a sane warm-up


@dataclass(frozen=True)
class WarmupSample:
    name: str
    inputs: Tensors  # with the batch dimension when the model batches
    batch_size: int
    count: int


def warmup_samples(config: mc.ModelConfig, model_dir: Path) -> list[WarmupSample]:
    """The config's samples with their data; InvalidArgument naming the sample when one is bad."""
    samples = []
    for index, warmup in enumerate(config.model_warmup):
        name = warmup.name or f"#{index}"
        try:
            samples.append(_sample(config, warmup, name, model_dir))
        except ClipperdError as error:
            raise InvalidArgument(f"model '{config.name}': warm-up sample '{name}': {error.message}") from None
    return samples


def _sample(config: mc.ModelConfig, warmup: mc.ModelWarmup, name: str, model_dir: Path) -> WarmupSample:
    batch_size = warmup.batch_size
    if batch_size < 1:
        raise InvalidArgument("batch_size must be at least 1")
    if config.max_batch_size == 0 and batch_size != 1:
        raise InvalidArgument(f"batch_size is {batch_size} but the model does not batch (it must be 1)")
    if config.max_batch_size and batch_size > config.max_batch_size:
        raise InvalidArgument(f"batch_size {batch_size} exceeds the model's max_batch_size {config.max_batch_size}")
    inputs: Tensors = {}
    for input_name in sorted(warmup.inputs):
        one = _element(warmup.inputs[input_name], input_name, model_dir, batch_size)
        inputs[input_name] = np.repeat(one[None], batch_size, axis=0) if config.max_batch_size else one
    return WarmupSample(name, inputs, batch_size, max(warmup.count, 1))


def _element(spec: mc.ModelWarmup.Input, name: str, model_dir: Path, batch_size: int) -> np.ndarray:
    """One batch element of input ``name``."""
    type_name = mc.DataType.Name(spec.data_type)
    if type_name in ("TYPE_INVALID", "TYPE_BF16"):
        raise InvalidArgument(f"input '{name}': data_type {type_name} cannot be warmed up")
    dtype = datatypes.from_config(type_name)
    shape = [int(d) for d in spec.dims]
    count = element_count(shape, f"input '{name}' dims")
    if count * max(dtype.itemsize, 4) * batch_size > _MAX_BYTES:
        raise InvalidArgument(f"input '{name}': dims {shape[:8]} make a sample larger than 1 GiB")
    source = spec.WhichOneof("input_data_type")
    if source == "input_data_file":
        return array_from_raw(_read(model_dir, spec.input_data_file, name), dtype, shape, name)
    if source is None:
        raise InvalidArgument(f"input '{name}': one of zero_data, random_data, input_data_file is required")
    if dtype.wire == "BYTES":
        return np.full(shape, b"", dtype=object)
    if source == "zero_data":
        return np.zeros(shape, dtype=dtype.numpy)
    return _random(dtype.numpy, count).reshape(shape)


def _random(dtype: np.dtype[np.generic], count: int) -> np.ndarray:
    rng = np.random.default_rng()
    if dtype.kind == "b":
        return rng.integers(0, 2, count).astype(bool)
    if dtype.kind in "iu":
        return rng.integers(0, 128, count).astype(dtype)
    return rng.random(count).astype(dtype)


def _read(model_dir: Path, file_name: str, name: str) -> bytes:
    folder = (model_dir / WARMUP_FOLDER).resolve()
    path = (folder / file_name).resolve()
    if not path.is_relative_to(folder):
        raise InvalidArgument(f"input '{name}': input_data_file '{file_name}' leads outside the warmup folder")
    if not path.is_file():
        raise InvalidArgument(f"input '{name}': input_data_file '{WARMUP_FOLDER}/{file_name}' not found")
    if path.stat().st_size > _MAX_BYTES:
        raise InvalidArgument(f"input '{name}': input_data_file '{file_name}' is larger than 1 GiB")
    return path.read_bytes()
