"""The remote backend's parameters and wire encodings, in process."""

from __future__ import annotations

import json

import numpy as np
import pytest

from backends.common.datatypes import BY_WIRE
from backends.common.errors import ConfigError
from backends.common.parameters import Parameters
from backends.proto import grpc_service_pb2 as pb
from backends.remote import wire
from backends.remote.settings import MAX_ENDPOINTS, remote_settings


def settings(**values: str):
    return remote_settings(Parameters("m", values))


def test_defaults_and_listed_endpoints() -> None:
    s = settings(endpoints="10.0.0.5:8001, 10.0.0.6:8001")
    assert [str(a) for a in s.addresses] == ["10.0.0.5:8001", "10.0.0.6:8001"]
    assert not s.resolve
    assert (s.remote_model, s.remote_version, s.protocol) == ("m", "", "grpc")
    assert (s.timeout_s, s.health_interval_s, s.resolve_interval_s) == (10.0, 1.0, 30)


@pytest.mark.parametrize("text", ["dns:///models.ns.svc:8001", "models.ns.svc:8001"])
def test_one_name_is_resolved(text: str) -> None:
    s = settings(endpoints=text)
    assert s.resolve
    assert str(s.addresses[0]) == "models.ns.svc:8001"


def test_ipv6() -> None:
    assert str(settings(endpoints="[::1]:8001").addresses[0]) == "[::1]:8001"


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({}, "must name at least one host:port"),
        ({"endpoints": "10.0.0.5"}, "must be host:port"),
        ({"endpoints": "10.0.0.5:0"}, "port from 1 to 65535"),
        ({"endpoints": "10.0.0.5:8001,10.0.0.5:8001"}, "names an endpoint twice"),
        ({"endpoints": "dns:///a:1,b:2"}, "dns:/// takes one name:port"),
        ({"endpoints": "[nothex]:1"}, "must be host:port"),
        ({"endpoints": ",".join(f"10.0.0.1:{i + 1}" for i in range(MAX_ENDPOINTS + 1))}, "at most 64"),
        ({"endpoints": "a:1", "protocol": "smtp"}, "must be one of grpc, http"),
        ({"endpoints": "a:1", "timeout_ms": "0"}, "timeout_ms"),
        ({"endpoints": "a:1", "remote_version": "v1"}, "must be a version number"),
    ],
)
def test_bad_parameters(values: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        settings(**values)


def test_http_round_trip_with_bytes() -> None:
    inputs = {
        "A": np.arange(6, dtype=np.float32).reshape(2, 3),
        "S": np.array([[b"x", b""], [b"yz", b"\x00"]], dtype=object),
    }
    types = {"A": BY_WIRE["FP32"], "S": BY_WIRE["BYTES"]}
    parts, length = wire.http_request(inputs, types, ["A", "S"])
    header = parts[0]
    assert len(header) == length
    # an answer in the same layout: the request's inputs as outputs
    answer = json.dumps({"outputs": json.loads(header)["inputs"]}).encode()
    got = wire.http_outputs(answer + b"".join(parts[1:]), len(answer))
    assert np.array_equal(got["A"], inputs["A"])
    assert got["S"].tolist() == inputs["S"].tolist()


def test_grpc_round_trip_and_typed_contents() -> None:
    inputs = {"A": np.arange(4, dtype=np.int64).reshape(2, 2)}
    request = wire.grpc_request("m", "", inputs, {"A": BY_WIRE["INT64"]}, ["A"])
    response = pb.ModelInferResponse()
    response.outputs.add(name="A", datatype="INT64", shape=[2, 2])
    response.raw_output_contents.append(request.raw_input_contents[0])
    assert np.array_equal(wire.grpc_outputs(response)["A"], inputs["A"])
    typed = pb.ModelInferResponse()
    typed.outputs.add(name="A", datatype="INT64", shape=[2, 2]).contents.int64_contents.extend([0, 1, 2, 3])
    assert np.array_equal(wire.grpc_outputs(typed)["A"], inputs["A"])


@pytest.mark.parametrize(
    ("inputs", "types"),
    [
        ({"A": np.arange(6, dtype=np.float32).reshape(2, 3)}, {"A": "FP32"}),
        ({"A": np.ones((1, 4), np.float16), "B": np.zeros((1, 2), np.int8)}, {"A": "FP16", "B": "INT8"}),
        ({"S": np.array([[b"x", b""]], dtype=object), "A": np.ones((1, 2), np.int32)}, {"S": "BYTES", "A": "INT32"}),
        ({"S": np.array([[b"x"]], dtype=object), "H": np.ones((1, 1), np.float16)}, {"S": "BYTES", "H": "FP16"}),
    ],
    ids=["fp32", "two-raw", "typed-bytes", "raw-bytes"],
)
def test_grpc_request_bytes_are_the_whole_message(inputs: dict[str, np.ndarray], types: dict[str, str]) -> None:
    """The serialized fixed part plus the appended contents: the bytes of the whole message,
    the first time (made) and the second (the fixed part remembered), for every shape."""
    dtypes = {name: BY_WIRE[wire] for name, wire in types.items()}
    whole = wire.grpc_request("m", "2", inputs, dtypes, ["OUT", "A"]).SerializeToString()
    for _ in range(2):
        assert wire.grpc_request_bytes("m", "2", inputs, dtypes, ["OUT", "A"]) == whole
    bigger = {name: np.concatenate([array, array]) for name, array in inputs.items()}
    parsed = pb.ModelInferRequest.FromString(wire.grpc_request_bytes("m", "2", bigger, dtypes, ["OUT"]))
    assert [list(t.shape) for t in parsed.inputs] == [list(a.shape) for a in bigger.values()]
    assert [o.name for o in parsed.outputs] == ["OUT"]


@pytest.mark.parametrize("size", [0, 1, 127, 128, 300, 16_383, 16_384, 70_000])
def test_grpc_request_bytes_length_prefixes(size: int) -> None:
    """The contents' lengths written by hand are protobuf's varints, one to three bytes long."""
    inputs = {"A": np.arange(size, dtype=np.uint8).reshape(1, size), "B": np.ones((1, 3), np.int8)}
    dtypes = {"A": BY_WIRE["UINT8"], "B": BY_WIRE["INT8"]}
    whole = wire.grpc_request("m", "", inputs, dtypes, ["OUT"]).SerializeToString()
    assert wire.grpc_request_bytes("m", "", inputs, dtypes, ["OUT"]) == whole


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b'{"outputs": 3}',
        b'{"outputs":[{"name":"A","datatype":"FP32","shape":[2],"parameters":{"binary_data_size":99}}]}',
    ],
)
def test_bad_http_answers(body: bytes) -> None:
    with pytest.raises(wire.BadAnswer):
        wire.http_outputs(body, len(body))
