"""KServe v2 gRPC messages <-> the transport-neutral request and response."""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np

from backends.common import datatypes, protowire
from backends.common.datatypes import CONTENTS_FIELD, DataType
from backends.common.errors import InvalidArgument
from backends.common.tensors import (
    array_from_raw,
    array_from_values,
    array_to_raw,
    bytes_array_from_list,
)
from server.core.messages import InferRequest, InferResponse, InputTensor, Param, Params, RequestedOutput
from server.core.shared_memory import SHM_PLACEHOLDER, SHM_REGION
from server.proto import grpc_service_pb2 as pb

_ALL_CONTENTS = sorted(set(CONTENTS_FIELD.values()))


def decode_parameters(parameters: Mapping[str, pb.InferParameter]) -> Params:
    if not parameters:  # the common case, on every tensor of every request
        return {}
    decoded: Params = {}
    for key in parameters:  # keys, then lookups: items() of a protobuf map iterates in Python
        value = parameters[key]
        choice = value.WhichOneof("parameter_choice")
        if choice is None:
            raise InvalidArgument(f"parameter '{key[:64]}' has no value")
        decoded[key] = getattr(value, choice)
    return decoded


def encode_parameter(target: pb.InferParameter, value: Param) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)


def decode_request(message: pb.ModelInferRequest) -> InferRequest:
    # repeated fields are read as slices: iterating one ends in an IndexError (a formatted
    # message) inside protobuf, a cost on every request
    raw = message.raw_input_contents[:]
    tensors = message.inputs[:]
    in_shm = [SHM_REGION in tensor.parameters for tensor in tensors]
    if raw and len(raw) != in_shm.count(False):
        raise InvalidArgument(
            f"expected {in_shm.count(False)} raw_input_contents entries, one per input not in shared memory, "
            f"got {len(raw)}"
        )
    entries = iter(raw)
    inputs = [
        _decode_input(tensor, next(entries) if raw and not shm else None, shm)
        for tensor, shm in zip(tensors, in_shm, strict=True)
    ]
    requested = message.outputs[:]
    outputs = [RequestedOutput(o.name, decode_parameters(o.parameters)) for o in requested]
    return InferRequest(
        message.model_name,
        message.model_version,
        message.id,
        inputs,
        outputs,
        decode_parameters(message.parameters),
    )


def _decode_input(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None, in_shm: bool) -> InputTensor:
    dtype = datatypes.from_wire(tensor.datatype)
    shape = tensor.shape[:]
    has_contents = tensor.HasField("contents")
    if in_shm:  # the DataPlane reads it from the region
        if has_contents:
            raise InvalidArgument(f"input '{tensor.name[:64]}' is in shared memory and cannot have contents too")
        data = SHM_PLACEHOLDER
    elif raw is not None:
        if has_contents:
            raise InvalidArgument(
                f"input '{tensor.name[:64]}': contents and raw_input_contents cannot be mixed in one request"
            )
        data = array_from_raw(raw, dtype, shape, tensor.name)
    elif has_contents:
        data = _from_contents(tensor, dtype, shape)
    else:
        raise InvalidArgument(f"input '{tensor.name[:64]}' has no data")
    return InputTensor(tensor.name, dtype.wire, shape, data, decode_parameters(tensor.parameters))


def _from_contents(tensor: pb.ModelInferRequest.InferInputTensor, dtype: DataType, shape: list[int]) -> np.ndarray:
    name = tensor.name[:64]
    field = CONTENTS_FIELD.get(dtype.wire)
    if field is None:
        raise InvalidArgument(f"input '{name}': {dtype.wire} data must be sent in raw_input_contents")
    contents = tensor.contents
    for other in _ALL_CONTENTS:
        if other != field and len(getattr(contents, other)):
            raise InvalidArgument(f"input '{name}' of type {dtype.wire} must use {field}, not {other}")
    values = getattr(contents, field)
    if dtype.wire == "BYTES":
        return bytes_array_from_list(values, shape, tensor.name)
    return array_from_values(values, dtype, shape, f"input '{name}'", f" in {field}")


def infer_response_bytes(response: InferResponse) -> bytes:
    """``infer_response_message(response).SerializeToString()``, written directly when nothing
    carries parameters (the common answer): the fixed part of each output (name, type, shape) is
    remembered, the contents appended. Fields go in number order, as protobuf writes them."""
    outputs = response.outputs
    if response.parameters or any(t.parameters for t in outputs):
        return infer_response_message(response).SerializeToString()  # type: ignore[no-any-return]
    parts = [_response_head(response.model_name, response.model_version), protowire.string(3, response.id)]
    parts += [_output_entry(t.name, t.datatype, tuple(t.shape)) for t in outputs]
    contents = [array_to_raw(t.data, datatypes.BY_WIRE[t.datatype]) for t in outputs]
    return b"".join(parts + protowire.repeated_bytes(6, contents))  # raw_output_contents


@functools.lru_cache(maxsize=256)
def _response_head(model_name: str, model_version: str) -> bytes:
    """ModelInferResponse's fields 1 and 2."""
    return protowire.string(1, model_name) + protowire.string(2, model_version)


@functools.lru_cache(maxsize=1024)
def _output_entry(name: str, datatype: str, shape: tuple[int, ...]) -> bytes:
    """One ``outputs`` entry (field 5): InferOutputTensor's name, datatype and packed shape."""
    tensor = protowire.string(1, name) + protowire.string(2, datatype) + protowire.packed_varints(3, shape)
    return protowire.length_delimited(5, tensor)


def infer_response_message(response: InferResponse) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    raw = message.raw_output_contents
    for tensor in response.outputs:
        out = message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        for key, value in tensor.parameters.items():
            encode_parameter(out.parameters[key], value)
        raw.append(array_to_raw(tensor.data, datatypes.BY_WIRE[tensor.datatype]))
    for key, value in response.parameters.items():
        encode_parameter(message.parameters[key], value)
    return message
