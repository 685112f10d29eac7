"""Tensor specs, data types and the config.pbtxt a deploy writes (Triton's ModelConfig, through
the project's own schema in backends/proto)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from google.protobuf import text_format

from backends.common import datatypes
from backends.proto import model_config_pb2 as mc
from clipperd_admin.errors import InvalidModelName

# a name that is a folder, a URL segment and a file name everywhere without escaping
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}")

_NUMPY_KINDS: dict[str, str] = {  # numpy dtype name -> wire name, for the types numpy holds as such
    d.numpy.name: d.wire for d in datatypes.BY_WIRE.values() if d.wire not in ("BYTES", "BF16")
}
WIRE_TO_NUMPY: dict[str, str] = {wire: name for name, wire in _NUMPY_KINDS.items()} | {"STRING": "object"}
WIRE_TYPES = frozenset(WIRE_TO_NUMPY) | {"BYTES"}


def check_model_name(name: object) -> str:
    """The name, or InvalidModelName saying why the repository cannot hold it."""
    if not isinstance(name, str) or not name:
        raise InvalidModelName(f"a model name must be a non-empty string, not {name!r}")
    if "/" in name or "\\" in name or ".." in name or name.startswith("."):
        raise InvalidModelName(f"invalid model name {name[:64]!r}: no '/', '\\', '..' or leading '.'")
    if not _NAME.fullmatch(name):
        raise InvalidModelName(
            f"invalid model name {name[:64]!r}: use letters, digits, '_', '-' and '.' (at most 200 characters)"
        )
    return name


def check_version(version: object) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"a model version is a positive integer, not {version!r}")
    return version


def wire_type(dtype: Any) -> str:
    """``FP32`` for ``"FP32"``, ``"TYPE_FP32"``, ``np.float32``, ``torch.float32``'s numpy name...;
    ``STRING`` for bytes, str and object arrays."""
    if isinstance(dtype, str):
        upper = dtype.upper().removeprefix("TYPE_")
        if upper in WIRE_TYPES:
            return "STRING" if upper == "BYTES" else upper
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"unknown data type {dtype!r}") from None
    if resolved.kind in "OSU":
        return "STRING"
    if resolved.name not in _NUMPY_KINDS:
        raise ValueError(f"data type {resolved.name} cannot be served (no KServe v2 type)")
    return _NUMPY_KINDS[resolved.name]


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: its name, data type (``FP32``, ``np.float32``...) and dims without
    the batch dimension when the model batches (-1: any size)."""

    name: str
    data_type: str
    dims: tuple[int, ...] = field(default=())

    @classmethod
    def of(cls, spec: TensorSpec | Sequence[Any]) -> TensorSpec:
        """A TensorSpec from itself or from a ``(name, data_type, dims)`` tuple."""
        if isinstance(spec, TensorSpec):
            name, data_type, dims = spec.name, spec.data_type, spec.dims
        elif isinstance(spec, Sequence) and not isinstance(spec, str) and len(spec) == 3:
            name, data_type, dims = spec
        else:
            raise ValueError(f"a tensor is a TensorSpec or a (name, data_type, dims) tuple, not {spec!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"a tensor name must be a non-empty string, not {name!r}")
        shape = tuple(int(d) for d in dims)
        if any(d == 0 or d < -1 for d in shape):
            raise ValueError(f"tensor '{name}': dims must be positive or -1, not {list(shape)}")
        return cls(name, wire_type(data_type), shape)


# Clipper's input types: one input, a variable-length vector per row ("strings": one string per row)
CLIPPER_INPUT_TYPES: dict[str, tuple[str, tuple[int, ...]]] = {
    "ints": ("INT32", (-1,)),
    "floats": ("FP32", (-1,)),
    "doubles": ("FP64", (-1,)),
    "bytes": ("UINT8", (-1,)),
    "strings": ("STRING", (1,)),
}


def specs(tensors: str | Sequence[TensorSpec | Sequence[Any]], kind: str) -> list[TensorSpec]:
    """Tensor specs from a list of them (or of tuples), or from one of Clipper's input type names
    (one tensor named INPUT or OUTPUT)."""
    if isinstance(tensors, str):
        if tensors not in CLIPPER_INPUT_TYPES:
            raise ValueError(f"unknown {kind} type {tensors!r} (Clipper's: {', '.join(CLIPPER_INPUT_TYPES)})")
        data_type, dims = CLIPPER_INPUT_TYPES[tensors]
        return [TensorSpec(kind.upper(), data_type, dims)]
    result = [TensorSpec.of(t) for t in tensors]
    if not result:
        raise ValueError(f"at least one {kind} is needed")
    names = [t.name for t in result]
    if len(set(names)) != len(names):
        raise ValueError(f"{kind} names must differ: {names}")
    return result


@dataclass(frozen=True)
class Serving:
    """How the server runs a deployed model: batching and instances (config.pbtxt fields)."""

    max_batch_size: int = 64  # 0: no batching; > 0: dynamic batching
    batch_delay_us: int | None = None  # max_queue_delay_microseconds
    instance_count: int = 1
    instance_kind: str = "KIND_CPU"  # KIND_CPU, KIND_GPU or KIND_AUTO
    parameters: Mapping[str, str] = field(default_factory=dict)

    def check(self) -> None:
        if self.max_batch_size < 0:
            raise ValueError(f"max_batch_size must be >= 0, not {self.max_batch_size}")
        if self.instance_count < 1:
            raise ValueError(f"instance_count must be >= 1, not {self.instance_count}")
        if self.instance_kind not in ("KIND_CPU", "KIND_GPU", "KIND_AUTO"):
            raise ValueError(f"instance_kind must be KIND_CPU, KIND_GPU or KIND_AUTO, not {self.instance_kind!r}")
        if self.batch_delay_us is not None and self.batch_delay_us < 0:
            raise ValueError(f"batch_delay_us must be >= 0, not {self.batch_delay_us}")


def build_config(
    name: str,
    serving: Serving,
    *,
    backend: str = "",
    platform: str = "",
    inputs: Sequence[TensorSpec] = (),
    outputs: Sequence[TensorSpec] = (),
    extra_parameters: Mapping[str, str] | None = None,
) -> mc.ModelConfig:
    serving.check()
    config = mc.ModelConfig(name=name, backend=backend, platform=platform, max_batch_size=serving.max_batch_size)
    for spec in inputs:
        config.input.add(name=spec.name, data_type=_enum(spec), dims=list(spec.dims))
    for spec in outputs:
        config.output.add(name=spec.name, data_type=_enum(spec), dims=list(spec.dims))
    if serving.max_batch_size > 0:
        config.dynamic_batching.SetInParent()
        if serving.batch_delay_us is not None:
            config.dynamic_batching.max_queue_delay_microseconds = serving.batch_delay_us
    config.instance_group.add(
        count=serving.instance_count, kind=mc.ModelInstanceGroup.Kind.Value(serving.instance_kind)
    )
    for key, value in {**serving.parameters, **(extra_parameters or {})}.items():
        config.parameters[key].string_value = str(value)
    return config


def _enum(spec: TensorSpec) -> mc.DataType.ValueType:
    return mc.DataType.Value(f"TYPE_{spec.data_type}")


def config_text(config: mc.ModelConfig) -> str:
    return "# written by clipperd_admin\n" + text_format.MessageToString(config)


def parse_config(text: str, source: str) -> mc.ModelConfig:
    config = mc.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        raise ValueError(f"{source} does not parse: {error}") from None
    return config


def _tensor_key(tensor: mc.ModelInput | mc.ModelOutput) -> tuple[str, int, tuple[int, ...]]:
    return (tensor.name, tensor.data_type, tuple(tensor.dims))


def signature(config: mc.ModelConfig) -> tuple[Any, ...]:
    """What a new version must share with the versions already there: the served config is one
    per model, so its backend, batching and tensors must fit every version."""
    tensors = tuple(_tensor_key(t) for t in config.input) + tuple(_tensor_key(t) for t in config.output)
    return (config.backend, config.platform, config.max_batch_size, tensors)
