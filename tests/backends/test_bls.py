"""BLS: Triton Python models calling other models of the repository (``InferenceRequest.exec``
and ``async_exec``), served by a real server and called with tritonclient over gRPC and HTTP.
The answer equals the target's own; the call is counted in the target's statistics; a missing
target, a model calling itself, and BLS from a worker process are clear error
answers while the server serves on. ``exec()`` runs both ways: in a greenlet on the event loop
(the default) and on the instance's thread (``execution_mode: thread``)."""

from __future__ import annotations

import csv
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.serverproc import EXAMPLES, ROOT, ServerProcess, perf_analyzer, running

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

TRITON_EXAMPLES = ROOT / "examples" / "triton"
RNG = np.random.default_rng(18)


def variant(root: Path, name: str, replace: dict[str, str], extra: str = "", source: str = "bls_mlp") -> None:
    """examples/triton/``source`` under another name, its config edited."""
    shutil.copytree(TRITON_EXAMPLES / source, root / name)
    config = (root / name / "config.pbtxt").read_text().replace(f'"{source}"', f'"{name}"')
    for old, new in replace.items():
        assert old in config, old
        config = config.replace(old, new)
    (root / name / "config.pbtxt").write_text(config + extra)


def mode(value: str) -> str:
    return f'parameters {{ key: "execution_mode" value {{ string_value: "{value}" }} }}\n'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("bls")
    shutil.copytree(EXAMPLES / "mlp_torch", root / "mlp_torch")
    for name in ("bls_mlp", "bls_mlp_async"):
        shutil.copytree(TRITON_EXAMPLES / name, root / name)
    variant(root, "bls_missing", {'"mlp_torch"': '"no_such_model"'})
    to_self = {'"mlp_torch"': '"bls_self"', '"INPUT__0"': '"INPUT0"', '"OUTPUT__0"': '"OUTPUT0"'}
    timeout = 'parameters { key: "bls_timeout_us" value { string_value: "2000000" } }\n'
    variant(root, "bls_self", {**to_self, "count: 1": "count: 2"}, timeout)
    variant(root, "bls_self_one", {'"mlp_torch"': '"bls_self_one"', '"INPUT__0"': '"INPUT0"'})
    variant(root, "bls_on_loop", {}, mode("event_loop"))
    variant(root, "bls_thread", {}, mode("thread"))
    variant(root, "bls_process", {}, mode("process"))
    variant(root, "bls_async_thread", {}, mode("thread"), source="bls_mlp_async")
    self_async = {**to_self, '"mlp_torch"': '"bls_self_async"', "count: 1": "count: 2"}
    variant(root, "bls_self_async", self_async, timeout, source="bls_mlp_async")
    with running(root, log_dir=logs_dir) as started:
        yield started


def infer(module: ModuleType, url: str, model: str, name: str, x: np.ndarray, output: str) -> np.ndarray:
    with module.InferenceServerClient(url) as client:
        tensor = module.InferInput(name, list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result: np.ndarray = client.infer(model, [tensor]).as_numpy(output)
        return result


def direct(url: str, x: np.ndarray) -> np.ndarray:
    return infer(grpcclient, url, "mlp_torch", "INPUT__0", x, "OUTPUT__0")


def via(module: ModuleType, url: str, model: str, x: np.ndarray) -> np.ndarray:
    return infer(module, url, model, "INPUT0", x, "OUTPUT0")


def urls(server: ServerProcess, module: ModuleType) -> str:
    return server.url if module is grpcclient else server.http_url


def error_of(server: ServerProcess, model: str) -> InferenceServerException:
    x = RNG.standard_normal((1, 64), dtype=np.float32)
    with pytest.raises(InferenceServerException) as info:
        via(grpcclient, server.url, model, x)
    return info.value


def serves(server: ServerProcess) -> None:
    x = RNG.standard_normal((2, 64), dtype=np.float32)
    np.testing.assert_allclose(
        via(httpclient, server.http_url, "bls_mlp", x), direct(server.url, x), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("module", [grpcclient, httpclient], ids=["grpc", "http"])
@pytest.mark.parametrize("model", ["bls_mlp", "bls_on_loop", "bls_thread", "bls_mlp_async", "bls_async_thread"])
def test_a_bls_answer_equals_calling_the_target(server: ServerProcess, module: ModuleType, model: str) -> None:
    x = RNG.standard_normal((3, 64), dtype=np.float32)
    answer = via(module, urls(server, module), model, x)
    assert answer.shape == (3, 10)
    np.testing.assert_allclose(answer, direct(server.url, x), rtol=1e-5, atol=1e-6)


def test_the_bls_call_is_counted_in_the_targets_statistics(server: ServerProcess) -> None:
    def counts() -> tuple[int, int]:
        with grpcclient.InferenceServerClient(server.url) as client:
            stats = client.get_inference_statistics("mlp_torch").model_stats[0]
        return stats.inference_count, stats.inference_stats.success.count

    before = counts()
    for _ in range(3):
        via(grpcclient, server.url, "bls_mlp", RNG.standard_normal((2, 64), dtype=np.float32))
    assert counts() == (before[0] + 6, before[1] + 3)


def test_bls_to_a_missing_model_is_a_clear_error_answer(server: ServerProcess) -> None:
    error = error_of(server, "bls_missing")
    assert "no_such_model" in str(error.message())
    assert "unknown model" in str(error.message())
    serves(server)


@pytest.mark.parametrize("model", ["bls_self", "bls_self_async"])
def test_a_model_waiting_for_itself_gets_an_error_by_its_deadline(server: ServerProcess, model: str) -> None:
    """Two instances, each calling the model again: the second call finds no free instance and
    would wait forever; the deadline (bls_timeout_us, 2 s) answers it with an error (exec on
    greenlets on the event loop; async_exec in tasks there)."""
    started = time.monotonic()
    error = error_of(server, model)
    assert "got no answer within 2 s" in str(error.message())
    assert time.monotonic() - started < 30
    serves(server)


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ("bls_self_one", "calls itself (BLS) but has one instance"),
        ("bls_process", "not in execution_mode process"),
    ],
)
def test_bls_that_cannot_work_is_refused_with_a_clear_error(server: ServerProcess, model: str, reason: str) -> None:
    error = error_of(server, model)
    assert reason in str(error.message())
    serves(server)


def success_count(url: str, model: str) -> int:
    with grpcclient.InferenceServerClient(url) as client:
        return int(client.get_inference_statistics(model).model_stats[0].inference_stats.success.count)


@pytest.mark.parametrize("model", ["bls_mlp", "bls_mlp_async"])
def test_perf_analyzer_drives_a_bls_model(server: ServerProcess, tmp_path: Path, model: str) -> None:
    """perf_analyzer at concurrency 1 and 4: every request answered, and each reached mlp_torch
    (as many successes there as in the BLS model, none failed)."""
    before = (success_count(server.url, model), success_count(server.url, "mlp_torch"))
    out = tmp_path / "out.csv"
    command = [str(perf_analyzer()), "-m", model, "-u", server.url, "-i", "grpc", "--concurrency-range", "1:4:3"]
    command += ["--measurement-interval", "1000", "--stability-percentage", "80", "--max-trials", "5", "-f", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=150, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["Concurrency"]) for r in rows) == [1, 4]
    assert all(float(r["Inferences/Second"]) > 0 for r in rows)
    served = success_count(server.url, model) - before[0]
    assert served > 0
    assert success_count(server.url, "mlp_torch") - before[1] == served
