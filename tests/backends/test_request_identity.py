"""Triton Python models see who sent each request: ``request_id()`` (the client's KServe request
id), ``correlation_id()`` (the sequence id, an integer or a string as sent) and ``parameters()``
(JSON of the client's request parameters, without those the server acts on), over gRPC and
HTTP with tritonclient, through the dynamic batcher and the sequence batcher
(examples/triton/request_identity)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.serverproc import ROOT, ServerProcess, running

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

MODEL = "request_identity"
SEQUENCE = "request_identity_sequence"
PROCESS = "request_identity_process"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("identity")
    shutil.copytree(ROOT / "examples" / "triton" / MODEL, root / MODEL)
    shutil.copytree(ROOT / "examples" / "triton" / MODEL, root / SEQUENCE)
    config = (root / SEQUENCE / "config.pbtxt").read_text()
    config = config.replace(f'name: "{MODEL}"', f'name: "{SEQUENCE}"').replace("dynamic_batching { }", "")
    (root / SEQUENCE / "config.pbtxt").write_text(
        config + "sequence_batching { max_sequence_idle_microseconds: 60000000 }\n"
    )
    shutil.copytree(ROOT / "examples" / "triton" / MODEL, root / PROCESS)
    config = (root / PROCESS / "config.pbtxt").read_text().replace(f'name: "{MODEL}"', f'name: "{PROCESS}"')
    process = 'parameters { key: "execution_mode" value { string_value: "process" } }\n'
    (root / PROCESS / "config.pbtxt").write_text(config + process)
    with running(root, log_dir=logs_dir) as started:
        yield started


def ask(
    module: ModuleType, url: str, model: str, request_id: str = "", **parameters: Any
) -> tuple[str, Any, dict[str, Any]]:
    tensor = module.InferInput("IN", [1, 1], "INT32")
    tensor.set_data_from_numpy(np.array([[7]], np.int32))
    with module.InferenceServerClient(url) as client:
        result = client.infer(model, [tensor], request_id=request_id, **parameters)
    assert result.get_response()  # an answer came
    texts = [result.as_numpy(name)[0, 0].decode() for name in ("REQUEST_ID", "CORRELATION_ID", "PARAMETERS")]
    return texts[0], json.loads(texts[1]), json.loads(texts[2])


@pytest.fixture(params=[grpcclient, httpclient], ids=["grpc", "http"])
def client(request: pytest.FixtureRequest, server: ServerProcess) -> tuple[ModuleType, str]:
    module = request.param
    return module, server.url if module is grpcclient else server.http_url


@pytest.mark.parametrize("model", [MODEL, PROCESS], ids=["default", "process"])
def test_the_request_id_and_parameters_reach_the_model(client: tuple[ModuleType, str], model: str) -> None:
    """Also in execution_mode process, where they travel to the worker beside the tensors."""
    module, url = client
    sent = {"color": "blue", "level": 3, "fast": True}
    request_id, corrid, parameters = ask(module, url, model, "req-42", parameters=sent, priority=1)
    assert request_id == "req-42"
    assert corrid == 0
    assert parameters == sent  # priority is the server's, not the model's


@pytest.mark.parametrize("model", [MODEL, PROCESS], ids=["default", "process"])
def test_a_request_without_them_reads_empty(client: tuple[ModuleType, str], model: str) -> None:
    module, url = client
    assert ask(module, url, model) == ("", 0, {})


@pytest.mark.parametrize("sequence_id", [1001, "session-a"], ids=["int", "string"])
def test_the_sequence_id_is_the_correlation_id(client: tuple[ModuleType, str], sequence_id: int | str) -> None:
    module, url = client
    first = ask(module, url, SEQUENCE, "s1", sequence_id=sequence_id, sequence_start=True)
    last = ask(module, url, SEQUENCE, "s2", sequence_id=sequence_id, sequence_end=True)
    assert first == ("s1", sequence_id, {})
    assert last == ("s2", sequence_id, {})
    assert type(first[1]) is type(sequence_id)


def test_requests_batched_together_keep_their_own_identity(server: ServerProcess) -> None:
    """Concurrent requests that the dynamic batcher may run in one execute each read their own."""

    def one(index: int) -> tuple[str, Any, dict[str, Any]]:
        return ask(grpcclient, server.url, MODEL, f"r{index}", parameters={"index": index})

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(64)))
    assert answers == [(f"r{i}", 0, {"index": i}) for i in range(64)]
