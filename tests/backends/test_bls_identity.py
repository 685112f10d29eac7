"""A BLS request carries the calling model's request id and sequence to its target, as Triton's
``InferenceRequest(request_id=..., correlation_id=..., flags=...)``: a sequence model in front
of a sequence model (examples/triton/bls_forward -> seq_accumulate_direct) keeps each
sequence's sum through the pipeline, and a target that reads its request's identity
(examples/triton/request_identity) sees the id and sequence the client sent to the front model.
Real server, tritonclient over gRPC and HTTP."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.serverproc import ROOT, ServerProcess, running

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

TRITON = ROOT / "examples" / "triton"
FORWARD, TO_IDENTITY = "bls_forward", "bls_forward_identity"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("bls-identity")
    for name in (FORWARD, "seq_accumulate_direct", "request_identity"):
        shutil.copytree(TRITON / name, root / name)
    shutil.copytree(TRITON / FORWARD, root / TO_IDENTITY)
    config = (root / TO_IDENTITY / "config.pbtxt").read_text()
    config = config.replace(f'name: "{FORWARD}"', f'name: "{TO_IDENTITY}"')
    config = config.replace('"seq_accumulate_direct"', '"request_identity"').replace('\\"INPUT\\"', '\\"IN\\"')
    outputs = """output [
  { name: "OUT", data_type: TYPE_INT32, dims: [ 1 ] },
  { name: "REQUEST_ID", data_type: TYPE_STRING, dims: [ 1 ] },
  { name: "CORRELATION_ID", data_type: TYPE_STRING, dims: [ 1 ] },
  { name: "PARAMETERS", data_type: TYPE_STRING, dims: [ 1 ] }
]"""
    config = config.replace('output [ { name: "OUTPUT", data_type: TYPE_INT32, dims: [ 1 ] } ]', outputs)
    (root / TO_IDENTITY / "config.pbtxt").write_text(config)
    with running(root, log_dir=logs_dir) as started:
        yield started


@pytest.fixture(params=[grpcclient, httpclient], ids=["grpc", "http"])
def client(request: pytest.FixtureRequest, server: ServerProcess) -> tuple[ModuleType, str]:
    module = request.param
    return module, server.url if module is grpcclient else server.http_url


def send(client: tuple[ModuleType, str], model: str, value: int, **kwargs: Any) -> Any:
    module, url = client
    tensor = module.InferInput("IN", [1, 1], "INT32")
    tensor.set_data_from_numpy(np.array([[value]], np.int32))
    with module.InferenceServerClient(url) as connection:
        return connection.infer(model, [tensor], **kwargs)


def test_sequences_keep_their_sums_through_the_bls_pipeline(client: tuple[ModuleType, str]) -> None:
    """Two sequences interleaved: each request's sum is its own sequence's (the front model's
    correlation id and start/end flags reached the accumulator)."""
    base = 9000 if client[0] is grpcclient else 9100
    values = {base + 1: [1, 2, 3, 4], base + 2: [10, 20, 30, 40]}
    sums: dict[int, list[int]] = {sequence: [] for sequence in values}
    for step in range(4):
        for sequence, series in values.items():
            flags = {"sequence_start": step == 0, "sequence_end": step == 3}
            result = send(client, FORWARD, series[step], sequence_id=sequence, **flags)
            sums[sequence].append(int(result.as_numpy("OUTPUT")[0, 0]))
    assert sums == {base + 1: [1, 3, 6, 10], base + 2: [10, 30, 60, 100]}


def test_the_target_sees_the_request_id_and_sequence_sent_to_the_front_model(client: tuple[ModuleType, str]) -> None:
    result = send(client, TO_IDENTITY, 7, request_id="front-17", sequence_id="chat-5", sequence_start=True)
    texts = [result.as_numpy(name)[0, 0].decode() for name in ("REQUEST_ID", "CORRELATION_ID", "PARAMETERS")]
    assert texts[0] == "front-17"
    assert json.loads(texts[1]) == "chat-5"
    assert json.loads(texts[2]) == {}  # the sequence parameters are the server's, not the model's
    assert int(result.as_numpy("OUT")[0, 0]) == 7


def test_the_targets_refusal_is_the_answers_error(client: tuple[ModuleType, str]) -> None:
    """A string sequence id suits the front model (no CORRID control) but not the accumulator
    (a UINT64 CORRID): the target's INVALID_ARGUMENT comes back through BLS as the answer's
    error, and the pipeline serves on."""
    with pytest.raises(InferenceServerException) as error:
        send(client, FORWARD, 1, sequence_id="text-1", sequence_start=True, sequence_end=True)
    assert "seq_accumulate_direct" in str(error.value.message())
    sequence = 9400 if client[0] is grpcclient else 9500
    result = send(client, FORWARD, 5, sequence_id=sequence, sequence_start=True, sequence_end=True)
    assert int(result.as_numpy("OUTPUT")[0, 0]) == 5
