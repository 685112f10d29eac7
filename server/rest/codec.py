"""KServe v2 HTTP/REST bodies (JSON, and Triton's binary tensor extension) <-> the
transport-neutral request and response."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from backends.common import datatypes
from backends.common.datatypes import DataType
from backends.common.errors import InvalidArgument
from backends.common.tensors import (
    array_from_raw,
    array_from_values,
    array_to_raw,
    bytes_array_from_list,
)
from server.core.messages import InferRequest, InferResponse, InputTensor, Param, Params, RequestedOutput
from server.core.shared_memory import SHM_PLACEHOLDER, SHM_REGION

HEADER_LENGTH = "Inference-Header-Content-Length"
_NOT_IN_JSON = ("FP16", "BF16")  # no JSON number form: binary data only
# Tensors have at most a handful of dimensions; deeper data is an attack on the walker's stack.
# (Whole documents deeper than the interpreter's recursion limit already fail in json.loads.)
MAX_DATA_DEPTH = 64
_ENCODER = json.JSONEncoder(separators=(",", ":"))  # made once: json.dumps with options makes one per call


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary data after it."""
    if header_length is None:
        return body, memoryview(b"")
    text = header_length.strip()
    if not text.isdigit():
        raise InvalidArgument(f"{HEADER_LENGTH} must be a non-negative integer, got {header_length[:32]!r}")
    length = int(text)
    if length > len(body):
        raise InvalidArgument(f"{HEADER_LENGTH} {length} is larger than the {len(body)}-byte body")
    view = memoryview(body)
    return bytes(view[:length]), view[length:]


def parse_json(data: bytes, what: str = "request body") -> dict[str, Any]:
    if not data or data.isspace():  # isspace stops at the first other byte; strip() would copy it all
        return {}
    try:
        parsed = json.loads(data.decode())  # UTF-8 only, as JSON over HTTP is; skips json's encoding sniffing
    except RecursionError:
        raise InvalidArgument(f"{what} is JSON nested too deeply to parse") from None
    except ValueError as error:
        raise InvalidArgument(f"{what} is not valid JSON: {str(error)[:200]}") from None
    if not isinstance(parsed, dict):
        raise InvalidArgument(f"{what} must be a JSON object")
    return parsed


def _field(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str, default: Any = None) -> Any:
    value = obj.get(key, default)
    if value.__class__ is kind:  # the common case, and what JSON gives: no subclasses (bool is not an int here)
        return value
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise InvalidArgument(f"{what}: '{key}' is missing or has the wrong JSON type")
    return value


def _parameters(obj: dict[str, Any], what: str) -> Params:
    if "parameters" not in obj:
        return {}
    params = _field(obj, "parameters", dict, what)
    for key, value in params.items():
        if not isinstance(value, bool | int | float | str):
            raise InvalidArgument(f"{what}: parameter '{key[:64]}' must be a boolean, number or string")
    return dict(params)


def decode_request(model: str, version: str, body: bytes, header_length: str | None) -> InferRequest:
    header, binary = split_body(body, header_length)
    obj = parse_json(header)
    inputs_json = _field(obj, "inputs", list, "request")
    offset = 0
    inputs = []
    for item in inputs_json:
        tensor, offset = _decode_input(item, binary, offset)
        inputs.append(tensor)
    if offset != len(binary):
        raise InvalidArgument(f"{len(binary) - offset} bytes of binary data are not claimed by any input")
    outputs = [_decode_output(o) for o in _field(obj, "outputs", list, "request", [])]
    request_id = _field(obj, "id", str, "request", "")
    return InferRequest(model, version, request_id, inputs, outputs, _parameters(obj, "request"))


