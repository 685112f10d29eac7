"""``execution_mode: process``: a model instance in a child process of its own, through a real
server: where it runs, a failing or dying model, and unloading."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
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
        assert "process died (exit code 7)" in message
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
