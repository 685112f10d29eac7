"""Every request is checked against its model's config before it is queued: names, data types,
shapes, batch size, requested outputs and the reserved parameters. Built once per model version,
so the hot path is dictionary lookups and tuple compares."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from backends.base import Tensors
from backends.common import datatypes
from backends.common.errors import InvalidArgument
from backends.common.tensors import shape_matches
from backends.proto import model_config_pb2 as mc
from server.core.messages import Params

if TYPE_CHECKING:
    from server.core.inference import Named, TensorIn

# reserved request parameters and the Python types they must have
_RESERVED: dict[str, tuple[type, ...]] = {
    "priority": (int,),
    "timeout": (int,),
    "binary_data_output": (bool,),
    "sequence_id": (int, str),
    "sequence_start": (bool,),
    "sequence_end": (bool,),
}


@dataclass(frozen=True)
class InputSpec:
    name: str
    datatype: str  # wire name
    dims: tuple[int, ...]  # without the batch dimension
    reshape: tuple[int, ...] | None
    optional: bool

    def accepts(self, shape: tuple[int, ...]) -> bool:
        return shape_matches(self.dims, shape)


class ModelSignature:
    """What a model version accepts and returns, derived from its config."""

    def __init__(self, config: mc.ModelConfig) -> None:
        self.model = config.name
        self.max_batch_size = config.max_batch_size
        self.inputs = {i.name: _input_spec(i) for i in config.input}
        self.required = [n for n, s in self.inputs.items() if not s.optional]
        self.outputs = {o.name: datatypes.from_config(mc.DataType.Name(o.data_type)).wire for o in config.output}
        self.decoupled = config.model_transaction_policy.decoupled  # answers only through inference.infer_stream

    def validate(
        self, inputs: Sequence[TensorIn], outputs: Sequence[Named] = (), parameters: Params | None = None
    ) -> tuple[Tensors, int]:
        """The model's inputs as named arrays and the request's batch size (1 when unbatched).
        An input whose ``datatype`` is "" (one from inside the server) has its array's type."""
        if parameters:
            check_parameters(parameters)
        arrays: Tensors = {}
        batch = -1
        for tensor in inputs:
            spec = self._spec(tensor.name)
            if tensor.name in arrays:
                raise InvalidArgument(f"input '{tensor.name}' is given more than once")
            data = tensor.data
            self._check_type(spec, tensor.datatype or _wire_type(data, spec.datatype))
            batch = self._accept(spec, tuple(tensor.shape), data, batch, arrays)
        self._check_required(arrays)
        if outputs:
            self._check_outputs(outputs)
        return arrays, max(batch, 1)

    def _check_required(self, arrays: Tensors) -> None:
        missing = [n for n in self.required if n not in arrays] if len(arrays) < len(self.required) else []
        if missing:
            raise InvalidArgument(
                f"expected {len(self.required)} inputs but got {len(arrays)} inputs for model "
                f"'{self.model}'; missing: {', '.join(repr(n) for n in missing[:8])}"
            )

    def _spec(self, name: str) -> InputSpec:
        spec = self.inputs.get(name)
        if spec is None:
            raise InvalidArgument(f"unexpected inference input '{name[:64]}' for model '{self.model}'")
        return spec

    def _check_type(self, spec: InputSpec, datatype: str) -> None:
        if datatype != spec.datatype:
            raise InvalidArgument(
                f"inference input '{spec.name}' data-type is '{datatype}', but model "
                f"'{self.model}' expects '{spec.datatype}'"
            )

    def _accept(self, spec: InputSpec, shape: tuple[int, ...], data: np.ndarray, batch: int, arrays: Tensors) -> int:
        """Checks one input's shape, stores it (reshaped as the config says) and returns the batch size."""
        batch = self._check_shape(spec, spec.name, shape, batch)
        if spec.reshape is not None:
            data = data.reshape(((batch,) if self.max_batch_size else ()) + spec.reshape)
        arrays[spec.name] = data
        return batch

    def _check_shape(self, spec: InputSpec, name: str, shape: tuple[int, ...], batch: int) -> int:
        given = shape
        if self.max_batch_size > 0:
            if not shape or shape[0] < 1:
                raise InvalidArgument(
                    f"input '{name}' has shape {list(given)}: model '{self.model}' needs a batch "
                    f"dimension of at least 1 first"
                )
            if shape[0] > self.max_batch_size:
                raise InvalidArgument(
                    f"inference request batch-size must be <= {self.max_batch_size} for '{self.model}', got {shape[0]}"
                )
            if batch not in (-1, shape[0]):
                raise InvalidArgument(f"input '{name}' has batch size {shape[0]}, other inputs {batch}")
            batch, shape = shape[0], shape[1:]
        if not spec.accepts(shape):
            want = ([-1] if self.max_batch_size > 0 else []) + list(spec.dims)
            raise InvalidArgument(
                f"unexpected shape for input '{name}' for model '{self.model}'. Expected {want}, got {list(given)}"
            )
        return batch

    def _check_outputs(self, outputs: Sequence[Named]) -> None:
        seen: set[str] = set()
        for output in outputs:
            if output.name not in self.outputs:
                raise InvalidArgument(f"unexpected inference output '{output.name[:64]}' for model '{self.model}'")
            if output.name in seen:
                raise InvalidArgument(f"output '{output.name}' is requested more than once")
            seen.add(output.name)


def _wire_type(array: np.ndarray, expected: str) -> str:
    """The wire type of an array: ``expected`` when the array's dtype is that type's (the common
    case, one compare); BF16 travels as raw uint16 words, so those pass as BF16."""
    want = datatypes.BY_WIRE[expected]
    if array.dtype == want.numpy or (expected == "BYTES" and array.dtype.kind in "OSU"):
        return expected
    try:
        return datatypes.wire_name_of_array(array)
    except InvalidArgument:
        return str(array.dtype)


def _input_spec(tensor: mc.ModelInput) -> InputSpec:
    reshape = tuple(tensor.reshape.shape) if tensor.HasField("reshape") else None
    wire = datatypes.from_config(mc.DataType.Name(tensor.data_type)).wire
    return InputSpec(tensor.name, wire, tuple(tensor.dims), reshape, tensor.optional)


def check_parameters(parameters: Params) -> None:
    """Reserved parameters must have their documented types and ranges."""
    if not parameters:
        return
    for name, value in parameters.items():  # a request carries few: look each one up
        kinds = _RESERVED.get(name)
        if kinds is None:
            continue
        if not isinstance(value, kinds) or (bool in kinds) != isinstance(value, bool):
            want = " or ".join(k.__name__ for k in kinds)
            raise InvalidArgument(f"parameter '{name}' must be {want}, got {type(value).__name__}")
        if name in ("priority", "timeout") and isinstance(value, int) and value < 0:
            raise InvalidArgument(f"parameter '{name}' must not be negative, got {value}")
        if name == "sequence_id":
            _check_sequence_id(value)


MAX_SEQUENCE_ID_LENGTH = 256  # characters of a string correlation id (a key of the sequence table)


def _check_sequence_id(value: object) -> None:
    """A correlation id is an unsigned 64-bit integer or a short string, as Triton's."""
    if isinstance(value, int) and not 0 <= value < 2**64:
        raise InvalidArgument(f"parameter 'sequence_id' must be an unsigned 64-bit integer, got {value}")
    if isinstance(value, str) and len(value) > MAX_SEQUENCE_ID_LENGTH:
        raise InvalidArgument(
            f"parameter 'sequence_id' is a string of {len(value)} characters; "
            f"at most {MAX_SEQUENCE_ID_LENGTH} are allowed"
        )
