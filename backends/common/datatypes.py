"""Data types: the config enum names (TYPE_FP32), the wire names (FP32) and numpy dtypes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backends.common.errors import InvalidArgument


@dataclass(frozen=True)
class DataType:
    wire: str  # KServe v2 name, e.g. "FP32"
    config: str  # ModelConfig enum name, e.g. "TYPE_FP32"
    numpy: np.dtype[np.generic]  # little-endian numpy dtype; object for BYTES
    itemsize: int  # bytes per element on the wire; 0 for BYTES (variable length)


def _dt(wire: str, numpy_name: str) -> DataType:
    config = "TYPE_STRING" if wire == "BYTES" else f"TYPE_{wire}"
    numpy = np.dtype(numpy_name)
    return DataType(wire, config, numpy, 0 if wire == "BYTES" else numpy.itemsize)


# BF16 has no numpy dtype: it travels as raw 2-byte words and backends convert it.
_ALL = (
    _dt("BOOL", "bool"),
    _dt("UINT8", "<u1"),
    _dt("UINT16", "<u2"),
    _dt("UINT32", "<u4"),
    _dt("UINT64", "<u8"),
    _dt("INT8", "<i1"),
    _dt("INT16", "<i2"),
    _dt("INT32", "<i4"),
    _dt("INT64", "<i8"),
    _dt("FP16", "<f2"),
    _dt("FP32", "<f4"),
    _dt("FP64", "<f8"),
    _dt("BYTES", "object"),
    _dt("BF16", "<u2"),
)
BY_WIRE: dict[str, DataType] = {d.wire: d for d in _ALL}
BY_CONFIG: dict[str, DataType] = {d.config: d for d in _ALL}
BYTES = BY_WIRE["BYTES"]

# KServe v2 gRPC: the typed-contents field that carries each data type (FP16 and BF16 travel raw only)
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def from_wire(name: str) -> DataType:
    try:
        return BY_WIRE[name]
    except KeyError:
        raise InvalidArgument(f"unknown data type '{name[:32]}'") from None


def from_config(name: str) -> DataType:
    return BY_CONFIG[name]


def wire_name_of_array(array: np.ndarray) -> str:
    """The wire type of a numpy array a model returned (object and str arrays are BYTES)."""
    kind = array.dtype.kind
    if kind in "OSU":
        return "BYTES"
    for dtype in _ALL:
        if dtype.wire not in ("BYTES", "BF16") and dtype.numpy == array.dtype.newbyteorder("<"):
            return dtype.wire
    raise InvalidArgument(f"numpy dtype {array.dtype} has no KServe v2 data type")
