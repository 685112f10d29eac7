"""The gRPC answer written by hand (codec.infer_response_bytes) against protobuf's own
serialization, and the request decoder's shape checks on the fast path."""

from __future__ import annotations

import numpy as np
import pytest

from backends.common.datatypes import BY_WIRE
from backends.common.errors import InvalidArgument
from backends.common.protowire import varint
from backends.common.tensors import array_from_raw
from server.core.messages import InferResponse, OutputTensor
from server.grpc.codec import infer_response_bytes, infer_response_message
from server.grpc.native import _timeout_s
from server.proto import grpc_service_pb2 as pb


def _output(name: str, wire: str, array: np.ndarray, **parameters: object) -> OutputTensor:
    return OutputTensor(name, wire, list(array.shape), array, dict(parameters))  # type: ignore[arg-type]


CASES = {
    "fp32": InferResponse("identity_fp32", "1", "", [_output("OUTPUT0", "FP32", np.ones((1, 16), np.float32))]),
    "id-and-two": InferResponse(
        "m",
        "12",
        "req-ü",
        [_output("A", "INT64", np.arange(6).reshape(2, 3)), _output("B", "UINT8", np.zeros((0, 4), np.uint8))],
    ),
    "bytes": InferResponse("m", "1", "x", [_output("S", "BYTES", np.array([[b"ab", b""]], dtype=object))]),
    "scalar-and-empty-names": InferResponse("", "", "", [_output("", "FP64", np.array(2.5))]),
    "large": InferResponse("m" * 200, "3", "i" * 300, [_output("O" * 130, "FP32", np.ones((1, 40_000), np.float32))]),
    "no-outputs": InferResponse("m", "1", "", []),
    "response-parameter": InferResponse("m", "1", "", [], {"feedback_id": "abc"}),
    "output-parameter": InferResponse(
        "m", "1", "", [_output("A", "INT32", np.ones((2, 2), np.int32), binary_data=True, n=3)]
    ),
}


@pytest.mark.parametrize("response", CASES.values(), ids=CASES.keys())
def test_the_written_answer_is_protobufs(response: InferResponse) -> None:
    expected = infer_response_message(response).SerializeToString()
    for _ in range(2):  # made, then the fixed parts remembered
        assert infer_response_bytes(response) == expected
    parsed = pb.ModelInferResponse.FromString(infer_response_bytes(response))
    assert [list(o.shape) for o in parsed.outputs] == [t.shape for t in response.outputs]


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**31, 2**63 - 1, -1, -(2**63)])
def test_varints_are_protobufs(value: int) -> None:
    message = pb.ModelInferResponse.InferOutputTensor(shape=[value])
    assert message.SerializeToString() == b"\x1a" + varint(len(varint(value))) + varint(value)


@pytest.mark.parametrize(
    ("shape", "size", "match"),
    [
        ([2, 2], 15, "15 bytes"),
        ([0, 2**62, 2**62], 0, "more elements than int64"),
        ([-1, -4], 16, "negative"),
        ([1] * 65, 4, "too large"),
        ([4, 0], 1, "1 bytes"),
    ],
)
def test_shapes_that_do_not_fit_the_bytes_are_refused(shape: list[int], size: int, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        array_from_raw(b"\0" * size, BY_WIRE["FP32"], shape, "X")


def test_a_shape_that_fits_views_the_bytes() -> None:
    data = np.arange(6, dtype=np.float32).tobytes()
    array = array_from_raw(data, BY_WIRE["FP32"], [2, 3], "X")
    assert array.shape == (2, 3)
    assert array[1, 2] == 5.0
    assert array_from_raw(b"", BY_WIRE["FP32"], [0, 3], "X").shape == (0, 3)


@pytest.mark.parametrize(
    ("value", "seconds"), [("10S", 10.0), ("1n", 1e-9), ("99999999m", 99999.999), ("2H", 7200.0), ("5u", 5e-6)]
)
def test_grpc_timeouts_parse(value: str, seconds: float) -> None:
    assert _timeout_s(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["soon", "", "S", "123456789S", "\u0661\u0662S", "-1S", "+1S", " 1S", "1s", "1.5S"])
def test_bad_grpc_timeouts_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="invalid grpc-timeout"):
        _timeout_s(value)
