"""Property tests of the wire codec, in process (no server).

Whatever a client sends, ``decode_request`` either returns a request whose tensors match their
declared shapes and types, or raises a ``ClipperdError`` (which the transport turns into a clean
status); never any other exception. The same holds for the BYTES parser on arbitrary bytes, and
every data type survives ``array_to_raw`` -> ``array_from_raw`` unchanged."""

from __future__ import annotations

import contextlib
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from backends.common import datatypes
from backends.common.datatypes import CONTENTS_FIELD
from backends.common.errors import ClipperdError, InvalidArgument
from backends.common.tensors import (
    array_from_raw,
    array_to_raw,
    bytes_array_from_raw,
    element_count,
    serialize_bytes,
)
from server.core.messages import InferRequest
from server.grpc.codec import decode_request
from server.proto import grpc_service_pb2 as pb

INT64_MAX = 2**63 - 1
FUZZ = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,  # the same examples on every run
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROPERTY = settings(max_examples=150, deadline=None, derandomize=True, database=None)

VALID_TYPES = sorted(datatypes.BY_WIRE)
GARBAGE_TYPES = ["", "FP33", "int32", "TYPE_FP32", "BYTES ", "STRING", "\x00", "FP32\x00", "é"]

# ------------------------------------------------------------------------------------ strategies

names = st.one_of(st.sampled_from(["INPUT0", "INPUT1", "OUTPUT0", ""]), st.text(max_size=12))
type_names = st.one_of(st.sampled_from(VALID_TYPES), st.sampled_from(GARBAGE_TYPES), st.text(max_size=6))
dims = st.one_of(
    st.integers(min_value=-3, max_value=6),
    # huge sizes that fail fast when something allocates them (2**31 elements would take seconds)
    st.sampled_from([2**36, 2**40 + 1, 2**62, INT64_MAX, -(2**63)]),
)
# element counts that are small (0) or fit int64 while numpy cannot hold such an array at all
AWKWARD_SHAPES = [[0, 2**36, 2**36], [0, 2**62, 2**62], [1, 0, INT64_MAX, 2], [2**32, 2**32 - 1], [2**62, 2]]
shapes = st.one_of(st.lists(dims, max_size=4), st.sampled_from(AWKWARD_SHAPES))

int32s = st.integers(-(2**31), 2**31 - 1)
int64s = st.integers(-(2**63), INT64_MAX)
uint32s = st.integers(0, 2**32 - 1)
uint64s = st.integers(0, 2**64 - 1)
CONTENT_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "bool_contents": st.booleans(),
    "int_contents": int32s,
    "int64_contents": int64s,
    "uint_contents": uint32s,
    "uint64_contents": uint64s,
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=8),
}


@st.composite
def parameters(draw: st.DrawFn, target: Any) -> None:
    keys = st.one_of(
        st.sampled_from(["priority", "timeout", "binary_data_output", "sequence_id", "sequence_start", "foo"]),
        st.text(max_size=8),
    )
    for key in draw(st.lists(keys, max_size=3, unique=True)):
        choice = draw(
            st.sampled_from(["bool_param", "int64_param", "string_param", "double_param", "uint64_param", ""])
        )
        value = {
            "bool_param": st.booleans(),
            "int64_param": int64s,
            "string_param": st.text(max_size=8),
            "double_param": st.floats(),
            "uint64_param": uint64s,
            "": st.none(),
        }[choice]
        param = target[key]
        if choice:
            setattr(param, choice, draw(value))
        else:
            param.SetInParent()


@st.composite
def contents(draw: st.DrawFn, tensor: Any) -> None:
    """Typed contents: usually the field of the tensor's type, sometimes any field(s)."""
    right = CONTENTS_FIELD.get(tensor.datatype)
    fields = draw(
        st.one_of(
            st.just([right] if right else []),
            st.lists(st.sampled_from(sorted(CONTENT_VALUES)), max_size=2, unique=True),
        )
    )
    tensor.contents.SetInParent()
    for field in fields:
        getattr(tensor.contents, field).extend(draw(st.lists(CONTENT_VALUES[field], max_size=20)))


