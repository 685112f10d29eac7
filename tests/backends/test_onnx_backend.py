"""The ONNX Runtime backend through real servers and tritonclient: the bundled ``mlp_onnx``
(config completed from the graph) equals ONNX Runtime in-process and the TorchScript model with
the same weights, over gRPC and HTTP, alone and batched; auto-completion rules; BYTES tensors;
session options; and the bad cases (missing or corrupt file, names or types that disagree with
the graph, bad parameters, a GPU instance on a machine without one): the model is UNAVAILABLE
with a reason and the rest of the server serves."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper

from tests.serverproc import EXAMPLES, ServerProcess, index_entry, running

TOLERANCE = 1e-5  # the same graph on the same runtime: equal up to float summation order


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 64)).astype(np.float32)


def reference(x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(EXAMPLES / "mlp_onnx" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["OUTPUT0"], {"INPUT0": x})[0])


def infer(
    module: object, url: str, model: str, x: np.ndarray, name: str = "INPUT0", out: str = "OUTPUT0"
) -> np.ndarray:
    client_class = module.InferenceServerClient  # type: ignore[attr-defined]
    with client_class(url) as client:
        tensor = module.InferInput(name, list(x.shape), "FP32")  # type: ignore[attr-defined]
        tensor.set_data_from_numpy(x)
        return np.asarray(client.infer(model, [tensor]).as_numpy(out))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_mlp_onnx_equals_onnxruntime_in_process(example_server: ServerProcess, protocol: str) -> None:
    module, url = (grpcclient, example_server.url) if protocol == "grpc" else (httpclient, example_server.http_url)
    for n in (1, 7):
        x = rows(n, seed=n)
        np.testing.assert_allclose(infer(module, url, "mlp_onnx", x), reference(x), atol=TOLERANCE)


def test_mlp_onnx_equals_the_torchscript_model_with_the_same_weights(example_server: ServerProcess) -> None:
    x = rows(5)
    onnx_out = infer(grpcclient, example_server.url, "mlp_onnx", x)
    torch_out = infer(grpcclient, example_server.url, "mlp_torch", x, "INPUT__0", "OUTPUT__0")
    np.testing.assert_allclose(onnx_out, torch_out, atol=1e-5)


def test_concurrent_requests_are_batched_and_each_gets_its_rows(example_server: ServerProcess) -> None:
    inputs = [rows(1, seed=100 + i) for i in range(32)]
    with ThreadPoolExecutor(16) as pool:
        outputs = list(pool.map(lambda x: infer(grpcclient, example_server.url, "mlp_onnx", x), inputs))
    for x, y in zip(inputs, outputs, strict=True):
        np.testing.assert_allclose(y, reference(x), atol=TOLERANCE)
    with grpcclient.InferenceServerClient(example_server.url) as client:
        stats = client.get_inference_statistics("mlp_onnx").model_stats[0]
    assert stats.inference_count > stats.execution_count  # some batches held several requests


def test_the_completed_config_is_what_model_config_shows(example_server: ServerProcess) -> None:
    with grpcclient.InferenceServerClient(example_server.url) as client:
        config = client.get_model_config("mlp_onnx").config
        metadata = client.get_model_metadata("mlp_onnx")
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("INPUT0", 11, [64])]  # TYPE_FP32
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [("OUTPUT0", 11, [10])]
    assert config.max_batch_size == 128
    assert [(t.name, list(t.shape)) for t in metadata.inputs] == [("INPUT0", [-1, 64])]
    assert metadata.platform == "onnxruntime_onnx"


# ------------------------------------------------------------------------- a repository of cases


def string_graph(path: Path) -> None:
    """TEXT (string, [batch, n]) -> ECHO: ONNX Runtime's string tensors through the server."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["TEXT"], ["ECHO"])],
        "strings",
        [helper.make_tensor_value_info("TEXT", TensorProto.STRING, ["batch", "n"])],
        [helper.make_tensor_value_info("ECHO", TensorProto.STRING, ["batch", "n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True)
    onnx.save(model, str(path))


def add(repo: Path, name: str, config: str, model: Path | bytes | None = None) -> None:
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "config.pbtxt").write_text(f'name: "{name}"\nplatform: "onnxruntime_onnx"\n{config}')
    target = repo / name / "1" / "model.onnx"
    if isinstance(model, Path):
        target.write_bytes(model.read_bytes())
    elif isinstance(model, bytes):
        target.write_bytes(model)


MLP = EXAMPLES / "mlp_onnx" / "1" / "model.onnx"
IO = """
input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ 64 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 10 ] } ]
"""
TUNED = """
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
parameters { key: "graph_optimization_level" value: { string_value: "basic" } }
optimization { graph { level: -1 } }
"""
BAD = {
    "no_file": ("max_batch_size: 8" + IO, None, "file 'model.onnx' not found"),
    "corrupt": ("max_batch_size: 8" + IO, b"this is not an onnx graph", "cannot be loaded by onnxruntime"),
    "wrong_name": ("max_batch_size: 8" + IO.replace('"INPUT0"', '"X"'), MLP, "input 'X' is not in the ONNX graph"),
    "wrong_type": (
        "max_batch_size: 8" + IO.replace("TYPE_FP32, dims: [ 64 ]", "TYPE_INT32, dims: [ 64 ]"),
        MLP,
        "input 'INPUT0' is TYPE_INT32 in the config but tensor(float) in the ONNX graph",
    ),
    "bad_level": (
        "max_batch_size: 8" + IO + 'parameters { key: "graph_optimization_level" value: { string_value: "max" } }',
        MLP,
        "field 'parameters.graph_optimization_level': must be one of disable_all, basic, extended, all, got 'max'",
    ),
    "bad_threads": (
        "max_batch_size: 8" + IO + 'parameters { key: "intra_op_thread_count" value: { string_value: "many" } }',
        MLP,
        "field 'parameters.intra_op_thread_count': must be a whole number from 0 to 2147483647, got 'many'",
    ),
    "on_gpu": ("max_batch_size: 8" + IO + "instance_group [ { kind: KIND_GPU } ]", MLP, "GPU"),
}


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("onnx_cases")
    add(repo, "auto_batch", "", MLP)  # max_batch_size 0, first dims symbolic: becomes 4
    add(repo, "tuned", "max_batch_size: 8" + IO + TUNED, MLP)
    string_graph(repo / "strings" / "1" / "model.onnx")
    add(repo, "strings", "max_batch_size: 4")
    for name, (config, model, _) in BAD.items():
        add(repo, name, config, model)
    with running(repo, "--no-strict-readiness", log_dir=logs_dir) as proc:
        yield proc


def test_auto_completion_gives_a_batchable_graph_max_batch_size_4(cases: ServerProcess) -> None:
    with grpcclient.InferenceServerClient(cases.url) as client:
        config = client.get_model_config("auto_batch").config
    assert config.max_batch_size == 4
    assert config.HasField("dynamic_batching")
    assert [(i.name, list(i.dims)) for i in config.input] == [("INPUT0", [64])]
    x = rows(3)
    np.testing.assert_allclose(infer(grpcclient, cases.url, "auto_batch", x), reference(x), atol=TOLERANCE)


def test_session_options_from_parameters(cases: ServerProcess) -> None:
    x = rows(2)
    np.testing.assert_allclose(infer(httpclient, cases.http_url, "tuned", x), reference(x), atol=TOLERANCE)


def test_string_tensors(cases: ServerProcess) -> None:
    with grpcclient.InferenceServerClient(cases.url) as client:
        text = grpcclient.InferInput("TEXT", [2, 2], "BYTES")
        text.set_data_from_numpy(np.array([[b"a", b"bc"], [b"", "d\u00e9".encode()]], dtype=object))
        out = client.infer("strings", [text]).as_numpy("ECHO")
    assert out is not None
    assert out.tolist() == [[b"a", b"bc"], [b"", "d\u00e9".encode()]]


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_models_are_unavailable_with_a_reason(cases: ServerProcess, name: str) -> None:
    state, reason = index_entry(cases.url, name)
    assert state == "UNAVAILABLE"
    assert BAD[name][2] in reason
    assert "/tmp" not in reason  # no paths leak
    x = rows(1)
    np.testing.assert_allclose(infer(grpcclient, cases.url, "tuned", x), reference(x), atol=TOLERANCE)


def test_a_request_of_the_wrong_type_is_refused(cases: ServerProcess) -> None:
    with grpcclient.InferenceServerClient(cases.url) as client:
        tensor = grpcclient.InferInput("INPUT0", [1, 64], "INT32")
        tensor.set_data_from_numpy(np.zeros((1, 64), np.int32))
        with pytest.raises(Exception, match="INT32") as info:
            client.infer("tuned", [tensor])
    assert "INVALID_ARGUMENT" in str(info.value)
