"""Triton's generate extension: ``POST /v2/models/{m}[/versions/{v}]/generate`` (one JSON answer)
and ``/generate_stream`` (server-sent events: ``data: {json}`` and a blank line per answer).

The request is one JSON object. As Triton maps it: ``id`` is the request's id; a field named
like one of the model's inputs is that input, a scalar or a flat list of scalars of the input's
type (strings for BYTES, booleans for BOOL, numbers otherwise), shaped by the input's dims as
Triton does (fixed dims take their share of the elements, the innermost variable one the rest,
other variable ones 1; the batch dimension of a batched model is one of those); any other field
whose value is a string, a number or a boolean is a request parameter; ``parameters``, an
object, holds more of either. Anything else (an object or a list that names no input, a value
of the wrong type, a shape that cannot be filled) is 400 with a message naming the field.

Each answer is a JSON object: ``model_name``, ``model_version``, ``id`` when the request had
one, and each output by its name: the single element itself, or a flat list of them (BYTES as
UTF-8 text). An answer the model sent as an error is ``{"error": ...}``. ``/generate`` wants
exactly one answer with outputs (any model; a decoupled one must send one); otherwise 500, as
Triton answers. ``/generate_stream`` sends each answer as it comes; an error before the first
answer (an unknown model, a bad body) is a plain JSON error with its status."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncGenerator
from typing import Any

import numpy as np

from backends.common import datatypes
from backends.common.errors import ClipperdError, InternalError, InvalidArgument
from server.core.inference import Streamed
from server.core.messages import InferRequest, InferResponse, InputTensor, ModelMetadata, Params, TensorMetadata

SSE = "text/event-stream; charset=utf-8"
_RESERVED = ("id", "parameters")


def generate_request(meta: ModelMetadata, version: str, body: dict[str, Any]) -> InferRequest:
    """The inference request a generate body asks for (see the module's doc)."""
    inputs = {t.name: t for t in meta.inputs}
    request_id = body.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidArgument("generate request field 'id' must be a string")
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidArgument("generate request field 'parameters' must be a JSON object")
    tensors: dict[str, InputTensor] = {}
    params: Params = {}
    fields = [(k, v) for k, v in body.items() if k not in _RESERVED] + list(parameters.items())
    for key, value in fields:
        if key in tensors or key in params:
            raise InvalidArgument(f"generate request field '{key[:64]}' is given twice")
        if key in inputs:
            tensors[key] = _tensor(inputs[key], value)
        elif isinstance(value, str | bool | int | float) and not _bad_number(value):
            params[key] = value
        else:
            raise InvalidArgument(
                f"generate request field '{key[:64]}' is not an input of model '{meta.name}' "
                "and not a parameter (a string, a number or a boolean)"
            )
    return InferRequest(meta.name, version, request_id, list(tensors.values()), parameters=params)


def _bad_number(value: object) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _tensor(meta: TensorMetadata, value: Any) -> InputTensor:
    items = value if isinstance(value, list) else [value]
    dtype = datatypes.from_wire(meta.datatype)
    if any(isinstance(item, list | dict) or item is None for item in items):
        raise InvalidArgument(f"input '{meta.name}': a generate request gives a scalar or a flat list of scalars")
    array = _array(meta.name, meta.datatype, dtype.numpy, items)
    shape = _shape(meta, len(items))
    return InputTensor(meta.name, meta.datatype, shape, array.reshape(shape))


def _is_number(item: object) -> bool:
    return isinstance(item, int | float) and not isinstance(item, bool)


def _is_integer(item: object) -> bool:
    return isinstance(item, int) and not isinstance(item, bool)


def _is_text(item: object) -> bool:
    return isinstance(item, str)


def _is_bool(item: object) -> bool:
    return isinstance(item, bool)


# wire type -> (what its JSON values must be, their name in the error)
_KINDS = {
    "BYTES": (_is_text, "strings"),
    "BOOL": (_is_bool, "booleans"),
    **dict.fromkeys(("FP16", "FP32", "FP64", "BF16"), (_is_number, "numbers")),
}


def _array(name: str, wire: str, numpy_type: np.dtype[Any], items: list[Any]) -> np.ndarray:
    accepts, kind = _KINDS.get(wire, (_is_integer, "integers"))
    if not all(accepts(item) for item in items):
        raise InvalidArgument(f"input '{name}' ({wire}) takes {kind}")
    if wire == "BYTES":
        try:
            return np.array([item.encode() for item in items], dtype=object)
        except UnicodeEncodeError:  # a lone surrogate is valid JSON but not UTF-8
            raise InvalidArgument(f"input '{name}' ({wire}) takes text that UTF-8 can encode") from None
    if wire == "BF16":  # raw bfloat16 words, as the server carries them
        return (np.array(items, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
    if kind == "integers":
        info = np.iinfo(numpy_type)
        if any(item < info.min or item > info.max for item in items):
            raise InvalidArgument(f"input '{name}' ({wire}) takes integers from {info.min} to {info.max}")
    return np.array(items, dtype=numpy_type)


def _shape(meta: TensorMetadata, count: int) -> list[int]:
    """Triton's rule: fixed dims take their share, the innermost variable dim the rest, the
    other variable dims 1."""
    shape = list(meta.shape)
    left = count
    for dim in shape:
        if dim != -1:
            if dim == 0 or left % dim:
                raise InvalidArgument(f"input '{meta.name}': {count} element(s) do not fill its shape {meta.shape}")
            left //= dim
    for index in range(len(shape) - 1, -1, -1):
        if shape[index] == -1:
            shape[index], left = left, 1
    if left != 1:
        raise InvalidArgument(f"input '{meta.name}': {count} element(s) do not fill its shape {meta.shape}")
    return shape


def answer_json(response: InferResponse) -> dict[str, Any]:
    """One answer as the generate extension writes it."""
    out: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        out["id"] = response.id
    for tensor in response.outputs:
        values = _values(tensor.datatype, tensor.data)
        out[tensor.name] = values[0] if len(values) == 1 else values
    return out


def _values(wire: str, data: np.ndarray) -> list[Any]:
    flat = data.reshape(-1)
    if wire == "BYTES":
        return [bytes(item).decode(errors="replace") for item in flat]
    if wire == "BF16":
        return (flat.astype(np.uint32) << 16).view(np.float32).tolist()  # type: ignore[no-any-return]
    return flat.tolist()  # type: ignore[no-any-return]


def _item_json(item: Streamed[InferResponse]) -> dict[str, Any] | None:
    if item.error is not None:
        return {"error": item.error.message}
    return None if item.response is None else answer_json(item.response)


async def one_answer(answers: AsyncGenerator[Streamed[InferResponse], None]) -> dict[str, Any]:
    """``/generate``: the one answer with outputs (an error the model sent is raised)."""
    found: list[dict[str, Any]] = []
    async for item in answers:
        if item.error is not None:
            raise item.error
        if item.response is not None:
            found.append(answer_json(item.response))
    if len(found) != 1:
        raise InternalError(
            f"generate expects the model to send exactly 1 answer, it sent {len(found)}: use generate_stream"
        )
    return found[0]


async def first_event(answers: AsyncGenerator[Streamed[InferResponse], None]) -> bytes:
    """``/generate_stream``'s first event, awaited before the answer's status is chosen: a
    request that fails before the model runs gets its error status (raised from here)."""
    async for item in answers:
        body = _item_json(item)
        if body is not None:
            return _event(body)
    return b""


async def events(first: bytes, answers: AsyncGenerator[Streamed[InferResponse], None]) -> AsyncGenerator[bytes, None]:
    """The server-sent events, the first one already taken; closing this closes the answers."""
    try:
        yield first
        async for item in answers:
            body = _item_json(item)
            if body is not None:
                yield _event(body)
    except ClipperdError as error:  # after the status line: it travels as an event
        yield _event({"error": error.message})
    finally:
        await answers.aclose()


def _event(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"
