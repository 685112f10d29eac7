"""The in-server entry point for streamed answers (server/core/inference.py ``infer_stream``,
``ModelVersion.stream_tensors``), in process with a real clipperd generator model: answers in
order with a final one, decoupled requests batched by the dynamic batcher, ``infer`` refused,
closing early counted as CANCELED and closing the model's generator."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from backends.common.config import load_model_config
from backends.common.errors import Unimplemented
from schedulers.stats import FailureReason
from server.core.model_version import ModelVersion, load_model_version

pytestmark = pytest.mark.timeout(60)

CONFIG = """
name: "tens"
backend: "python"
max_batch_size: 8
model_transaction_policy { decoupled: true }
input [ { name: "X" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "Y" data_type: TYPE_INT32 dims: [ 1 ] } ]
dynamic_batching { max_queue_delay_microseconds: 200000 }
"""

MODEL = """
import threading
CLOSED = threading.Event()


class Model:
    def execute(self, inputs):
        try:
            for step in range(int(inputs["X"][0, 0])):
                yield {"Y": inputs["X"] * 10 + step}
        finally:
            CLOSED.set()
"""


@pytest.fixture
async def version(tmp_path: Path) -> AsyncIterator[ModelVersion]:
    folder = tmp_path / "tens"
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(CONFIG)
    (folder / "1" / "model.py").write_text(MODEL)
    loaded = await load_model_version(load_model_config(folder), 1, folder / "1")
    try:
        yield loaded
    finally:
        await loaded.close()


async def _answers(version: ModelVersion, x: int) -> list[list[list[int]] | None]:
    out = []
    async for answer in version.stream_tensors({"X": np.array([[x]], np.int32)}):
        assert answer.error is None
        out.append(None if answer.response is None else answer.response["Y"].tolist())
        if answer.final:
            break
    return out


async def test_answers_in_order_then_a_final_one_and_requests_batched(version: ModelVersion) -> None:
    results = await asyncio.gather(*(_answers(version, x) for x in (2, 3, 4)))
    assert results[0] == [[[20]], [[21]], None]
    assert results[1] == [[[30]], [[31]], [[32]], None]
    assert results[2] == [[[40]], [[41]], [[42]], [[43]], None]
    assert version.stats.success.count == 3  # counted before the final answers were read
    assert version.stats.fail.count == 0
    # the batch's execution is recorded once the model's generator returns, after its last answer
    await _executions(version, 1)
    assert version.stats.execution_count == 1  # the three waited the delay and ran as one batch
    assert version.stats.inference_count == 3


async def _executions(version: ModelVersion, count: int) -> None:
    for _ in range(3000):  # 30 s at most: a generous deadline, not a timing bet
        if version.stats.execution_count >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} executions not recorded within 30 s")


async def test_infer_refuses_a_decoupled_model(version: ModelVersion) -> None:
    with pytest.raises(Unimplemented, match="decoupled"):
        await version.infer_tensors({"X": np.array([[1]], np.int32)})


async def test_closing_early_cancels_and_closes_the_generator(version: ModelVersion) -> None:
    stream = version.stream_tensors({"X": np.array([[1000]], np.int32)})
    async with contextlib.aclosing(stream):
        first = await anext(stream)
        assert first.response is not None
    module = next(m for name, m in __import__("sys").modules.items() if name.startswith("_clipperd_model_tens"))
    assert await asyncio.to_thread(module.CLOSED.wait, 10)
    assert version.stats.failures[FailureReason.CANCELED] == 1
