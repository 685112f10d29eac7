"""Implicit state (``sequence_batching.state``) kept by the server per sequence, batched over the
slots, for ONNX Runtime (oldest) and PyTorch with control inputs as tensors (direct): the
accumulators of examples/triton, built into the test's folder by scripts/build_sequence_models.py."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient

from tests.serverproc import ROOT, ServerProcess, running

pytestmark = pytest.mark.timeout(300)

EXAMPLES = ("seq_state_onnx", "seq_state_torch")
UTIL = "seq_state_torch_util"  # the PyTorch one waiting for half its slots (up to 2 ms) before a batch
MODELS = (*EXAMPLES, UTIL)


def _build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "build_sequence_models", ROOT / "scripts" / "build_sequence_models.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("state")
    for name in EXAMPLES:
        (repo / name).mkdir()
        shutil.copy(ROOT / "examples" / "triton" / name / "config.pbtxt", repo / name / "config.pbtxt")
    _build_script().build(repo)
    shutil.copytree(repo / "seq_state_torch", repo / UTIL)
    config = (repo / UTIL / "config.pbtxt").read_text().replace('"seq_state_torch"', f'"{UTIL}"')
    config = config.replace("direct { }", "direct { minimum_slot_utilization: 0.5 max_queue_delay_microseconds: 2000 }")
    (repo / UTIL / "config.pbtxt").write_text(config)
    with running(repo, log_dir=logs_dir) as started:
        yield started
        assert started.is_running(), started.log()


async def _sequence(client: grpcaio.InferenceServerClient, model: str, seq: int, values: list[float]) -> list[float]:
    sums = []
    for k, value in enumerate(values):
        tensor = grpcaio.InferInput("INPUT", [1, 1], "FP32")
        tensor.set_data_from_numpy(np.array([[value]], dtype=np.float32))
        result = await client.infer(
            model, [tensor], sequence_id=seq, sequence_start=k == 0, sequence_end=k == len(values) - 1
        )
        sums.append(float(result.as_numpy("OUTPUT")[0, 0]))
    return sums


@pytest.mark.parametrize("model", MODELS)
def test_each_sequence_keeps_its_own_state(server: ServerProcess, model: str) -> None:
    """200 sequences at once (more than the slots: they share batches and wait in the backlog),
    each of distinct values; every answer is its own sequence's running sum."""
    values = {seq: [float(seq % 97 + k) for k in range(8)] for seq in range(1, 201)}

    async def main() -> list[list[float]]:
        clients = [grpcaio.InferenceServerClient(server.url) for _ in range(4)]
        try:
            return await asyncio.gather(*(_sequence(clients[s % 4], model, s, v) for s, v in values.items()))
        finally:
            await asyncio.gather(*(c.close() for c in clients))

    for (seq, sent), got in zip(values.items(), asyncio.run(main()), strict=True):
        assert got == list(np.cumsum(sent)), seq


@pytest.mark.parametrize("model", MODELS)
def test_a_restart_zeroes_the_state_and_the_state_is_not_an_output(server: ServerProcess, model: str) -> None:
    http = httpclient.InferenceServerClient(server.http_url)
    try:
        for expected in ([2.0, 5.0], [2.0, 5.0]):  # the same id started twice: the sum starts over
            sums = []
            for k, value in enumerate([2.0, 3.0]):
                tensor = httpclient.InferInput("INPUT", [1, 1], "FP32")
                tensor.set_data_from_numpy(np.array([[value]], dtype=np.float32))
                result = http.infer(model, [tensor], sequence_id=42, sequence_start=k == 0)
                sums.append(float(result.as_numpy("OUTPUT")[0, 0]))
                assert [o["name"] for o in result.get_response()["outputs"]] == ["OUTPUT"]
            assert sums == expected
        metadata = http.get_model_metadata(model)
        assert [i["name"] for i in metadata["inputs"]] == ["INPUT"]  # controls and state are the server's
    finally:
        http.close()