def _decode_input(item: Any, binary: memoryview, offset: int) -> tuple[InputTensor, int]:
    if not isinstance(item, dict):
        raise InvalidArgument("each input must be a JSON object")
    name = _field(item, "name", str, "input")
    what = f"input '{name[:64]}'"
    dtype = datatypes.from_wire(_field(item, "datatype", str, what))
    shape = _field(item, "shape", list, what)
    if not all(d.__class__ is int for d in shape):  # JSON integers; True is not a dimension
        raise InvalidArgument(f"{what}: shape must be a list of integers")
    params = _parameters(item, what)
    if SHM_REGION in params:  # the DataPlane reads it from the region
        if "data" in item or "binary_data_size" in params:
            raise InvalidArgument(f"{what}: is in shared memory and cannot have data too")
        return InputTensor(name, dtype.wire, shape, SHM_PLACEHOLDER, params), offset
    size = params.pop("binary_data_size", None)
    if size is not None:
        if "data" in item:
            raise InvalidArgument(f"{what}: has both 'data' and binary_data_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidArgument(f"{what}: binary_data_size must be a non-negative integer")
        if offset + size > len(binary):
            raise InvalidArgument(f"{what}: binary_data_size {size} runs past the end of the binary data")
        data = array_from_raw(binary[offset : offset + size], dtype, shape, name)
        return InputTensor(name, dtype.wire, shape, data, params), offset + size
    if "data" not in item:
        raise InvalidArgument(f"{what} has no data")
    data = _from_json(item["data"], dtype, shape, name)
    return InputTensor(name, dtype.wire, shape, data, params), offset


def _flatten(values: list[Any], out: list[Any], depth: int = 1) -> None:
    if depth > MAX_DATA_DEPTH:
        raise InvalidArgument(f"tensor data is nested deeper than {MAX_DATA_DEPTH} levels")
    for item in values:
        if isinstance(item, list):
            _flatten(item, out, depth + 1)
        else:
            out.append(item)


def _json_types_ok(dtype: DataType, values: list[Any]) -> bool:
    if dtype.wire == "BYTES":
        return all(isinstance(v, str) for v in values)
    if dtype.wire == "BOOL":
        return all(isinstance(v, bool) for v in values)
    if dtype.numpy.kind == "f":
        return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def _from_json(data: Any, dtype: DataType, shape: list[int], name: str) -> np.ndarray:
    what = f"input '{name[:64]}'"
    if dtype.wire in _NOT_IN_JSON:
        raise InvalidArgument(f"{what}: {dtype.wire} data cannot be sent as JSON; use the binary tensor extension")
    values: list[Any] = []
    _flatten(data if isinstance(data, list) else [data], values)
    if not _json_types_ok(dtype, values):
        raise InvalidArgument(f"{what}: JSON data holds values that are not {dtype.wire}")
    if dtype.wire == "BYTES":
        return bytes_array_from_list((v.encode() for v in values), shape, name)
    return array_from_values(values, dtype, shape, what)


def _decode_output(item: Any) -> RequestedOutput:
    if not isinstance(item, dict):
        raise InvalidArgument("each requested output must be a JSON object")
    name = _field(item, "name", str, "output")
    return RequestedOutput(name, _parameters(item, f"output '{name[:64]}'"))


def binary_choices(request: InferRequest) -> dict[str, bool]:
    """Which requested outputs go binary; removes the transport's own parameters. The key ""
    holds the default for outputs not named."""
    default = request.parameters.pop("binary_data_output", False)
    choices = {"": bool(default)}
    for output in request.outputs:
        choices[output.name] = bool(output.parameters.pop("binary_data", default))
    return choices


def infer_response_body(response: InferResponse, binary: dict[str, bool]) -> tuple[bytes, int | None]:
    """The body, and the JSON header's length when binary data follows it."""
    obj: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        obj["id"] = response.id
    if response.parameters:
        obj["parameters"] = response.parameters
    chunks: list[bytes] = []
    obj["outputs"] = [_encode_output(t, binary.get(t.name, binary[""]), chunks) for t in response.outputs]
    header = _ENCODER.encode(obj).encode()
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def _encode_output(tensor: Any, binary: bool, chunks: list[bytes]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
    if SHM_REGION in tensor.parameters:
        return out  # its data is in shared memory; no parameters either, as Triton answers
    params: dict[str, Param] = dict(tensor.parameters)
    dtype = datatypes.BY_WIRE[tensor.datatype]
    if binary or dtype.wire == "BF16":
        raw = array_to_raw(tensor.data, dtype)
        chunks.append(raw)
        params["binary_data_size"] = len(raw)
    elif dtype.wire == "BYTES":
        out["data"] = [_text(v) for v in tensor.data.reshape(-1)]
    else:
        out["data"] = tensor.data.reshape(-1).tolist()
    if params:
        out["parameters"] = params
    return out


def _text(item: Any) -> str:
    if isinstance(item, bytes):
        return item.decode("utf-8", errors="replace")
    return str(item)
