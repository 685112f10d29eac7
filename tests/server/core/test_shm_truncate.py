"""A client that truncates its shared-memory object while requests read and write it must never
crash the server (issue 14, finding 1: a mapping faulted with SIGBUS past the new end).

A real server (each gRPC front end), regions registered through tritonclient (gRPC and HTTP), a
thread that truncates and restores the object in a tight loop while clients send requests whose
input is read from the region and whose output is written to it. Every answer must be a success
or FAILED_PRECONDITION / 400 naming the truncation, the server must stay up, and afterwards it
serves the same region normally."""

from __future__ import annotations

import functools
import os
import textwrap
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from tests.serverproc import ServerProcess, running

pytestmark = pytest.mark.timeout(180)

ELEMENTS = 256 * 1024  # 1 MiB of FP32 in and out: a copy long enough for a truncate to land inside it
TENSOR_BYTES = ELEMENTS * 4
REGION_BYTES = 2 * TENSOR_BYTES  # the input at 0, the output after it
MAX_REQUESTS = 600  # per client thread, at most: the test is bounded whatever the timing
ENOUGH = 60  # per client thread: stop once this many are done and both outcomes were seen

ECHO_CONFIG = """\
name: "echo"
backend: "python"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""

ECHO_MODEL = textwrap.dedent("""\
    class Model:
        def execute(self, inputs):
            return {"OUTPUT0": inputs["INPUT0"]}
    """)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shm-truncate-repo")
    (root / "echo" / "1").mkdir(parents=True)
    (root / "echo" / "config.pbtxt").write_text(ECHO_CONFIG)
    (root / "echo" / "1" / "model.py").write_text(ECHO_MODEL)
    return root


@pytest.fixture(scope="module", params=["native", "grpcio"])
def server(request: pytest.FixtureRequest, repository: Path, logs_dir: Path) -> Iterator[ServerProcess]:
    with running(repository, "--grpc-frontend", request.param, log_dir=logs_dir) as started:
        yield started


@pytest.fixture
def region(server: ServerProcess) -> Iterator[tuple[str, str, Any]]:
    """(name, key, handle) of a region registered with the server over gRPC."""
    key = f"/clipperd_trunc_{uuid.uuid4().hex[:12]}"
    name = f"trunc_{uuid.uuid4().hex[:8]}"
    handle = shm.create_shared_memory_region(name, key, REGION_BYTES)
    with grpcclient.InferenceServerClient(server.url) as client:
        client.register_system_shared_memory(name, key, REGION_BYTES)
    try:
        yield name, key, handle
    finally:
        with grpcclient.InferenceServerClient(server.url) as client:
            client.unregister_system_shared_memory(name)
        shm.destroy_shared_memory_region(handle)


class Truncator(threading.Thread):
    """Shrinks the object (to nothing, or into the output's half) and restores it, over and over."""

    def __init__(self, key: str) -> None:
        super().__init__(daemon=True)
        self.path = Path("/dev/shm") / key.lstrip("/")
        self.done = threading.Event()
        self.cycles = 0

    def run(self) -> None:
        fd = os.open(self.path, os.O_RDWR)
        try:
            while not self.done.is_set():
                for size in (0, TENSOR_BYTES + 4096, REGION_BYTES):
                    os.ftruncate(fd, size)
                self.cycles += 1
        finally:
            os.ftruncate(fd, REGION_BYTES)
            os.close(fd)


def shm_request(module: Any, name: str) -> tuple[list[Any], list[Any]]:
    tensor = module.InferInput("INPUT0", [ELEMENTS], "FP32")
    tensor.set_shared_memory(name, TENSOR_BYTES)
    output = module.InferRequestedOutput("OUTPUT0")
    output.set_shared_memory(name, TENSOR_BYTES, offset=TENSOR_BYTES)
    return [tensor], [output]


def outcome(module: Any, call: Callable[[], object]) -> str:
    """'ok', or 'refused' for the truncation's own error; anything else fails the test."""
    try:
        call()
    except InferenceServerException as error:
        return refused(module, error)
    return "ok"


def refused(module: Any, refusal: InferenceServerException) -> str:
    code = str(refusal.status()).removeprefix("StatusCode.")
    expected = "FAILED_PRECONDITION" if module is grpcclient else "400"
    assert code == expected, refusal.message()
    assert "truncated" in (refusal.message() or ""), refusal.message()
    return "refused"


def hammer(module: Any, url: str, name: str, counts: Counter[str], failures: list[BaseException]) -> None:
    try:
        with module.InferenceServerClient(url) as client:
            inputs, outputs = shm_request(module, name)
            done: Counter[str] = Counter()
            for _ in range(MAX_REQUESTS):
                done[outcome(module, lambda: client.infer("echo", inputs, outputs=outputs))] += 1
                if done.total() >= ENOUGH and done["ok"] and done["refused"]:
                    break
            counts.update(done)
    except BaseException as error:  # reported by the test's thread
        failures.append(error)


def serves_normally(server: ServerProcess, module: Any, url: str, name: str, handle: Any) -> None:
    x = np.arange(ELEMENTS, dtype=np.float32)
    shm.set_shared_memory_region(handle, [x])
    with module.InferenceServerClient(url) as client:
        inputs, outputs = shm_request(module, name)
        client.infer("echo", inputs, outputs=outputs)
        assert client.is_server_live()
    y = shm.get_contents_as_numpy(handle, np.float32, [ELEMENTS], offset=TENSOR_BYTES)
    np.testing.assert_array_equal(y, x)


def test_truncating_the_object_under_requests_never_crashes_the_server(
    server: ServerProcess, region: tuple[str, str, Any]
) -> None:
    name, key, handle = region
    clients = [(grpcclient, server.url), (httpclient, server.http_url)] * 2
    counts: Counter[str] = Counter()
    failures: list[BaseException] = []
    truncator = Truncator(key)
    threads = [threading.Thread(target=hammer, args=(m, u, name, counts, failures)) for m, u in clients]
    truncator.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(150)
    truncator.done.set()
    truncator.join(10)

    assert server.is_running(), server.log()[-3000:]
    assert not failures, failures[0]
    assert counts["ok"] + counts["refused"] >= ENOUGH * len(clients), counts
    # both outcomes seen: the truncations really landed among the reads and writes
    assert counts["ok"] > 0, counts
    assert counts["refused"] > 0, (counts, truncator.cycles)
    for module, url in clients[:2]:
        serves_normally(server, module, url, name, handle)


def test_output_past_a_truncated_end_is_refused_and_does_not_grow_the_object(
    server: ServerProcess, region: tuple[str, str, Any]
) -> None:
    """An output whose bytes the object no longer holds is refused (FAILED_PRECONDITION / 400)
    before the model runs, and nothing is written: the object keeps the size the client gave it."""
    name, key, handle = region
    path = Path("/dev/shm") / key.lstrip("/")
    x = np.ones(ELEMENTS, dtype=np.float32)
    for module, url in ((grpcclient, server.url), (httpclient, server.http_url)):
        os.truncate(path, TENSOR_BYTES + 4096)  # the input still fits, the output does not
        with module.InferenceServerClient(url) as client:
            tensor = module.InferInput("INPUT0", [ELEMENTS], "FP32")
            tensor.set_data_from_numpy(x)
            output = module.InferRequestedOutput("OUTPUT0")
            output.set_shared_memory(name, TENSOR_BYTES, offset=TENSOR_BYTES)
            assert outcome(module, functools.partial(client.infer, "echo", [tensor], outputs=[output])) == "refused"
        assert path.stat().st_size == TENSOR_BYTES + 4096
        os.truncate(path, REGION_BYTES)
        serves_normally(server, module, url, name, handle)
    assert server.is_running(), server.log()[-3000:]
