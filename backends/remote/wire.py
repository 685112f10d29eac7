"""Tensors to and from the KServe v2 wire, as the remote backend's clients send and read them:
gRPC ``ModelInferRequest`` / ``ModelInferResponse`` with raw contents, and HTTP's JSON header
plus binary tensor data (Triton's binary extension), or all-JSON bodies for servers without that
extension (MLServer). Raw contents carry BYTES length-prefixed, as Triton and clipperd read them;
a gRPC request with a BYTES input carries typed contents instead (``bytes_contents``), the form
every KServe v2 server reads (MLServer misreads raw BYTES)."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from backends.common import datatypes, protowire
from backends.common.datatypes import CONTENTS_FIELD, DataType
from backends.common.errors import ClipperdError, InternalError, InvalidArgument
from backends.common.tensors import Tensors, array_from_raw, array_from_values, array_to_raw, bytes_array_from_list
from backends.proto import grpc_service_pb2 as pb


class BadAnswer(InternalError):
    """The remote's answer does not parse: the endpoint is broken (it is ejected)."""


def grpc_request(
    model: str, version: str, inputs: Tensors, types: Mapping[str, DataType], outputs: Sequence[str]
) -> pb.ModelInferRequest:
    request = _request_without_contents(model, version, _described(inputs, types), tuple(outputs))
    typed = _typed(inputs, types)
    for tensor, (name, array) in zip(request.inputs[:], inputs.items(), strict=True):
        dtype = types[name]
        if typed:
            getattr(tensor.contents, CONTENTS_FIELD[dtype.wire]).extend(_values(array, dtype))
        else:
            request.raw_input_contents.append(array_to_raw(array, dtype))
    return request


def grpc_request_bytes(
    model: str, version: str, inputs: Tensors, types: Mapping[str, DataType], outputs: Sequence[str]
) -> bytes:
    """The serialized ``grpc_request``. With raw contents, the part that only the shapes decide
    (names, types, shapes, outputs) is serialized once per shape and the contents are appended:
    protobuf parses concatenated messages as one, and since raw_input_contents is the last field
    the bytes are those ``SerializeToString`` gives (building the message cost ~4 us a call)."""
    if _typed(inputs, types):
        return grpc_request(model, version, inputs, types, outputs).SerializeToString()
    head = _request_head(model, version, _described(inputs, types), tuple(outputs))
    contents = [array_to_raw(array, types[name]) for name, array in inputs.items()]
    # raw_input_contents (field 7) written by hand: a message built only to serialize the
    # contents cost ~4 us a call
    return b"".join([head, *protowire.repeated_bytes(7, contents)])


Described = tuple[tuple[str, str, tuple[int, ...]], ...]  # each input's name, wire type, shape


def _described(inputs: Tensors, types: Mapping[str, DataType]) -> Described:
    return tuple((name, types[name].wire, array.shape) for name, array in inputs.items())