@st.composite
def infer_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(
        model_name=draw(names), model_version=draw(st.sampled_from(["", "1", "abc", "-1"])), id=draw(names)
    )
    count = draw(st.integers(0, 3))
    use_raw = draw(st.booleans())
    for _ in range(count):
        tensor = message.inputs.add(name=draw(names), datatype=draw(type_names), shape=draw(shapes))
        # typed requests: contents nearly always (sometimes no data at all); raw ones: sometimes mixed
        has_contents = draw(st.integers(0, 9)) > 0
        if has_contents != use_raw:
            draw(contents(tensor))
        draw(parameters(tensor.parameters))
    if use_raw:
        entries = draw(st.one_of(st.just(count), st.integers(0, 4)))
        for _ in range(entries):
            message.raw_input_contents.append(draw(raw_payloads))
    for _ in range(draw(st.integers(0, 2))):
        output = message.outputs.add(name=draw(names))
        draw(parameters(output.parameters))
    draw(parameters(message.parameters))
    return message


def _length_prefixed(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


raw_payloads = st.one_of(
    st.binary(max_size=64),
    st.lists(st.binary(max_size=6), max_size=6).map(_length_prefixed),
    st.integers(0, 16).map(lambda n: bytes(4 * n)),
)


# ------------------------------------------------------------------------------------ properties


def _check_decoded(message: pb.ModelInferRequest, request: InferRequest) -> None:
    assert request.model_name == message.model_name
    assert len(request.inputs) == len(message.inputs)
    for tensor, decoded in zip(message.inputs, request.inputs, strict=True):
        dtype = datatypes.BY_WIRE[tensor.datatype]
        assert decoded.datatype == tensor.datatype
        assert decoded.shape == list(tensor.shape)
        assert decoded.data.shape == tuple(tensor.shape)
        assert decoded.data.dtype == dtype.numpy
    assert [o.name for o in request.outputs] == [o.name for o in message.outputs]


@FUZZ
@given(infer_requests())
def test_decode_request_returns_or_raises_clipperd_error(message: pb.ModelInferRequest) -> None:
    try:
        request = decode_request(message)
    except ClipperdError as error:
        problem = error.message
    else:
        _check_decoded(message, request)
        return
    assert problem
    assert len(problem) < 1000


@FUZZ
@given(st.binary(max_size=200))
def test_decode_request_of_arbitrary_bytes(data: bytes) -> None:
    """Whatever parses as a message at all decodes or is refused cleanly."""
    message = pb.ModelInferRequest()
    try:
        message.ParseFromString(data)
    except Exception:  # not a message: the transport refuses it before the codec
        return
    with contextlib.suppress(ClipperdError):
        decode_request(message)


@FUZZ
@given(st.binary(max_size=128), st.lists(st.integers(0, 6), max_size=3))
def test_bytes_array_from_raw_small_shapes(raw: bytes, shape: list[int]) -> None:
    count = element_count(shape)
    try:
        array = bytes_array_from_raw(raw, shape, count, "x")
    except ClipperdError:
        return
    assert array.shape == tuple(shape)
    assert all(isinstance(item, bytes) for item in array.reshape(-1))
    assert serialize_bytes(array) == raw  # it consumed the buffer exactly


@FUZZ
@given(st.binary(max_size=64), shapes)
def test_bytes_array_from_raw_any_shape(raw: bytes, shape: list[int]) -> None:
    """Even a shape of 2**62 elements over a few bytes is an InvalidArgument, not a MemoryError."""
    with contextlib.suppress(ClipperdError):
        bytes_array_from_raw(raw, shape, element_count(shape), "x")


@pytest.mark.parametrize("wire", ["BYTES", "FP32"])
def test_an_empty_shape_too_large_for_numpy_is_invalid_argument(wire: str) -> None:
    """[0, 2**62] holds no element, yet numpy cannot shape even an empty array so (found by the fuzzer)."""
    with pytest.raises(InvalidArgument, match="too large"):
        array_from_raw(b"", datatypes.from_wire(wire), [0, 2**62], "x")


@pytest.mark.parametrize("typed", [False, True], ids=["raw", "typed"])
@pytest.mark.parametrize("wire", VALID_TYPES)
def test_decode_any_shape(wire: str, typed: bool) -> None:
    """Shapes far larger than the data (huge, negative, zero next to huge dims) are refused with an
    InvalidArgument: nothing the size of the shape is allocated, and numpy never gets to refuse."""
    field = CONTENTS_FIELD.get(wire)
    if typed and field is None:
        pytest.skip(f"{wire} has no typed contents")

    @FUZZ
    @given(raw_payloads, shapes, st.integers(0, 8))
    def decode(raw: bytes, shape: list[int], count: int) -> None:
        message = pb.ModelInferRequest(model_name="m")
        tensor = message.inputs.add(name="INPUT0", datatype=wire, shape=shape)
        if typed:
            assert field is not None
            value = {"bytes_contents": b"1", "bool_contents": True}.get(field, 1)
            getattr(tensor.contents, field).extend([value] * count)
        else:
            message.raw_input_contents.append(raw)
        with contextlib.suppress(ClipperdError):
            decode_request(message)

    decode()


@PROPERTY
@given(st.lists(st.binary(max_size=10), max_size=12))
def test_bytes_round_trip(items: list[bytes]) -> None:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    raw = serialize_bytes(array)
    assert raw == _length_prefixed(items)
    assert bytes_array_from_raw(raw, [len(items)], len(items), "x").tolist() == items


@PROPERTY
@given(shapes)
def test_element_count(shape: list[int]) -> None:
    product = nonzero = 1
    for dim in shape:
        product *= dim
        nonzero *= dim or 1
    try:
        count = element_count(shape)
    except ClipperdError:
        # refused: a negative dimension, or dimensions no array could have (even next to a 0)
        assert any(d < 0 for d in shape) or nonzero >= 2**48
        return
    assert count == product
    assert 0 <= count <= INT64_MAX


def _arrays(wire: str) -> st.SearchStrategy[np.ndarray]:
    shape = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)
    if wire == "BYTES":
        return shape.flatmap(
            lambda s: st.lists(st.binary(max_size=8), min_size=int(np.prod(s)), max_size=int(np.prod(s))).map(
                lambda items: np.array([*items, None], dtype=object)[:-1].reshape(s)
            )
        )
    return hnp.arrays(datatypes.BY_WIRE[wire].numpy, shape)


