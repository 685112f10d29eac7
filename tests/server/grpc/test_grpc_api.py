"""Every KServe v2 gRPC RPC as real users call it: tritonclient.grpc (sync, async callbacks,
streaming), tritonclient.grpc.aio, and hand-built service_pb2 messages on a raw channel.

Runs against the session's ``example_server`` (the bundled repository, control mode none)."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from google.protobuf import text_format
from google.protobuf.message import Message
from tritonclient.grpc import model_config_pb2, service_pb2
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor

from tests.serverproc import EXAMPLES

pytestmark = pytest.mark.timeout(120)

MODELS = tuple(sorted(p.name for p in EXAMPLES.iterdir() if (p / "config.pbtxt").is_file()))  # every example
MLP_PATH = EXAMPLES / "mlp_torch" / "1" / "model.pt"
WAIT_S = 30.0  # how long a callback may take to arrive before the test fails
rng = np.random.default_rng(20240607)


# ----------------------------------------------------------------------------------------- helpers


@pytest.fixture
def client(grpc_url: str) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(grpc_url) as triton:
        yield triton


def status_of(error: InferenceServerException) -> str:
    return str(error.status())


def file_config(model: str) -> model_config_pb2.ModelConfig:
    """The oracle: the model's config.pbtxt parsed by tritonclient's own ModelConfig; for an ONNX
    model whose config leaves its tensors out, completed from what onnxruntime reads in the graph."""
    text = (EXAMPLES / model / "config.pbtxt").read_text()
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    graph = EXAMPLES / model / "1" / "model.onnx"
    if not config.input and graph.exists():
        session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
        types = {"tensor(float)": model_config_pb2.TYPE_FP32}
        for field, nodes in ((config.input, session.get_inputs()), (config.output, session.get_outputs())):
            for node in nodes:
                field.add(name=node.name, data_type=types[node.type], dims=node.shape[1:])
    return config


def assert_covers(served: Message, written: Message, path: str = "config") -> None:
    """Every field set in ``written`` (the file) has the same value in ``served`` (the server may
    fill defaults, such as instance group names, on top)."""
    for field, value in written.ListFields():
        where = f"{path}.{field.name}"
        got = getattr(served, field.name)
        if field.type == field.TYPE_MESSAGE and field.is_repeated:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                assert dict(got) == dict(value), where
                continue
            assert len(got) == len(value), where
            for i, (g, w) in enumerate(zip(got, value, strict=True)):
                assert_covers(g, w, f"{where}[{i}]")
        elif field.type == field.TYPE_MESSAGE:
            assert served.HasField(field.name), where
            assert_covers(got, value, where)
        elif field.is_repeated:
            assert list(got) == list(value), where
        else:
            assert got == value, where


def simple_inputs(a: np.ndarray, b: np.ndarray) -> list[grpcclient.InferInput]:
    inputs = []
    for name, data in (("INPUT0", a), ("INPUT1", b)):
        tensor = grpcclient.InferInput(name, list(data.shape), "INT32")
        tensor.set_data_from_numpy(data)
        inputs.append(tensor)
    return inputs


def identity_input(data: np.ndarray, module: Any = grpcclient) -> list[Any]:
    tensor = module.InferInput("INPUT0", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return [tensor]


def torch_reference(x: np.ndarray) -> np.ndarray:
    torch = pytest.importorskip("torch")
    model = torch.jit.load(str(MLP_PATH), map_location="cpu").eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()  # type: ignore[no-any-return]


def stats_of(client: grpcclient.InferenceServerClient, model: str) -> Any:
    stats = client.get_inference_statistics(model).model_stats
    assert len(stats) == 1
    return stats[0]


# ------------------------------------------------------------------------------ health, metadata


def test_server_live_and_ready(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live() is True
    assert client.is_server_ready() is True


@pytest.mark.parametrize("model", MODELS)
def test_model_ready(client: grpcclient.InferenceServerClient, model: str) -> None:
    assert client.is_model_ready(model) is True
    assert client.is_model_ready(model, "1") is True
    assert client.is_model_ready(model, "2") is False


def test_unknown_model_not_ready(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_model_ready("no_such_model") is False
    assert client.is_model_ready("no_such_model", "1") is False


def test_server_metadata(client: grpcclient.InferenceServerClient) -> None:
    meta = client.get_server_metadata()
    assert meta.name == "clipperd"
    assert meta.version
    expected = [
        "model_repository",
        "model_configuration",
        "statistics",
        "parameters",
        "binary_tensor_data",
        "system_shared_memory",
        "trace",
    ]
    assert sorted(meta.extensions) == sorted(expected)
    as_json = client.get_server_metadata(as_json=True)
    assert as_json["name"] == "clipperd"
    assert sorted(as_json["extensions"]) == sorted(meta.extensions)


@pytest.mark.parametrize("model", MODELS)
def test_model_metadata_matches_config_file(client: grpcclient.InferenceServerClient, model: str) -> None:
    config = file_config(model)
    for version in ("", "1"):
        meta = client.get_model_metadata(model, version)
        assert meta.name == model
        assert list(meta.versions) == ["1"]
        assert meta.platform == (config.platform or config.backend)
        batch = [-1] if config.max_batch_size > 0 else []
        for got, want in ((meta.inputs, config.input), (meta.outputs, config.output)):
            assert [t.name for t in got] == [t.name for t in want]
            for tensor, spec in zip(got, want, strict=True):
                wire = model_config_pb2.DataType.Name(spec.data_type).removeprefix("TYPE_")
                assert tensor.datatype == ("BYTES" if wire == "STRING" else wire)
                assert list(tensor.shape) == batch + list(spec.dims)


def test_model_metadata_as_json(client: grpcclient.InferenceServerClient) -> None:
    meta = client.get_model_metadata("simple", as_json=True)
    assert meta["name"] == "simple"
    assert meta["versions"] == ["1"]
    assert [i["shape"] for i in meta["inputs"]] == [["-1", "16"], ["-1", "16"]]  # int64 as JSON strings
    assert {o["datatype"] for o in meta["outputs"]} == {"INT32"}


def test_model_metadata_unknown_model_and_version(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("no_such_model")
    assert status_of(unknown.value) == "StatusCode.NOT_FOUND"
    assert "no_such_model" in unknown.value.message()
    with pytest.raises(InferenceServerException) as version:
        client.get_model_metadata("simple", "7")
    assert status_of(version.value) == "StatusCode.NOT_FOUND"


@pytest.mark.parametrize("model", MODELS)
def test_model_config_matches_file(client: grpcclient.InferenceServerClient, model: str) -> None:
    written = file_config(model)
    served = client.get_model_config(model).config
    assert isinstance(served, model_config_pb2.ModelConfig)
    assert_covers(served, written)
    assert served.name == model
    assert client.get_model_config(model, "1").config == served


@pytest.mark.parametrize("model", MODELS)
def test_model_config_as_json(client: grpcclient.InferenceServerClient, model: str) -> None:
    written = file_config(model)
    config = client.get_model_config(model, as_json=True)["config"]
    assert config["name"] == model
    assert config["max_batch_size"] == written.max_batch_size
    for key, specs in (("input", written.input), ("output", written.output)):
        assert [t["name"] for t in config[key]] == [s.name for s in specs]
        assert [t["data_type"] for t in config[key]] == [model_config_pb2.DataType.Name(s.data_type) for s in specs]
        assert [[int(d) for d in t["dims"]] for t in config[key]] == [list(s.dims) for s in specs]
    assert ("dynamic_batching" in config) == written.HasField("dynamic_batching")


def test_model_config_unknown_model(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as error:
        client.get_model_config("no_such_model")
    assert status_of(error.value) == "StatusCode.NOT_FOUND"


def test_repository_index_all_ready(client: grpcclient.InferenceServerClient, grpc_url: str) -> None:
    index = client.get_model_repository_index()
    rows = {(m.name, m.version, m.state) for m in index.models}
    assert rows == {(m, "1", "READY") for m in MODELS}
    with grpc.insecure_channel(grpc_url) as channel:
        index_rpc = channel.unary_unary(
            "/inference.GRPCInferenceService/RepositoryIndex",
            request_serializer=service_pb2.RepositoryIndexRequest.SerializeToString,
            response_deserializer=service_pb2.RepositoryIndexResponse.FromString,
        )
        ready = index_rpc(service_pb2.RepositoryIndexRequest(ready=True), timeout=WAIT_S)
    assert {(m.name, m.state) for m in ready.models} == {(m, "READY") for m in MODELS}
    as_json = client.get_model_repository_index(as_json=True)
    assert sorted(m["name"] for m in as_json["models"]) == sorted(MODELS)


@pytest.mark.parametrize("action", ["load_model", "unload_model"])
def test_load_unload_refused_in_mode_none(client: grpcclient.InferenceServerClient, action: str) -> None:
    with pytest.raises(InferenceServerException) as error:
        getattr(client, action)("simple")
    assert status_of(error.value) == "StatusCode.UNAVAILABLE"
    assert "explicit" in error.value.message()
    assert client.is_model_ready("simple") is True  # nothing changed


@pytest.mark.parametrize("call", ["get_cuda_shared_memory_status", "get_log_settings"])
def test_unimplemented_extensions(client: grpcclient.InferenceServerClient, call: str) -> None:
    with pytest.raises(InferenceServerException) as error:
        getattr(client, call)()
    assert status_of(error.value) == "StatusCode.UNIMPLEMENTED"
    assert "not supported" in error.value.message()


def test_cuda_shared_memory_register_unimplemented(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as error:
        client.register_cuda_shared_memory("region", "aGFuZGxl", 0, 64)
    assert status_of(error.value) == "StatusCode.UNIMPLEMENTED"
    assert error.value.message()


# ------------------------------------------------------------------------------------- inference


def test_simple_infer_client_flow(client: grpcclient.InferenceServerClient) -> None:
    """tritonclient's simple_grpc_infer_client.py, with a request id."""
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.int32)
    outputs = [grpcclient.InferRequestedOutput("OUTPUT0"), grpcclient.InferRequestedOutput("OUTPUT1")]
    result = client.infer("simple", simple_inputs(a, b), outputs=outputs, request_id="req-42")
    response = result.get_response()
    assert response.id == "req-42"
    assert response.model_name == "simple"
    assert response.model_version == "1"
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.as_numpy("OUTPUT0").dtype == np.int32


