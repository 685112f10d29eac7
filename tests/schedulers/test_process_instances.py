"""``execution_mode: process``: a model instance in a worker process of its own, through a real
server: where it runs, a failing or dying model, unloading; isolation (tensors through shared
memory, kill -9 under load, a segfault, a hang past ``worker_timeout_s``, a leak past
``worker_memory_mb``: each fails only its request, the worker comes back, no /dev/shm residue),
another interpreter (``worker_python``: a virtual environment with a package the server lacks)
and bad worker parameters."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from tests.serverproc import ServerProcess, running

pytestmark = pytest.mark.timeout(180)

CONFIG = """name: "isolated"
backend: "python"
max_batch_size: 8
input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "PID" data_type: TYPE_INT64 dims: [ 1 ] } ]
dynamic_batching { }
instance_group [ { kind: KIND_CPU count: 2 } ]
parameters { key: "execution_mode" value: { string_value: "process" } }
"""

MODEL = textwrap.dedent(
    """
    import os

    import numpy as np


    class Model:
        def initialize(self, context):
            self.folder = context.version_path

        def execute(self, inputs):
            x = inputs["IN"]
            if (x == -1).any():
                os._exit(7)  # the process dies, as a crash in native code would end it
            if (x == -2).any():
                raise ValueError("a row the model refuses")
            return {"PID": np.full(x.shape, os.getpid(), dtype=np.int64)}

        def finalize(self):
            (self.folder / f"finalized-{os.getpid()}").write_text("")
    """
)


BROKEN = """
class Model:
    def initialize(self, context):
        raise RuntimeError("no weights here")

    def execute(self, inputs):
        return {}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("process-repo")
    (repo / "isolated" / "1").mkdir(parents=True)
    (repo / "isolated" / "config.pbtxt").write_text(CONFIG)
    (repo / "isolated" / "1" / "model.py").write_text(MODEL)
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "config.pbtxt").write_text(CONFIG.replace('"isolated"', '"broken"'))
    (repo / "broken" / "1" / "model.py").write_text(BROKEN)
    with running(repo, "--model-control-mode", "explicit", "--load-model", "isolated", log_dir=logs_dir) as proc:
        yield proc
        assert proc.is_running(), proc.log()


def pid_of(client: grpcclient.InferenceServerClient, value: int = 1) -> int:
    tensor = grpcclient.InferInput("IN", [1, 1], "INT32")
    tensor.set_data_from_numpy(np.array([[value]], dtype=np.int32))
    return int(client.infer("isolated", [tensor], client_timeout=30).as_numpy("PID")[0, 0])


def failure(client: grpcclient.InferenceServerClient, value: int) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        pid_of(client, value)
    return str(info.value.status()), info.value.message() or ""


def test_the_model_runs_in_a_process_of_its_own(server: ServerProcess) -> None:
    assert server.proc is not None
    with grpcclient.InferenceServerClient(server.url) as client:
        pids = {pid_of(client) for _ in range(6)}
    assert server.proc.pid not in pids
    assert 1 <= len(pids) <= 2  # two instances, two processes at most


def test_an_exception_fails_its_request_and_the_process_keeps_serving(server: ServerProcess) -> None:
    with grpcclient.InferenceServerClient(server.url) as client:
        status, message = failure(client, -2)
        assert status == "StatusCode.INTERNAL"
        assert "ValueError: a row the model refuses" in message
        assert pid_of(client) > 0


def test_a_dying_process_fails_its_batch_and_a_new_one_serves_the_next(server: ServerProcess) -> None:
    with grpcclient.InferenceServerClient(server.url) as client:
        before = {pid_of(client) for _ in range(6)}
        status, message = failure(client, -1)
        assert status == "StatusCode.INTERNAL"
        assert "worker died (exit code 7)" in message
        after = {pid_of(client) for _ in range(6)}
    assert after - before  # a fresh process took the dead one's place
    assert server.is_running()


def test_unloading_runs_finalize_in_each_child(server: ServerProcess) -> None:
    with grpcclient.InferenceServerClient(server.url) as client:
        pids = {pid_of(client) for _ in range(6)}
        client.unload_model("isolated")
        assert not client.is_model_ready("isolated")
        finalized = {int(p.name.split("-")[1]) for p in (server.repository / "isolated" / "1").glob("finalized-*")}
        assert pids <= finalized
        client.load_model("isolated")
        assert pid_of(client) not in finalized


def test_a_model_failing_to_load_in_its_process_is_unavailable_with_the_reason(server: ServerProcess) -> None:
    with grpcclient.InferenceServerClient(server.url) as client:
        with pytest.raises(InferenceServerException, match="no weights here"):
            client.load_model("broken")
        assert not client.is_model_ready("broken")
        reasons = {m.name: m.reason for m in client.get_model_repository_index().models}
        assert "RuntimeError: no weights here" in reasons["broken"]
        assert pid_of(client) > 0  # the other model is untouched


