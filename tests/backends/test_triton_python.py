"""Triton Python-backend models (``TritonPythonModel`` + ``triton_python_backend_utils``) served
unchanged, through a real server and tritonclient: the bundled ``add_sub`` over gRPC and HTTP,
a batch reaching ``execute`` as its requests, a ``TritonError`` failing only its own request,
exceptions and wrong returns failing the batch with a clear error, ``initialize``'s args, BYTES
tensors, process instances, a model whose ``initialize`` raises (UNAVAILABLE, the rest serves),
and the utilities on their own."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from backends import triton_utils as pb
from tests.serverproc import ServerProcess, running

HEADER = "import json\nimport numpy as np\nimport triton_python_backend_utils as pb_utils\n\n"


def write(repo: Path, name: str, config: str, model: str) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(f'name: "{name}"\nbackend: "python"\n' + textwrap.dedent(config))
    (repo / name / "1" / "model.py").write_text(HEADER + textwrap.dedent(model))


FP32_IO = """
input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ 1 ] } ]
output [
  { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 1 ] },
  { name: "REQUESTS", data_type: TYPE_INT32, dims: [ 1 ] }
]
"""

BATCHING = """
max_batch_size: 8
dynamic_batching { preferred_batch_size: [ 4 ], max_queue_delay_microseconds: 9000000 }
"""

BATCH_MODEL = """
class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            if (x < 0).any():
                error = pb_utils.TritonError("negative input", pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            count = np.full(x.shape, len(requests), dtype=np.int32)
            outputs = [pb_utils.Tensor("OUTPUT0", x * 2), pb_utils.Tensor("REQUESTS", count)]
            responses.append(pb_utils.InferenceResponse(outputs))
        return responses
"""

FAILING = {
    "tp_raises": 'raise pb_utils.TritonModelException("broken on purpose")',
    "tp_wrong_count": "return []",
    "tp_bad_output": (
        'return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", np.zeros((1, 1), np.float64)),'
        ' pb_utils.Tensor("REQUESTS", np.zeros((1, 1), np.int32))]) for r in requests]'
    ),
    "tp_decoupled": "requests[0].get_response_sender()",
}

ARGS_MODEL = """
class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.info = json.dumps({
            "keys": sorted(args),
            "kind": args["model_instance_kind"],
            "name": args["model_name"],
            "version": args["model_version"],
            "max_batch_size": config["max_batch_size"],
            "dims": config["input"][0]["dims"],
            "dtype": pb_utils.triton_string_to_numpy(config["output"][0]["data_type"]).__name__,
        })

    def execute(self, requests):
        responses = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            upper = np.array([t.upper() for t in text.reshape(-1)], dtype=object).reshape(text.shape)
            info = np.array([self.info.encode()], dtype=object)
            outputs = [pb_utils.Tensor("UPPER", upper), pb_utils.Tensor("INFO", info)]
            responses.append(pb_utils.InferenceResponse(outputs))
        return responses
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("triton_python")
    write(root, "tp_batch", BATCHING + FP32_IO, BATCH_MODEL)
    for name, body in FAILING.items():
        model = f"class TritonPythonModel:\n    def execute(self, requests):\n        {body}\n"
        write(root, name, "max_batch_size: 8" + FP32_IO, model)
    strings = """
        max_batch_size: 0
        input [ { name: "TEXT", data_type: TYPE_STRING, dims: [ -1 ] } ]
        output [
          { name: "UPPER", data_type: TYPE_STRING, dims: [ -1 ] },
          { name: "INFO", data_type: TYPE_STRING, dims: [ 1 ] }
        ]
    """
    write(root, "tp_args", strings, ARGS_MODEL)
    process = 'max_batch_size: 8\nparameters { key: "execution_mode" value: { string_value: "process" } }'
    write(root, "tp_process", process + FP32_IO, BATCH_MODEL)
    init_fails = """
        class TritonPythonModel:
            def initialize(self, args):
                raise pb_utils.TritonModelException("no weights here")

            def execute(self, requests):
                return []
    """
    write(root, "tp_init_fails", "max_batch_size: 8" + FP32_IO, init_fails)
    return root


@pytest.fixture(scope="module")
def server(repo: Path, logs_dir: Path) -> Iterator[ServerProcess]:
    with running(repo, "--no-strict-readiness", log_dir=logs_dir) as proc:
        yield proc


def infer_one(url: str, model: str, value: float) -> dict[str, np.ndarray]:
    with grpcclient.InferenceServerClient(url) as client:
        tensor = grpcclient.InferInput("INPUT0", [1, 1], "FP32")
        tensor.set_data_from_numpy(np.array([[value]], np.float32))
        result = client.infer(model, [tensor])
        return {name: result.as_numpy(name) for name in ("OUTPUT0", "REQUESTS")}  # type: ignore[misc]


def error_of(url: str, model: str, value: float = 1.0) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        infer_one(url, model, value)
    return info.value


def test_bundled_add_sub_over_grpc_and_http(example_server: ServerProcess) -> None:
    a = np.array([[1.5, 2.0, -3.0, 4.25]], np.float32)
    b = np.array([[0.5, -1.0, 2.0, 0.25]], np.float32)
    for module, url in ((grpcclient, example_server.url), (httpclient, example_server.http_url)):
        with module.InferenceServerClient(url) as client:
            inputs = [module.InferInput("INPUT0", [1, 4], "FP32"), module.InferInput("INPUT1", [1, 4], "FP32")]
            inputs[0].set_data_from_numpy(a)
            inputs[1].set_data_from_numpy(b)
            result = client.infer("add_sub", inputs)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_a_batch_reaches_execute_as_its_requests_and_an_error_fails_only_its_own(server: ServerProcess) -> None:
    """Four concurrent requests form one batch (preferred size 4): execute sees 4 requests; the
    one with a negative input gets the model's INVALID_ARG, its batch-mates their answers."""
    values = [1.0, 2.0, -1.0, 4.0]
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(infer_one, server.url, "tp_batch", v) for v in values]
        outcomes = [f.exception() or f.result() for f in futures]
    for value, outcome in zip(values, outcomes, strict=True):
        if value < 0:
            assert isinstance(outcome, InferenceServerException)
            assert outcome.status() == "StatusCode.INVALID_ARGUMENT"
            assert "negative input" in str(outcome.message())
        else:
            assert isinstance(outcome, dict), outcome
            assert outcome["OUTPUT0"].tolist() == [[value * 2]]
            assert outcome["REQUESTS"].tolist() == [[4]]


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ("tp_raises", "TritonModelException: broken on purpose"),
        ("tp_wrong_count", "must return a list of 1 InferenceResponse"),
        ("tp_bad_output", "output 'OUTPUT0' has dtype float64"),
        ("tp_decoupled", "decoupled models"),
    ],
)
def test_model_failures_are_clear_errors(server: ServerProcess, model: str, reason: str) -> None:
    error = error_of(server.url, model)
    assert error.status() == "StatusCode.INTERNAL"
    assert reason in str(error.message())
    assert infer_one(server.url, "tp_batch", 3.0)["OUTPUT0"].tolist() == [[6.0]]  # the server serves on