def test_simple_infer_all_outputs_by_default(client: grpcclient.InferenceServerClient) -> None:
    a = rng.integers(-1000, 1000, size=(8, 16), dtype=np.int32)
    b = rng.integers(-1000, 1000, size=(8, 16), dtype=np.int32)
    result = client.infer("simple", simple_inputs(a, b))
    assert {o.name for o in result.get_response().outputs} == {"OUTPUT0", "OUTPUT1"}
    assert result.get_response().id == ""
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_simple_infer_output_filter(client: grpcclient.InferenceServerClient) -> None:
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 3, dtype=np.int32)
    result = client.infer("simple", simple_inputs(a, b), outputs=[grpcclient.InferRequestedOutput("OUTPUT1")])
    assert [o.name for o in result.get_response().outputs] == ["OUTPUT1"]
    assert result.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_simple_infer_explicit_version(client: grpcclient.InferenceServerClient) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    result = client.infer("simple", simple_inputs(a, a), model_version="1")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * a)


def test_infer_parameters_and_compression(client: grpcclient.InferenceServerClient) -> None:
    """The ``parameters`` extension: custom request parameters are accepted; gzip bodies too."""
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    result = client.infer(
        "simple", simple_inputs(a, a), parameters={"custom": "x", "n": 3, "flag": True}, compression_algorithm="gzip"
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * a)


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("unknown_output", "NOPE"),
        ("wrong_shape", "shape"),
        ("wrong_datatype", "FP32"),
        ("missing_input", "INPUT1"),
        ("batch_over_max", "8"),
    ],
)
def test_infer_invalid_requests(client: grpcclient.InferenceServerClient, case: str, fragment: str) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = simple_inputs(a, a)
    outputs = None
    if case == "unknown_output":
        outputs = [grpcclient.InferRequestedOutput("NOPE")]
    elif case == "wrong_shape":
        inputs = simple_inputs(a[:, :15], a[:, :15])
    elif case == "wrong_datatype":
        inputs[0] = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
        inputs[0].set_data_from_numpy(a.astype(np.float32))
    elif case == "missing_input":
        inputs = inputs[:1]
    else:
        big = np.zeros((9, 16), dtype=np.int32)
        inputs = simple_inputs(big, big)
    with pytest.raises(InferenceServerException) as error:
        client.infer("simple", inputs, outputs=outputs)
    assert status_of(error.value) == "StatusCode.INVALID_ARGUMENT"
    assert fragment in error.value.message()