# ------------------------------------------------------------------ isolation (issue 5, item 6)

ISOLATION_CONFIG = """name: "NAME"
backend: "python"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [
  { name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] },
  { name: "PID" data_type: TYPE_INT64 dims: [ 1 ] },
  { name: "SHARED" data_type: TYPE_BOOL dims: [ 1 ] }
]
parameters { key: "execution_mode" value: { string_value: "process" } }
parameters { key: "worker_timeout_s" value: { string_value: "3" } }
parameters { key: "worker_memory_mb" value: { string_value: "400" } }
EXTRA
"""

ISOLATION_MODEL = textwrap.dedent(
    """
    import ctypes
    import mmap
    import os
    import time

    import numpy as np

    LEAK = []


    def in_shared_memory(array):
        while isinstance(array, np.ndarray) and array.base is not None:
            array = array.base
        return isinstance(array, memoryview) and isinstance(array.obj, mmap.mmap)


    class Model:
        def initialize(self, context):
            self.markers = context.version_path

        def execute(self, inputs):
            x = inputs["IN"]
            mode = int(x[0]) if x.size else 0
            if mode == -1:  # wait to be killed (the test kill -9s this worker)
                (self.markers / f"started-{os.getpid()}").write_text("")
                while True:
                    time.sleep(0.05)
            if mode == -2:
                ctypes.string_at(0)  # a segfault, as a crash in native code
            if mode == -3:
                while True:  # a hang: worker_timeout_s ends it
                    time.sleep(0.05)
            if mode == -4:
                LEAK.append(np.ones(64 * 1024 * 1024 // 8))  # 64 MiB more each call, never freed
            return {
                "OUT": x * 2,
                "PID": np.array([os.getpid()], np.int64),
                "SHARED": np.array([in_shared_memory(x) and not x.flags.writeable]),
            }
    """
)


def _shm_names() -> list[str]:
    return sorted(p.name for p in Path("/dev/shm").glob("clipperd-worker-*")) if Path("/dev/shm").is_dir() else []