@pytest.mark.parametrize("wire", sorted(datatypes.BY_WIRE))
def test_raw_round_trip_every_dtype(wire: str) -> None:
    dtype = datatypes.BY_WIRE[wire]

    @PROPERTY
    @given(_arrays(wire))
    def round_trip(array: np.ndarray) -> None:
        raw = array_to_raw(array, dtype)
        if wire != "BYTES":
            assert len(raw) == array.size * dtype.itemsize
        back = array_from_raw(raw, dtype, list(array.shape), "x")
        assert back.shape == array.shape
        if wire == "BYTES":
            assert back.tolist() == array.tolist()
        else:
            assert back.dtype == dtype.numpy
            assert back.tobytes() == array.tobytes()  # bit-exact, NaNs included

        # and through a whole request, as a client sends it
        message = pb.ModelInferRequest(model_name="m")
        message.inputs.add(name="x", datatype=wire, shape=list(array.shape))
        message.raw_input_contents.append(raw)
        decoded = decode_request(message).inputs[0].data
        assert decoded.shape == array.shape
        assert array_to_raw(decoded, dtype) == raw

    round_trip()


@pytest.mark.parametrize("wire", sorted(CONTENTS_FIELD))
def test_typed_contents_round_trip(wire: str) -> None:
    dtype = datatypes.BY_WIRE[wire]
    field = CONTENTS_FIELD[wire]

    @PROPERTY
    @given(_arrays(wire))
    def round_trip(array: np.ndarray) -> None:
        message = pb.ModelInferRequest(model_name="m")
        tensor = message.inputs.add(name="x", datatype=wire, shape=list(array.shape))
        tensor.contents.SetInParent()
        values = array.reshape(-1).tolist()
        getattr(tensor.contents, field).extend(values)
        decoded = decode_request(message).inputs[0].data
        assert decoded.shape == array.shape
        assert decoded.dtype == dtype.numpy
        np.testing.assert_array_equal(decoded, array)  # NaN equals NaN; a NaN's payload may change

    round_trip()