def test_infer_unknown_model_not_found(client: grpcclient.InferenceServerClient) -> None:
    a = np.zeros((1, 16), dtype=np.int32)
    with pytest.raises(InferenceServerException) as error:
        client.infer("no_such_model", simple_inputs(a, a))
    assert status_of(error.value) == "StatusCode.NOT_FOUND"


def test_simple_string_infer_client_flow(client: grpcclient.InferenceServerClient) -> None:
    """tritonclient's simple_grpc_string_infer_client.py."""
    in0 = np.arange(16, dtype=np.int32)
    in1 = np.ones(16, dtype=np.int32)
    expected_sum = in0 + in1
    expected_diff = in0 - in1
    in0n = np.array([str(x).encode("utf-8") for x in in0], dtype=np.object_).reshape(1, 16)
    in1n = np.array([str(x).encode("utf-8") for x in in1], dtype=np.object_).reshape(1, 16)
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "BYTES"), grpcclient.InferInput("INPUT1", [1, 16], "BYTES")]
    inputs[0].set_data_from_numpy(in0n)
    inputs[1].set_data_from_numpy(in1n)
    outputs = [grpcclient.InferRequestedOutput("OUTPUT0"), grpcclient.InferRequestedOutput("OUTPUT1")]
    result = client.infer("simple_string", inputs, outputs=outputs)
    out0 = result.as_numpy("OUTPUT0")
    out1 = result.as_numpy("OUTPUT1")
    assert out0.shape == (1, 16)
    assert out1.shape == (1, 16)
    for i in range(16):
        assert int(out0[0][i]) == expected_sum[i]
        assert int(out1[0][i]) == expected_diff[i]