@pytest.fixture(scope="module")
def isolation(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("isolation-repo")
    (repo / "guarded" / "1").mkdir(parents=True)
    (repo / "guarded" / "config.pbtxt").write_text(ISOLATION_CONFIG.replace("NAME", "guarded").replace("EXTRA", ""))
    (repo / "guarded" / "1" / "model.py").write_text(ISOLATION_MODEL)
    venv = make_worker_env(tmp_path_factory.mktemp("worker-env"))
    extra = f'parameters {{ key: "worker_python" value: {{ string_value: "{venv}" }} }}'
    (repo / "other_env" / "1").mkdir(parents=True)
    (repo / "other_env" / "config.pbtxt").write_text(
        ISOLATION_CONFIG.replace("NAME", "other_env").replace("EXTRA", extra)
    )
    (repo / "other_env" / "1" / "model.py").write_text(
        "import only_in_worker_env\n" + ISOLATION_MODEL.replace('"OUT": x * 2', '"OUT": x * only_in_worker_env.FACTOR')
    )
    for name, value in (("bad_python", "worker_python: no/such/python"), ("bad_timeout", "worker_timeout_s: soon")):
        key, text = value.split(": ")
        bad = f'parameters {{ key: "{key}" value: {{ string_value: "{text}" }} }}'
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(ISOLATION_CONFIG.replace("NAME", name).replace("EXTRA", bad))
        (repo / name / "1" / "model.py").write_text(ISOLATION_MODEL)
    before = _shm_names()
    with running(repo, "--no-strict-readiness", log_dir=logs_dir) as proc:
        yield proc
        assert proc.is_running(), proc.log()
    assert _shm_names() == before  # nothing left in /dev/shm after the server stopped


def make_worker_env(folder: Path) -> Path:
    """A virtual environment with a package the server does not have (and, through a .pth file,
    the server's own packages: numpy and protobuf, which a worker needs)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    site = next(folder.glob("lib/python*/site-packages"))
    (site / "only_in_worker_env.py").write_text("FACTOR = 3\n")
    (site / "server_packages.pth").write_text(next(p for p in sys.path if p.endswith("site-packages")) + "\n")
    return folder / "bin" / "python"


def call(url: str, values: np.ndarray, timeout: float = 60, model: str = "guarded") -> dict[str, np.ndarray]:
    with grpcclient.InferenceServerClient(url) as client:
        tensor = grpcclient.InferInput("IN", list(values.shape), "FP32")
        tensor.set_data_from_numpy(values.astype(np.float32))
        result = client.infer(model, [tensor], client_timeout=timeout)
        return {name: result.as_numpy(name) for name in ("OUT", "PID", "SHARED")}  # type: ignore[misc]


def call_error(url: str, mode: float) -> str:
    with pytest.raises(InferenceServerException) as info:
        call(url, np.array([mode]))
    assert info.value.status() == "StatusCode.INTERNAL"
    return info.value.message() or ""


def test_tensors_travel_through_shared_memory_and_the_arena_grows(isolation: ServerProcess) -> None:
    small = call(isolation.url, np.arange(4))
    assert small["OUT"].tolist() == [0, 2, 4, 6]
    assert small["SHARED"].tolist() == [True]  # the model read a read-only view of the arena
    big = np.arange(3_000_000, dtype=np.float32)  # 12 MB: past the first arena
    out = call(isolation.url, big)
    np.testing.assert_array_equal(out["OUT"], big * 2)
    assert out["SHARED"].tolist() == [True]
    assert _shm_names() == []  # mapped by both processes, named nowhere


def test_kill_9_fails_the_request_in_flight_and_the_worker_comes_back(isolation: ServerProcess) -> None:
    pid = int(call(isolation.url, np.array([1.0]))["PID"][0])
    markers = isolation.repository / "guarded" / "1"
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(call_error, isolation.url, -1)
        wait_for(lambda: (markers / f"started-{pid}").exists(), "the request executing in the worker")
        os.kill(pid, signal.SIGKILL)
        message = in_flight.result(timeout=60)
    assert "worker died (exit code -9)" in message
    again = call(isolation.url, np.array([2.0]))
    assert again["OUT"].tolist() == [4.0]
    assert int(again["PID"][0]) != pid


def test_a_segfault_fails_its_request_only(isolation: ServerProcess) -> None:
    assert "worker died (exit code -11)" in call_error(isolation.url, -2)
    assert call(isolation.url, np.array([3.0]))["OUT"].tolist() == [6.0]


def test_a_hung_worker_is_stopped_after_its_timeout(isolation: ServerProcess) -> None:
    pid = int(call(isolation.url, np.array([1.0]))["PID"][0])
    message = call_error(isolation.url, -3)
    assert "did not finish its batch within 3s (worker_timeout_s)" in message
    again = call(isolation.url, np.array([1.0]))
    assert int(again["PID"][0]) != pid


def test_a_leaking_worker_hits_its_memory_limit_and_restarts(isolation: ServerProcess) -> None:
    failed = ""
    for _ in range(12):  # 64 MiB kept per call against a 400 MiB limit
        try:
            call(isolation.url, np.array([-4.0]))
        except InferenceServerException as error:
            failed = error.message() or ""
            break
    assert "MemoryError" in failed
    assert "the worker ran out of memory (worker_memory_mb) and restarts" in failed
    assert call(isolation.url, np.array([5.0]))["OUT"].tolist() == [10.0]
    assert isolation.is_running()


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_worker_python_runs_the_model_in_another_environment(isolation: ServerProcess) -> None:
    """``only_in_worker_env`` exists only in the worker's virtual environment."""
    out = call(isolation.url, np.array([1.0, 2.0]), model="other_env")
    assert out["OUT"].tolist() == [3.0, 6.0]
    assert out["SHARED"].tolist() == [True]
    with pytest.raises(ImportError):
        __import__("only_in_worker_env")


def test_bad_worker_parameters_make_the_model_unavailable(isolation: ServerProcess) -> None:
    with grpcclient.InferenceServerClient(isolation.url) as client:
        reasons = {m.name: m.reason for m in client.get_model_repository_index().models}
    assert (
        "field 'parameters.worker_python': must name an executable file, got 'no/such/python'" in reasons["bad_python"]
    )
    assert (
        "field 'parameters.worker_timeout_s': must be a number >= 0 and <= 1e+06, got 'soon'" in reasons["bad_timeout"]
    )


def test_kill_9_under_load_fails_only_the_batch_in_flight(isolation: ServerProcess) -> None:
    """One request executing (it waits to be killed) and eight queued behind it on the same
    single-instance worker: kill -9 fails the one in flight; the eight are served by the new
    worker, each with its own answer."""
    pid = int(call(isolation.url, np.array([1.0]))["PID"][0])
    markers = isolation.repository / "guarded" / "1"
    with ThreadPoolExecutor(9) as pool:
        doomed = pool.submit(call_error, isolation.url, -1)
        wait_for(lambda: (markers / f"started-{pid}").exists(), "the request executing in the worker")
        queued = [pool.submit(call, isolation.url, np.array([float(v)])) for v in range(10, 18)]
        wait_for(lambda: inflight(isolation, "guarded") >= 9, "eight requests queued behind the stuck one")
        os.kill(pid, signal.SIGKILL)
        assert "worker died (exit code -9)" in doomed.result(timeout=60)
        answers = [f.result(timeout=60) for f in queued]
    assert [a["OUT"].tolist() for a in answers] == [[2.0 * v] for v in range(10, 18)]
    assert {int(a["PID"][0]) for a in answers} - {pid}  # a new worker served them


def inflight(server: ServerProcess, model: str) -> float:
    """The server's clipperd_inflight_requests gauge for ``model`` (validated, queued or executing)."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as answer:
        text = answer.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "clipperd_inflight_requests" and sample.labels.get("model") == model:
                return float(sample.value)
    return 0.0