def test_initialize_args_and_bytes_tensors(server: ServerProcess) -> None:
    with httpclient.InferenceServerClient(server.http_url) as client:
        text = httpclient.InferInput("TEXT", [2], "BYTES")
        text.set_data_from_numpy(np.array([b"ab", b"cd"], dtype=object))
        result = client.infer("tp_args", [text])
    assert result.as_numpy("UPPER").tolist() == [b"AB", b"CD"]
    info = json.loads(result.as_numpy("INFO")[0])
    assert info == {
        "keys": [
            "model_config", "model_instance_device_id", "model_instance_kind", "model_instance_name",
            "model_name", "model_repository", "model_version",
        ],
        "kind": "CPU", "name": "tp_args", "version": "1", "max_batch_size": 0, "dims": [-1], "dtype": "object_",
    }  # fmt: skip


def test_process_instances_run_triton_models(server: ServerProcess) -> None:
    out = infer_one(server.url, "tp_process", 2.5)
    assert out["OUTPUT0"].tolist() == [[5.0]]
    assert out["REQUESTS"].tolist() == [[1]]
    error = error_of(server.url, "tp_process", -1.0)
    assert error.status() == "StatusCode.INVALID_ARGUMENT"


def test_initialize_that_raises_makes_the_model_unavailable(server: ServerProcess) -> None:
    with grpcclient.InferenceServerClient(server.url) as client:
        index = {m.name: m for m in client.get_model_repository_index().models}
        assert index["tp_init_fails"].state == "UNAVAILABLE"
        assert "no weights here" in index["tp_init_fails"].reason
        assert index["tp_batch"].state == "READY"


# ------------------------------------------------------------------------------- the utilities


def test_type_helpers() -> None:
    assert pb.triton_string_to_numpy("TYPE_FP32") is np.float32
    assert pb.triton_string_to_numpy("TYPE_STRING") is np.object_
    assert pb.triton_to_numpy_type(8) is np.int32
    assert pb.numpy_to_triton_type(np.float64) == 12
    assert pb.numpy_to_triton_type(np.dtype(object)) == 13
    with pytest.raises(pb.TritonModelException):
        pb.triton_string_to_numpy("TYPE_NOPE")
    with pytest.raises(pb.TritonModelException):
        pb.triton_to_numpy_type(99)


def test_tensor_and_config_helpers() -> None:
    tensor = pb.Tensor("X", np.arange(6, dtype=np.float32).reshape(2, 3))
    assert tensor.name() == "X"
    assert tensor.shape() == [2, 3]
    assert tensor.is_cpu()
    assert pb.Tensor.from_dlpack("Y", tensor.as_numpy()).as_numpy().tolist() == tensor.as_numpy().tolist()
    assert pb.Tensor("S", np.array(["a", "b"])).as_numpy().tolist() == [b"a", b"b"]
    with pytest.raises(pb.TritonModelException):
        pb.Tensor("S", np.array([b"a"], dtype=object)).to_dlpack()
    config = {"input": [{"name": "A", "data_type": "TYPE_INT8"}], "output": [{"name": "B", "data_type": "TYPE_BOOL"}]}
    assert pb.get_input_config_by_name(config, "A") == {"name": "A", "data_type": "TYPE_INT8"}
    assert pb.get_output_config_by_name(config, "A") is None
    assert not pb.using_decoupled_model_transaction_policy(config)
    request = pb.InferenceRequest([tensor], ["B"], request_id="r1")
    assert pb.get_input_tensor_by_name(request, "X") is tensor
    assert pb.get_input_tensor_by_name(request, "Z") is None
    assert json.loads(request.parameters()) == {}
    error = pb.TritonError("bad", pb.TritonError.NOT_FOUND)
    response = pb.InferenceResponse([], error=error)
    assert response.has_error()
    assert response.error() is error
    assert error.code() == pb.TritonError.NOT_FOUND