def test_simple_string_batch_of_negative_numbers(client: grpcclient.InferenceServerClient) -> None:
    a = rng.integers(-(10**6), 10**6, size=(5, 16))
    b = rng.integers(-(10**6), 10**6, size=(5, 16))
    inputs = [grpcclient.InferInput("INPUT0", [5, 16], "BYTES"), grpcclient.InferInput("INPUT1", [5, 16], "BYTES")]
    inputs[0].set_data_from_numpy(a.astype(str).astype(np.object_))
    inputs[1].set_data_from_numpy(b.astype(str).astype(np.object_))
    result = client.infer("simple_string", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0").astype(np.int64), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1").astype(np.int64), a - b)


@pytest.mark.parametrize("batch", [1, 64])
def test_identity_fp32(client: grpcclient.InferenceServerClient, batch: int) -> None:
    data = rng.standard_normal((batch, 16)).astype(np.float32)
    result = client.infer("identity_fp32", identity_input(data), request_id=f"identity-{batch}")
    assert result.get_response().id == f"identity-{batch}"
    out = result.as_numpy("OUTPUT0")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, data)


def test_identity_fp32_batch_over_max_rejected(client: grpcclient.InferenceServerClient) -> None:
    data = np.zeros((65, 16), dtype=np.float32)
    with pytest.raises(InferenceServerException) as error:
        client.infer("identity_fp32", identity_input(data))
    assert status_of(error.value) == "StatusCode.INVALID_ARGUMENT"


@pytest.mark.parametrize("batch", [1, 7, 128])
def test_mlp_torch_matches_torch(client: grpcclient.InferenceServerClient, batch: int) -> None:
    x = rng.standard_normal((batch, 64)).astype(np.float32)
    tensor = grpcclient.InferInput("INPUT__0", [batch, 64], "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("mlp_torch", [tensor])
    out = result.as_numpy("OUTPUT__0")
    assert out.shape == (batch, 10)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, torch_reference(x), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------- typed contents, raw channel


@pytest.fixture
def raw_infer(grpc_url: str) -> Iterator[Any]:
    with grpc.insecure_channel(grpc_url) as channel:
        yield channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )


def typed_input(name: str, datatype: str, shape: list[int], field: str, values: list[Any]) -> Any:
    tensor = service_pb2.ModelInferRequest().InferInputTensor(name=name, datatype=datatype, shape=shape)
    getattr(tensor.contents, field).extend(values)
    return tensor


def raw_output(response: Any, name: str, dtype: Any) -> np.ndarray:
    index = [o.name for o in response.outputs].index(name)
    tensor = response.outputs[index]
    payload = response.raw_output_contents[index]
    if tensor.datatype == "BYTES":
        return deserialize_bytes_tensor(payload).reshape(list(tensor.shape))  # type: ignore[no-any-return]
    return np.frombuffer(payload, dtype=dtype).reshape(list(tensor.shape))


