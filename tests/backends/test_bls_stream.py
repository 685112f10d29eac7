"""BLS to decoupled models: ``exec(decoupled=True)`` and ``await async_exec(decoupled=True)`` in
Triton Python models (examples/triton/bls_repeat, bls_repeat_async) calling
examples/triton/repeat_int32, served by a real server and called with tritonclient. The answers
add up as the target sent them, the empty final response included; stopping early cancels the
target (its ``is_cancelled()`` recorded to a file); a missing target is an error answer; a
target that is not decoupled gives its one response."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.serverproc import ROOT, ServerProcess, running

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

TRITON_EXAMPLES = ROOT / "examples" / "triton"
MODELS = ["bls_repeat", "bls_repeat_async"]

ONCE = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            total = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy().sum()
            out = pb_utils.Tensor("OUT", np.array([total], np.int32))
            idx = pb_utils.Tensor("IDX", np.array([0], np.uint32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out, idx]))
        return responses
"""


def variant(root: Path, source: str, name: str, target: str) -> None:
    shutil.copytree(TRITON_EXAMPLES / source, root / name)
    config = (root / name / "config.pbtxt").read_text()
    config = config.replace(f'name: "{source}"', f'name: "{name}"').replace('"repeat_int32"', f'"{target}"')
    (root / name / "config.pbtxt").write_text(config)


@pytest.fixture(scope="module")
def cancel_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cancelled") / "cancelled.txt"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path, cancel_file: Path) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("bls_stream")
    shutil.copytree(TRITON_EXAMPLES / "repeat_int32", root / "repeat_int32")
    with (root / "repeat_int32" / "config.pbtxt").open("a") as config:
        config.write(f'parameters {{ key: "cancel_file" value {{ string_value: "{cancel_file}" }} }}\n')
    # repeat_once: repeat_int32's signature, not decoupled: one answer, OUT = sum(IN)
    shutil.copytree(TRITON_EXAMPLES / "repeat_int32", root / "repeat_once")
    once = (root / "repeat_once" / "config.pbtxt").read_text()
    once = once.replace('name: "repeat_int32"', 'name: "repeat_once"').replace("decoupled: True", "decoupled: False")
    (root / "repeat_once" / "config.pbtxt").write_text(once)
    (root / "repeat_once" / "1" / "model.py").write_text(ONCE)
    for name in MODELS:
        shutil.copytree(TRITON_EXAMPLES / name, root / name)
        variant(root, name, f"{name}_missing", "no_such_model")
        variant(root, name, f"{name}_once", "repeat_once")
    with running(root, log_dir=logs_dir) as started:
        yield started


def url_of(server: ServerProcess, module: ModuleType) -> str:
    return server.url if module is grpcclient else server.http_url


def call(module: ModuleType, url: str, model: str, values: list[int], delay_ms: int = 0, take: int = 0) -> list[int]:
    """``model``'s SUM, ANSWERS and RESPONSES for IN = values."""
    arrays = {
        "IN": np.array(values, np.int32),
        "DELAY": np.full(len(values), delay_ms, np.uint32),
        "TAKE": np.array([take], np.int32),
    }
    inputs = []
    for name, array in arrays.items():
        tensor = module.InferInput(name, list(array.shape), "INT32" if array.dtype == np.int32 else "UINT32")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    with module.InferenceServerClient(url) as client:
        result = client.infer(model, inputs)
    return [int(result.as_numpy(name)[0]) for name in ("SUM", "ANSWERS", "RESPONSES")]


@pytest.mark.parametrize("module", [grpcclient, httpclient], ids=["grpc", "http"])
@pytest.mark.parametrize("model", MODELS)
def test_the_answers_of_a_decoupled_target_arrive_with_the_empty_final(
    server: ServerProcess, module: ModuleType, model: str
) -> None:
    """repeat_int32 answers once per value, then sends its final flag alone: one more response,
    without outputs."""
    url = url_of(server, module)
    assert call(module, url, model, [1, 2, 3, 4], delay_ms=5) == [10, 4, 5]
    assert call(module, url, model, []) == [0, 0, 1]  # the final flag alone


@pytest.mark.parametrize("model", MODELS)
def test_stopping_early_cancels_the_target(server: ServerProcess, cancel_file: Path, model: str) -> None:
    """bls_repeat leaves its for loop after TAKE answers (the iterator abandoned), bls_repeat_async
    calls cancel(): repeat_int32 sees is_cancelled() long before its 200 answers are sent."""
    first = 1000 + MODELS.index(model)
    values = list(range(first, first + 200))
    started = time.monotonic()
    assert call(grpcclient, server.url, model, values, delay_ms=20, take=2) == [2 * first + 1, 2, 2]
    assert time.monotonic() - started < 3  # 200 answers would take 4 s
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lines = cancel_file.read_text().split("\n") if cancel_file.exists() else []
        seen = [line.split() for line in lines if line.startswith(f"{first} ")]
        if seen:
            assert int(seen[0][1]) < 200
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"repeat_int32 never saw its request cancelled ({cancel_file})")
    assert call(grpcclient, server.url, model, [5, 6]) == [11, 2, 3]  # the server serves on


@pytest.mark.parametrize("module", [grpcclient, httpclient], ids=["grpc", "http"])
@pytest.mark.parametrize("model", MODELS)
def test_a_missing_target_is_an_error_answer(server: ServerProcess, module: ModuleType, model: str) -> None:
    url = url_of(server, module)
    with pytest.raises(InferenceServerException) as raised:
        call(module, url, f"{model}_missing", [1, 2])
    assert "no_such_model" in str(raised.value.message())
    assert call(module, url, model, [7]) == [7, 1, 2]


@pytest.mark.parametrize("model", MODELS)
def test_a_target_that_is_not_decoupled_gives_its_one_response(server: ServerProcess, model: str) -> None:
    """As Triton: the one response of a non-decoupled model carries the final flag itself."""
    assert call(grpcclient, server.url, f"{model}_once", [1, 2, 3]) == [6, 1, 1]
