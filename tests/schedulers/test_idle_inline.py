"""Idle inline execution through a real server: a small PyTorch model's requests at concurrency 1
run on the event loop once the device is known to be fast (the clipperd_device_inline_executions
counter), answers are the model's own whichever path a request took, concurrent requests still
queue and batch on the instance thread (inline executions never batch), the config's opt-outs
hold, and a bad ``idle_inline_us`` or ``execution_mode`` fails the load naming the key and value."""

from __future__ import annotations

import concurrent.futures
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient

from tests.serverproc import EXAMPLES, ServerProcess, index_entry, model_metric, running

pytestmark = pytest.mark.timeout(180)

MLP = EXAMPLES / "mlp_torch"
BASE = (MLP / "config.pbtxt").read_text()
FAST = "1000000"  # 1 s: far above any forward of this MLP, so only idleness decides


def variant(name: str, **parameters: str) -> str:
    config = BASE.replace('name: "mlp_torch"', f'name: "{name}"')
    for key, value in parameters.items():
        config += f'\nparameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}'
    return config + "\n"


MODELS = {
    "inline": variant("inline", idle_inline_us=FAST),
    "threaded": variant("threaded", execution_mode="thread", idle_inline_us=FAST),
    "off": variant("off", idle_inline_us="0"),
    "tiny_bound": variant("tiny_bound", idle_inline_us="1"),
    "windowed": variant("windowed", idle_inline_us=FAST).replace(
        "dynamic_batching { }", "dynamic_batching { max_queue_delay_microseconds: 100 }"
    ),
}
# a bad parameter fails the load with one message: the model, the key, the value cut short
BAD_BOUND = "field 'parameters.idle_inline_us': must be a whole number of microseconds from 0 to 10000000, got "
BAD = {
    "bad_word": ("idle_inline_us", "soon", BAD_BOUND + "'soon'"),
    "bad_negative": ("idle_inline_us", "-5", BAD_BOUND + "'-5'"),
    "bad_fraction": ("idle_inline_us", "2.5", BAD_BOUND + "'2.5'"),
    "bad_digits": ("idle_inline_us", "\u0661\u0662", BAD_BOUND + "'\u0661\u0662'"),  # int() takes them
    "bad_huge": ("idle_inline_us", "9" * 5000, BAD_BOUND + repr("9" * 32)),  # int() refuses past 4300
    "bad_past_bound": ("idle_inline_us", "10000001", BAD_BOUND + "'10000001'"),
    "bad_mode": (
        "execution_mode",
        "gpu",
        "field 'parameters.execution_mode': must be one of thread, event_loop, process, got 'gpu'",
    ),
}
MODELS.update({name: variant(name, **{key: value}) for name, (key, value, _) in BAD.items()})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("inline-repo")
    for name, config in MODELS.items():
        shutil.copytree(MLP, repo / name)
        (repo / name / "config.pbtxt").write_text(config)
    with running(repo, "--no-strict-readiness", log_dir=logs_dir) as proc:  # the bad ones fail, on purpose
        yield proc
        assert proc.is_running(), proc.log()


@pytest.fixture(scope="module")
def module() -> torch.jit.ScriptModule:
    return torch.jit.load(str(MLP / "1" / "model.pt")).eval()


def infer(client: grpcclient.InferenceServerClient, model: str, x: np.ndarray) -> np.ndarray:
    tensor = grpcclient.InferInput("INPUT__0", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result: np.ndarray | None = client.infer(model, [tensor]).as_numpy("OUTPUT__0")
    assert result is not None
    return result


def alone(client: grpcclient.InferenceServerClient, model: str, x: np.ndarray) -> np.ndarray:
    """A request after a pause, as a lone client's requests come (a request right after a
    completion is taken for load, and queues)."""
    time.sleep(0.005)
    return infer(client, model, x)


def expected(module: torch.jit.ScriptModule, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return module(torch.from_numpy(x)).numpy()  # type: ignore[no-any-return]


def test_sequential_requests_run_on_the_event_loop_after_the_warm_up(
    server: ServerProcess, module: torch.jit.ScriptModule
) -> None:
    rng = np.random.default_rng(0)
    with grpcclient.InferenceServerClient(server.url) as client:
        for _ in range(6):
            x = rng.standard_normal((1, 64)).astype(np.float32)
            np.testing.assert_allclose(alone(client, "inline", x), expected(module, x), rtol=1e-5, atol=1e-6)
    # the first execution warms the instance up, the second is the first measured (both on the
    # instance thread); the device is idle at every later arrival
    assert model_metric(server, "clipperd_device_executions", "inline") == 6
    assert model_metric(server, "clipperd_device_inline_executions", "inline") == 4


@pytest.mark.parametrize("model", ["threaded", "off", "tiny_bound", "windowed"])
def test_the_opt_outs_keep_every_execution_on_the_thread(server: ServerProcess, model: str) -> None:
    """An explicit execution_mode thread, idle_inline_us 0, a bound no forward meets, a batching
    window (max_queue_delay_microseconds) that must be honoured."""
    x = np.ones((1, 64), dtype=np.float32)
    with grpcclient.InferenceServerClient(server.url) as client:
        for _ in range(5):
            alone(client, model, x)
    assert model_metric(server, "clipperd_device_executions", model) == 5
    assert model_metric(server, "clipperd_device_inline_executions", model) == 0


def test_concurrent_requests_are_answered_right_on_either_path(
    server: ServerProcess, module: torch.jit.ScriptModule
) -> None:
    rng = np.random.default_rng(1)
    rows = [rng.standard_normal((1 + i % 3, 64)).astype(np.float32) for i in range(96)]
    executions = model_metric(server, "clipperd_device_executions", "inline")
    inline = model_metric(server, "clipperd_device_inline_executions", "inline")

    def call(x: np.ndarray) -> np.ndarray:
        with grpcclient.InferenceServerClient(server.url) as client:
            return infer(client, "inline", x)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(call, rows))
    for x, answer in zip(rows, answers, strict=True):
        np.testing.assert_allclose(answer, expected(module, x), rtol=1e-5, atol=1e-6)
    ran = model_metric(server, "clipperd_device_executions", "inline") - executions
    ran_inline = model_metric(server, "clipperd_device_inline_executions", "inline") - inline
    assert 0 < ran < 96  # under load requests queue and batch on the thread
    assert 0 <= ran_inline < ran
    with grpcclient.InferenceServerClient(server.url) as client:  # the device is idle again after
        alone(client, "inline", rows[0])
    assert model_metric(server, "clipperd_device_inline_executions", "inline") == inline + ran_inline + 1


@pytest.mark.parametrize("model", sorted(BAD))
def test_a_bad_parameter_fails_the_load_naming_it(server: ServerProcess, model: str) -> None:
    with grpcclient.InferenceServerClient(server.url) as client:
        assert not client.is_model_ready(model)
        assert client.is_model_ready("inline")  # the others serve
    state, reason = index_entry(server.url, model)
    assert state == "UNAVAILABLE"
    assert reason == f"model '{model}': {BAD[model][2]}"