def test_typed_int_contents(raw_infer: Any) -> None:
    a = rng.integers(-(2**30), 2**30, size=(3, 16), dtype=np.int32)
    b = rng.integers(-(2**30), 2**30, size=(3, 16), dtype=np.int32)
    request = service_pb2.ModelInferRequest(model_name="simple", id="typed-int")
    request.inputs.extend(
        [
            typed_input("INPUT0", "INT32", [3, 16], "int_contents", a.ravel().tolist()),
            typed_input("INPUT1", "INT32", [3, 16], "int_contents", b.ravel().tolist()),
        ]
    )
    response = raw_infer(request, timeout=WAIT_S)
    assert response.id == "typed-int"
    assert [o.datatype for o in response.outputs] == ["INT32", "INT32"]
    np.testing.assert_array_equal(raw_output(response, "OUTPUT0", "<i4"), a + b)
    np.testing.assert_array_equal(raw_output(response, "OUTPUT1", "<i4"), a - b)


def test_typed_fp32_contents_identity(raw_infer: Any) -> None:
    data = rng.standard_normal((4, 16)).astype(np.float32)
    request = service_pb2.ModelInferRequest(model_name="identity_fp32")
    request.inputs.append(typed_input("INPUT0", "FP32", [4, 16], "fp32_contents", data.ravel().tolist()))
    response = raw_infer(request, timeout=WAIT_S)
    np.testing.assert_array_equal(raw_output(response, "OUTPUT0", "<f4"), data)


def test_typed_fp32_contents_mlp(raw_infer: Any) -> None:
    x = rng.standard_normal((7, 64)).astype(np.float32)
    request = service_pb2.ModelInferRequest(model_name="mlp_torch")
    request.inputs.append(typed_input("INPUT__0", "FP32", [7, 64], "fp32_contents", x.ravel().tolist()))
    response = raw_infer(request, timeout=WAIT_S)
    np.testing.assert_allclose(raw_output(response, "OUTPUT__0", "<f4"), torch_reference(x), rtol=1e-5, atol=1e-6)


def test_typed_bytes_contents(raw_infer: Any) -> None:
    a = rng.integers(-500, 500, size=(2, 16))
    b = rng.integers(-500, 500, size=(2, 16))
    request = service_pb2.ModelInferRequest(model_name="simple_string", id="typed-bytes")
    request.inputs.extend(
        [
            typed_input("INPUT0", "BYTES", [2, 16], "bytes_contents", [str(v).encode() for v in a.ravel()]),
            typed_input("INPUT1", "BYTES", [2, 16], "bytes_contents", [str(v).encode() for v in b.ravel()]),
        ]
    )
    request.outputs.add(name="OUTPUT0")
    response = raw_infer(request, timeout=WAIT_S)
    assert response.id == "typed-bytes"
    assert [o.name for o in response.outputs] == ["OUTPUT0"]
    assert response.outputs[0].datatype == "BYTES"
    np.testing.assert_array_equal(raw_output(response, "OUTPUT0", None).astype(np.int64), a + b)


def test_typed_and_raw_give_same_answer(raw_infer: Any, client: grpcclient.InferenceServerClient) -> None:
    a = rng.integers(-100, 100, size=(1, 16), dtype=np.int32)
    b = rng.integers(-100, 100, size=(1, 16), dtype=np.int32)
    request = service_pb2.ModelInferRequest(model_name="simple")
    request.inputs.extend(
        [
            typed_input("INPUT0", "INT32", [1, 16], "int_contents", a.ravel().tolist()),
            typed_input("INPUT1", "INT32", [1, 16], "int_contents", b.ravel().tolist()),
        ]
    )
    typed = raw_infer(request, timeout=WAIT_S)
    raw = client.infer("simple", simple_inputs(a, b)).get_response()
    assert list(typed.raw_output_contents) == list(raw.raw_output_contents)


def test_typed_contents_wrong_field_rejected(raw_infer: Any) -> None:
    request = service_pb2.ModelInferRequest(model_name="identity_fp32")
    request.inputs.append(typed_input("INPUT0", "FP32", [1, 16], "int_contents", list(range(16))))
    with pytest.raises(grpc.RpcError) as error:
        raw_infer(request, timeout=WAIT_S)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details()


# ------------------------------------------------------------------------------------ statistics