def _request_without_contents(
    model: str, version: str, described: Described, outputs: tuple[str, ...]
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    for name, wire, shape in described:
        request.inputs.add(name=name, datatype=wire, shape=shape)
    for name in outputs:
        request.outputs.add(name=name)
    return request


@functools.lru_cache(maxsize=256)
def _request_head(model: str, version: str, described: Described, outputs: tuple[str, ...]) -> bytes:
    return _request_without_contents(model, version, described, outputs).SerializeToString()


def _typed(inputs: Tensors, types: Mapping[str, DataType]) -> bool:
    """Raw and typed contents cannot mix in one request: typed for all when one input is BYTES
    (and every input has a typed field: FP16 and BF16 travel raw only)."""
    wires = [types[name].wire for name in inputs]
    return "BYTES" in wires and all(w in CONTENTS_FIELD for w in wires)


def _values(array: np.ndarray, dtype: DataType) -> list[Any]:
    """A tensor's elements as Python values for typed contents or JSON, row-major."""
    flat = array.reshape(-1)
    if dtype.wire == "BYTES":
        return [v if isinstance(v, bytes) else str(v).encode() for v in flat]
    return flat.astype(dtype.numpy, copy=False).tolist()  # type: ignore[no-any-return]


def grpc_outputs(response: pb.ModelInferResponse) -> Tensors:
    """The response's tensors (raw contents, or typed contents where a server sends those)."""
    raw = response.raw_output_contents[:]  # slices: see server/grpc/codec.py decode_request
    tensors = response.outputs[:]
    if raw and len(raw) != len(tensors):
        raise BadAnswer(f"{len(raw)} raw outputs for {len(tensors)} output tensors")
    result: Tensors = {}
    for i, tensor in enumerate(tensors):
        dtype = _dtype(tensor.datatype, tensor.name)
        shape = tensor.shape[:]
        try:
            if raw:
                result[tensor.name] = array_from_raw(raw[i], dtype, shape, tensor.name)
            else:
                result[tensor.name] = _from_contents(tensor, dtype, shape)
        except ClipperdError as error:
            raise BadAnswer(f"output '{tensor.name[:64]}': {error.message}") from None
    return result


def _from_contents(tensor: pb.ModelInferResponse.InferOutputTensor, dtype: DataType, shape: list[int]) -> np.ndarray:
    field = CONTENTS_FIELD.get(dtype.wire)
    if field is None:
        raise BadAnswer(f"output '{tensor.name[:64]}' of type {dtype.wire} came without raw contents")
    values = getattr(tensor.contents, field)
    if dtype.wire == "BYTES":
        return bytes_array_from_list(values, shape, tensor.name)
    return array_from_values(list(values), dtype, shape, f"output '{tensor.name[:64]}'")


def _dtype(name: str, tensor: str) -> DataType:
    found = datatypes.BY_WIRE.get(name)
    if found is None:
        raise BadAnswer(f"output '{tensor[:64]}' has an unknown data type {name[:16]!r}")
    return found


def http_request(inputs: Tensors, types: Mapping[str, DataType], outputs: Sequence[str]) -> tuple[list[bytes], int]:
    """The body's parts (JSON header, then each input's bytes) and the header's length."""
    blobs = [array_to_raw(array, types[name]) for name, array in inputs.items()]
    described = tuple(
        (name, array.shape, types[name].wire, len(blob))
        for (name, array), blob in zip(inputs.items(), blobs, strict=True)
    )
    head = _http_header(described, tuple(outputs))
    return [head, *blobs], len(head)


@functools.lru_cache(maxsize=256)
def _http_header(inputs: tuple[tuple[str, tuple[int, ...], str, int], ...], outputs: tuple[str, ...]) -> bytes:
    """The JSON header of a binary request: the same for every batch of the same shapes, so
    made once (JSON encoding is a large share of a small call's cost)."""
    header = {
        "inputs": [
            {"name": name, "shape": list(shape), "datatype": wire, "parameters": {"binary_data_size": size}}
            for name, shape, wire, size in inputs
        ],
        "outputs": [{"name": name, "parameters": {"binary_data": True}} for name in outputs],
    }
    return json.dumps(header, separators=(",", ":")).encode()


def http_json_request(inputs: Tensors, types: Mapping[str, DataType], outputs: Sequence[str]) -> bytes:
    """An all-JSON body, for servers without the binary extension: BYTES elements as UTF-8
    strings (InvalidArgument for one that is not UTF-8: JSON cannot carry it)."""
    tensors = []
    for name, array in inputs.items():
        dtype = types[name]
        data = _values(array, dtype)
        if dtype.wire == "BYTES":
            data = [_utf8(v, name) for v in data]
        tensors.append({"name": name, "shape": list(array.shape), "datatype": dtype.wire, "data": data})
    document = {"inputs": tensors, "outputs": [{"name": name} for name in outputs]}
    return json.dumps(document, separators=(",", ":")).encode()


def _utf8(value: bytes, name: str) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise InvalidArgument(
            f"input '{name[:64]}': an element is not UTF-8, and the remote server takes JSON only"
        ) from None


def http_outputs(body: bytes, header_length: int | None) -> Tensors:
    """The tensors of an HTTP answer: its JSON header (all of it without the binary extension)
    and the binary data that follows, in the outputs' order."""
    view = memoryview(body)
    head = view if header_length is None else view[:header_length]
    if header_length is not None and not 0 <= header_length <= len(body):
        raise BadAnswer(f"Inference-Header-Content-Length {header_length} exceeds the body ({len(body)} bytes)")
    try:
        document = json.loads(bytes(head))
    except ValueError as error:
        raise BadAnswer(f"the JSON header does not parse: {error}") from None
    outputs = document.get("outputs") if isinstance(document, dict) else None
    if not isinstance(outputs, list):
        raise BadAnswer("the answer has no outputs")
    offset = 0 if header_length is None else header_length
    result: Tensors = {}
    for output in outputs:
        name, array, offset = _http_output(output, view, offset)
        result[name] = array
    return result


def _http_output(output: Any, view: memoryview, offset: int) -> tuple[str, np.ndarray, int]:
    if not isinstance(output, dict) or not isinstance(output.get("name"), str):
        raise BadAnswer("an output has no name")
    name: str = output["name"]
    dtype = _dtype(str(output.get("datatype", "")), name)
    shape = output.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
        raise BadAnswer(f"output '{name[:64]}' has no shape")
    size = (output.get("parameters") or {}).get("binary_data_size")
    try:
        if size is None:
            return name, _from_json(output.get("data"), dtype, shape, name), offset
        if not isinstance(size, int) or size < 0 or offset + size > len(view):
            raise BadAnswer(f"output '{name[:64]}': binary_data_size {size} runs past the body")
        return name, array_from_raw(view[offset : offset + size], dtype, shape, name), offset + size
    except BadAnswer:
        raise
    except ClipperdError as error:
        raise BadAnswer(f"output '{name[:64]}': {error.message}") from None


def _from_json(data: Any, dtype: DataType, shape: list[int], name: str) -> np.ndarray:
    if not isinstance(data, list):
        raise BadAnswer(f"output '{name[:64]}' has neither data nor binary data")
    flat = list(np.array(data, dtype=object).reshape(-1)) if data and isinstance(data[0], list) else data
    if dtype.wire == "BYTES":
        return bytes_array_from_list((str(v).encode() if not isinstance(v, bytes) else v for v in flat), shape, name)
    return array_from_values(flat, dtype, shape, f"output '{name[:64]}'")
