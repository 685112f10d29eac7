"""Tensors on the wire: raw little-endian bytes <-> numpy arrays, and BYTES' length prefixes.

Decoding views the wire buffer without a copy where the layout allows (everything but BYTES)."""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from backends.common.datatypes import DataType
from backends.common.errors import InvalidArgument

Tensors = dict[str, np.ndarray]  # named arrays: a model's inputs or outputs


class Identified(dict[str, np.ndarray]):
    """One request's inputs that also say who sent it: the client's request id and its
    parameters (``sequence_id`` among them), for models that see each request on its own
    (Triton Python models' ``request_id()``, ``correlation_id()``, ``parameters()``). The server
    builds these only for such models; every other model gets plain dicts."""

    __slots__ = ("parameters", "request_id")

    def __init__(self, inputs: Tensors, request_id: str, parameters: Mapping[str, Any]) -> None:
        super().__init__(inputs)
        self.request_id = request_id
        self.parameters = parameters  # the request's own mapping: nothing is copied per request

    def copy(self) -> Identified:  # type: ignore[override]  # keeps the identity (sequence controls added)
        return Identified(self, self.request_id, self.parameters)

    def __reduce__(self) -> Any:  # to a worker process (execution_mode process) and back
        return (Identified, (dict(self), self.request_id, dict(self.parameters)))


_INT64_MAX = 2**63 - 1
_LENGTH = struct.Struct("<I")


def shape_matches(dims: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Whether a concrete ``shape`` fits config ``dims`` (-1 matches any size)."""
    if shape == dims:  # the common case, one comparison in C
        return True
    return len(shape) == len(dims) and all(d in (-1, s) for d, s in zip(dims, shape, strict=True))


def element_count(shape: Sequence[int], what: str = "shape") -> int:
    """Elements in a concrete shape; rejects negative dims and shapes whose non-zero dims
    multiply past int64 (a zero elsewhere does not make [0, 2**62, 2**62] a sane shape)."""
    count, extent = 1, 1
    for dim in shape:
        if dim < 0:
            raise InvalidArgument(f"{what} {list(shape)[:8]} has a negative dimension")
        count *= dim
        extent *= max(dim, 1)
        if extent > _INT64_MAX:
            raise InvalidArgument(f"{what} {list(shape)[:8]} has more elements than int64 can count")
    return count


def array_from_raw(raw: bytes | memoryview, dtype: DataType, shape: Sequence[int], name: str) -> np.ndarray:
    """A view of ``raw`` as an array of ``shape`` (a copy only for BYTES, which must be parsed)."""
    itemsize = dtype.itemsize
    if itemsize and shape and min(shape) > 0 and math.prod(shape) * itemsize == len(raw):
        # the common case: no dimension zero or negative, and the elements are the bytes given,
        # so the count cannot overflow; element_count's checks are for the other shapes
        return _reshaped(np.frombuffer(raw, dtype=dtype.numpy), shape, name)
    count = element_count(shape, f"input '{name}' shape")
    if dtype.wire == "BYTES":
        return bytes_array_from_raw(raw, shape, count, name)
    expected = count * itemsize
    if len(raw) != expected:
        raise InvalidArgument(
            f"input '{name}': {len(raw)} bytes of raw data, but shape {list(shape)} of {dtype.wire} needs {expected}"
        )
    return _reshaped(np.frombuffer(raw, dtype=dtype.numpy, count=count), shape, name)


def _reshaped(array: np.ndarray, shape: Sequence[int], name: str) -> np.ndarray:
    """``array`` in ``shape``; a shape numpy cannot hold even empty ([0, 2**62]) is the client's error."""
    try:
        return array.reshape(shape)
    except ValueError:
        raise InvalidArgument(f"input '{name}': shape {list(shape)} is too large") from None


def bytes_array_from_raw(raw: bytes | memoryview, shape: Sequence[int], count: int, name: str) -> np.ndarray:
    """Parses ``count`` uint32-length-prefixed elements that must fill ``raw`` exactly."""
    view = memoryview(raw)
    if count * 4 > len(view):  # every element has a 4-byte length: refuse before allocating
        raise InvalidArgument(f"input '{name}': {len(view)} bytes cannot hold {count} BYTES elements")
    out = np.empty(count, dtype=object)
    offset, end = 0, len(view)
    for i in range(count):
        if offset + 4 > end:
            raise InvalidArgument(f"input '{name}': BYTES data ends before element {i} of {count}")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > end:
            raise InvalidArgument(f"input '{name}': BYTES element {i} runs past the end of the data")
        out[i] = bytes(view[offset : offset + length])
        offset += length
    if offset != end:
        raise InvalidArgument(f"input '{name}': {end - offset} bytes left over after {count} BYTES elements")
    return _reshaped(out, shape, name)


def array_from_values(
    values: Sequence[object], dtype: DataType, shape: Sequence[int], what: str, where: str = ""
) -> np.ndarray:
    """Typed values (gRPC contents, JSON data) as an array of ``shape``; ``what`` names the tensor
    in errors (``input 'X'``), ``where`` the field they came in."""
    count = element_count(shape, f"{what} shape")
    if len(values) != count:
        raise InvalidArgument(f"{what}: {len(values)} values{where} for shape {list(shape)} ({count})")
    try:
        return np.array(values, dtype=dtype.numpy).reshape(shape)
    except (OverflowError, ValueError) as error:
        raise InvalidArgument(f"{what}: values do not fit {dtype.wire}: {error}") from None


def bytes_array_from_list(items: Iterable[bytes], shape: Sequence[int], name: str) -> np.ndarray:
    values = list(items)
    count = element_count(shape, f"input '{name}' shape")
    if len(values) != count:
        raise InvalidArgument(f"input '{name}': {len(values)} elements given for shape {list(shape)}")
    out = np.empty(count, dtype=object)
    out[:] = values
    return out.reshape(shape)


def _as_bytes(item: object) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode()
    if isinstance(item, np.generic | int | float | bool):
        return str(item.item() if isinstance(item, np.generic) else item).encode()
    raise InvalidArgument(f"BYTES element of type {type(item).__name__} cannot be serialized")


def serialize_bytes(array: np.ndarray) -> bytes:
    """Row-major uint32-length-prefixed serialization of a BYTES array (object, str or bytes)."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        data = _as_bytes(item)
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def array_to_raw(array: np.ndarray, dtype: DataType) -> bytes:
    """The wire bytes of ``array`` (one copy; little-endian, row-major)."""
    if dtype.wire == "BYTES":
        return serialize_bytes(array)
    if array.dtype != dtype.numpy:
        array = array.astype(dtype.numpy)
    return np.ascontiguousarray(array).tobytes()


def concatenate(parts: Sequence[Tensors]) -> Tensors:
    """Requests' inputs as one batch: one concatenation per input; a single request passes
    through without a copy."""
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