def test_statistics_count_exactly_what_was_sent(client: grpcclient.InferenceServerClient) -> None:
    """``simple`` has no dynamic batcher: each request is one execution of its own batch size."""
    before = stats_of(client, "simple")
    sizes = [1, 2, 4, 4]
    for size in sizes:
        a = np.ones((size, 16), dtype=np.int32)
        client.infer("simple", simple_inputs(a, a))
    after = stats_of(client, "simple")
    assert after.name == "simple"
    assert after.version == "1"
    requests = len(sizes)
    assert after.inference_count - before.inference_count == sum(sizes)
    executions = after.execution_count - before.execution_count
    assert 1 <= executions <= requests
    got, was = after.inference_stats, before.inference_stats
    assert got.success.count - was.success.count == requests
    assert got.fail.count == was.fail.count
    for duration in ("success", "compute_input", "compute_infer", "compute_output"):
        assert getattr(got, duration).count - getattr(was, duration).count == requests, duration
        assert getattr(got, duration).ns > getattr(was, duration).ns, duration
    assert after.last_inference >= before.last_inference
    assert after.last_inference > 0
    batches_before = {b.batch_size: b.compute_infer.count for b in before.batch_stats}
    batches_after = {b.batch_size: b for b in after.batch_stats}
    assert {1, 2, 4} <= set(batches_after)
    moved = {size: batches_after[size].compute_infer.count - batches_before.get(size, 0) for size in batches_after}
    assert moved[1] == 1
    assert moved[2] == 1
    assert moved[4] == 2
    for size in (1, 2, 4):
        assert batches_after[size].compute_infer.ns > 0


def test_statistics_count_failures(client: grpcclient.InferenceServerClient) -> None:
    before = stats_of(client, "simple")
    bad = np.ones((9, 16), dtype=np.int32)  # over max_batch_size 8
    with pytest.raises(InferenceServerException):
        client.infer("simple", simple_inputs(bad, bad))
    after = stats_of(client, "simple")
    assert after.inference_stats.fail.count - before.inference_stats.fail.count == 1
    assert after.inference_stats.success.count == before.inference_stats.success.count
    assert after.inference_count == before.inference_count


def test_statistics_batched_model(client: grpcclient.InferenceServerClient) -> None:
    """A dynamic batcher may merge requests: executions never exceed requests; rows all count."""
    before = stats_of(client, "identity_fp32")
    sizes = [1, 3, 64]
    for size in sizes:
        client.infer("identity_fp32", identity_input(np.zeros((size, 16), dtype=np.float32)))
    after = stats_of(client, "identity_fp32")
    assert after.inference_count - before.inference_count == sum(sizes)
    assert 1 <= after.execution_count - before.execution_count <= len(sizes)
    assert after.inference_stats.success.count - before.inference_stats.success.count == len(sizes)
    assert after.inference_stats.queue.count - before.inference_stats.queue.count == len(sizes)
    assert after.inference_stats.compute_infer.ns > before.inference_stats.compute_infer.ns
    assert after.batch_stats


def test_statistics_all_models_and_versions(client: grpcclient.InferenceServerClient) -> None:
    everything = client.get_inference_statistics()
    assert {s.name for s in everything.model_stats} == set(MODELS)
    one = client.get_inference_statistics("simple", "1").model_stats
    assert [(s.name, s.version) for s in one] == [("simple", "1")]
    as_json = client.get_inference_statistics("simple", as_json=True)
    assert as_json["model_stats"][0]["name"] == "simple"
    with pytest.raises(InferenceServerException) as error:
        client.get_inference_statistics("no_such_model")
    assert status_of(error.value) == "StatusCode.NOT_FOUND"


# --------------------------------------------------------------------- the sync client's async_infer


def test_sync_client_async_infer_callbacks(client: grpcclient.InferenceServerClient) -> None:
    """tritonclient's simple_grpc_async_infer_client.py: callbacks with user data, many in flight."""
    results: queue.Queue[tuple[int, Any, Any]] = queue.Queue()

    def callback(index: int, result: Any, error: Any) -> None:
        results.put((index, result, error))

    sent = {}
    for i in range(20):
        a = np.full((1, 16), i, dtype=np.int32)
        b = np.arange(16, dtype=np.int32).reshape(1, 16)
        sent[i] = (a, b)
        client.async_infer("simple", simple_inputs(a, b), partial(callback, i), request_id=f"async-{i}")
    seen = set()
    for _ in range(len(sent)):
        index, result, error = results.get(timeout=WAIT_S)
        assert error is None
        assert result.get_response().id == f"async-{index}"
        a, b = sent[index]
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
        seen.add(index)
    assert seen == set(sent)


def test_sync_client_async_infer_error_in_callback(client: grpcclient.InferenceServerClient) -> None:
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    a = np.zeros((1, 16), dtype=np.int32)
    client.async_infer("no_such_model", simple_inputs(a, a), lambda result, error: results.put((result, error)))
    result, error = results.get(timeout=WAIT_S)
    assert result is None
    assert isinstance(error, InferenceServerException)
    assert status_of(error) == "StatusCode.NOT_FOUND"


# ---------------------------------------------------------------------------------------- streaming


def stream_request(i: int) -> tuple[str, np.ndarray]:
    return f"stream-{i}", np.full((1, 16), i, dtype=np.float32) + np.arange(16, dtype=np.float32) / 16


def test_stream_every_id_answered_once(grpc_url: str) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    count = 50
    sent = dict(stream_request(i) for i in range(count))
    with grpcclient.InferenceServerClient(grpc_url) as triton:
        triton.start_stream(callback=lambda result, error: answers.put((result, error)))
        try:
            for request_id, data in sent.items():
                triton.async_stream_infer("identity_fp32", identity_input(data), request_id=request_id)
            got: dict[str, np.ndarray] = {}
            for _ in range(count):
                result, error = answers.get(timeout=WAIT_S)
                assert error is None, error
                request_id = result.get_response().id
                assert request_id not in got, f"{request_id} answered twice"
                got[request_id] = result.as_numpy("OUTPUT0")
        finally:
            triton.stop_stream()
    assert set(got) == set(sent)
    for request_id, data in sent.items():
        np.testing.assert_array_equal(got[request_id], data)
    assert answers.empty()


def test_stream_error_then_keeps_working(grpc_url: str) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    with grpcclient.InferenceServerClient(grpc_url) as triton:
        triton.start_stream(callback=lambda result, error: answers.put((result, error)))
        try:
            triton.async_stream_infer("no_such_model", simple_inputs(a, a), request_id="bad")
            result, error = answers.get(timeout=WAIT_S)
            assert result is None
            assert isinstance(error, InferenceServerException)
            assert "no_such_model" in error.message()
            bad_batch = np.zeros((9, 16), dtype=np.int32)
            triton.async_stream_infer("simple", simple_inputs(bad_batch, bad_batch), request_id="too-big")
            result, error = answers.get(timeout=WAIT_S)
            assert result is None
            assert isinstance(error, InferenceServerException)
            triton.async_stream_infer("simple", simple_inputs(a, a), request_id="good")
            result, error = answers.get(timeout=WAIT_S)
            assert error is None, error
            assert result.get_response().id == "good"
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * a)
        finally:
            triton.stop_stream()


def test_stream_mixed_models(grpc_url: str) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    x = rng.standard_normal((3, 64)).astype(np.float32)
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    with grpcclient.InferenceServerClient(grpc_url) as triton:
        triton.start_stream(callback=lambda result, error: answers.put((result, error)))
        try:
            mlp = grpcclient.InferInput("INPUT__0", [3, 64], "FP32")
            mlp.set_data_from_numpy(x)
            triton.async_stream_infer("mlp_torch", [mlp], request_id="mlp")
            triton.async_stream_infer(
                "simple", simple_inputs(a, a), request_id="simple", outputs=[grpcclient.InferRequestedOutput("OUTPUT1")]
            )
            got = {}
            for _ in range(2):
                result, error = answers.get(timeout=WAIT_S)
                assert error is None, error
                got[result.get_response().id] = result
        finally:
            triton.stop_stream()
    np.testing.assert_allclose(got["mlp"].as_numpy("OUTPUT__0"), torch_reference(x), rtol=1e-5, atol=1e-6)
    assert [o.name for o in got["simple"].get_response().outputs] == ["OUTPUT1"]
    np.testing.assert_array_equal(got["simple"].as_numpy("OUTPUT1"), np.zeros((1, 16), dtype=np.int32))


# --------------------------------------------------------------------------------- the aio client


async def test_aio_health_and_metadata(grpc_url: str) -> None:
    async with aioclient.InferenceServerClient(grpc_url) as triton:
        assert await triton.is_server_live() is True
        assert await triton.is_server_ready() is True
        assert await triton.is_model_ready("identity_fp32") is True
        assert await triton.is_model_ready("no_such_model") is False
        meta = await triton.get_model_metadata("identity_fp32")
        assert list(meta.inputs[0].shape) == [-1, 16]
        config = await triton.get_model_config("identity_fp32")
        assert config.config.max_batch_size == 64
        index = await triton.get_model_repository_index()
        assert {m.name for m in index.models} == set(MODELS)


async def test_aio_infer(grpc_url: str) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 5, dtype=np.int32)
    inputs = []
    for name, data in (("INPUT0", a), ("INPUT1", b)):
        tensor = aioclient.InferInput(name, [1, 16], "INT32")
        tensor.set_data_from_numpy(data)
        inputs.append(tensor)
    async with aioclient.InferenceServerClient(grpc_url) as triton:
        result = await triton.infer("simple", inputs, request_id="aio-1")
    assert result.get_response().id == "aio-1"
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


async def test_aio_infer_error(grpc_url: str) -> None:
    data = np.zeros((1, 16), dtype=np.float32)
    async with aioclient.InferenceServerClient(grpc_url) as triton:
        with pytest.raises(InferenceServerException) as error:
            await triton.infer("no_such_model", identity_input(data, aioclient))
    assert status_of(error.value) == "StatusCode.NOT_FOUND"


async def test_aio_concurrent_infers_never_mix_answers(grpc_url: str) -> None:
    """200 requests in flight at once on a dynamically batched model: each gets its own rows."""
    count = 200
    payloads = {
        f"req-{i}": (i * 1000 + np.arange((i % 4 + 1) * 16, dtype=np.float32)).reshape(i % 4 + 1, 16)
        for i in range(count)
    }
    async with aioclient.InferenceServerClient(grpc_url) as triton:
        before = (await triton.get_inference_statistics("identity_fp32")).model_stats[0]
        results = await asyncio.gather(
            *(
                triton.infer("identity_fp32", identity_input(data, aioclient), request_id=request_id)
                for request_id, data in payloads.items()
            )
        )
        after = (await triton.get_inference_statistics("identity_fp32")).model_stats[0]
    for (request_id, data), result in zip(payloads.items(), results, strict=True):
        assert result.get_response().id == request_id
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
    assert after.inference_count - before.inference_count == sum(len(d) for d in payloads.values())
    assert after.inference_stats.success.count - before.inference_stats.success.count == count
    assert 1 <= after.execution_count - before.execution_count <= count


async def test_aio_concurrent_mlp(grpc_url: str) -> None:
    xs = [rng.standard_normal((i % 5 + 1, 64)).astype(np.float32) for i in range(40)]
    async with aioclient.InferenceServerClient(grpc_url) as triton:

        async def one(x: np.ndarray) -> np.ndarray:
            tensor = aioclient.InferInput("INPUT__0", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            return (await triton.infer("mlp_torch", [tensor])).as_numpy("OUTPUT__0")  # type: ignore[no-any-return]

        outs = await asyncio.gather(*(one(x) for x in xs))
    for x, out in zip(xs, outs, strict=True):
        np.testing.assert_allclose(out, torch_reference(x), rtol=1e-5, atol=1e-6)


async def test_aio_stream_infer(grpc_url: str) -> None:
    count = 30
    sent = dict(stream_request(i) for i in range(count))
    sent_error = asyncio.Event()

    async def requests() -> AsyncIterator[dict[str, Any]]:
        for request_id, data in sent.items():
            yield {"model_name": "identity_fp32", "inputs": identity_input(data, aioclient), "request_id": request_id}
        bad = np.zeros((1, 16), dtype=np.float32)
        yield {"model_name": "no_such_model", "inputs": identity_input(bad, aioclient), "request_id": "bad"}
        sent_error.set()
        last = np.full((1, 16), -1, dtype=np.float32)
        yield {"model_name": "identity_fp32", "inputs": identity_input(last, aioclient), "request_id": "after-error"}

    got: dict[str, np.ndarray] = {}
    errors: list[InferenceServerException] = []
    async with aioclient.InferenceServerClient(grpc_url) as triton:
        stream = triton.stream_infer(inputs_iterator=requests())

        async def collect() -> None:
            async for result, error in stream:
                if error is not None:
                    errors.append(error)
                else:
                    request_id = result.get_response().id
                    assert request_id not in got, f"{request_id} answered twice"
                    got[request_id] = result.as_numpy("OUTPUT0")

        await asyncio.wait_for(collect(), timeout=WAIT_S)
    assert sent_error.is_set()
    assert len(errors) == 1
    assert "no_such_model" in errors[0].message()
    assert set(got) == {*sent, "after-error"}
    for request_id, data in sent.items():
        np.testing.assert_array_equal(got[request_id], data)
    np.testing.assert_array_equal(got["after-error"], np.full((1, 16), -1, dtype=np.float32))


def test_example_repository_is_what_the_tests_expect() -> None:
    assert sorted(p.name for p in Path(EXAMPLES).iterdir() if p.is_dir()) == sorted(MODELS)
