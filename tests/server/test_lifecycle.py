"""Model and server lifecycle against real clipperd processes and tritonclient gRPC clients:
reload under load, version policies, load failures, poll mode, shutdown on signals, instances.

Every wait is bounded (polling with a deadline, or a file the test creates to release a model);
models that must be "held" wait for a file instead of sleeping."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.pymodels import (
    accepts_connections,
    adds,
    held_until,
    index,
    infer,
    infer_once,
    slow_repository,
    started,
    status_of,
    write_atomically,
    write_model,
)
from tests.serverproc import ServerProcess, running

pytestmark = pytest.mark.timeout(120)

WAIT = 20.0  # the longest any condition may take to become true


# ----------------------------------------------------------------------------------------- models


# ----------------------------------------------------------------------------------------- client helpers


def client_for(server: ServerProcess) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(server.url)


def wait_until(check: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"not true after {timeout}s: {what}")


@dataclass
class Answer:
    sent: float
    delta: int
    version: str


@dataclass
class Traffic:
    """A client thread sending one request after another to ``model`` (no version: the latest)."""

    url: str
    model: str
    answers: list[Answer] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Traffic:
        self._thread = threading.Thread(target=self._run, name=f"traffic-{self.model}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        with grpcclient.InferenceServerClient(self.url) as client:
            value = 0
            while not self._stop.is_set():
                value += 1
                sent = time.monotonic()
                try:
                    delta, version = infer(client, self.model, value)
                except Exception as error:  # every failure is a test failure, reported at the end
                    self.errors.append(f"{type(error).__name__}: {error}")
                else:
                    self.answers.append(Answer(sent, delta, version))

    def wait_answers(self, count: int, since: float = 0.0, delta: int | None = None) -> None:
        def enough() -> bool:
            return sum(1 for a in self.answers if a.sent >= since and delta in (None, a.delta)) >= count

        wait_until(enough, f"{count} answers from {self.model} (delta {delta}); errors: {self.errors[:3]}")

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(WAIT)
        assert not self._thread.is_alive()

    def deltas(self) -> list[int]:
        return [a.delta for a in self.answers]


def switches_once(deltas: list[int], old: int, new: int) -> bool:
    """``old`` answers, then ``new`` answers, never back."""
    first_new = deltas.index(new) if new in deltas else len(deltas)
    return all(d == old for d in deltas[:first_new]) and all(d == new for d in deltas[first_new:])


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    folder = tmp_path / "repository"
    folder.mkdir()
    return folder


# ----------------------------------------------------------------------------------------- reload under load


def test_reload_under_load_never_fails_a_request(repo: Path, tmp_path: Path, logs_dir: Path) -> None:
    write_model(repo, "A", {1: adds(1)})
    write_model(repo, "B", {1: adds(100)})
    args = ("--model-control-mode", "explicit", "--load-model", "A", "--load-model", "B")
    with running(repo, *args, log_dir=logs_dir) as server, client_for(server) as client:
        a_traffic = [Traffic(server.url, "A").start() for _ in range(2)]
        b_traffic = Traffic(server.url, "B").start()
        for t in [*a_traffic, b_traffic]:
            t.wait_answers(5)

        # version 2 answers +2; the config changes too (a parameter), as a real update would
        write_model(repo, "A", {2: adds(2)}, extra='parameters { key: "release" value: { string_value: "2" } }\n')
        client.load_model("A")
        loaded = time.monotonic()
        for t in a_traffic:
            t.wait_answers(5, since=loaded, delta=2)
        b_traffic.wait_answers(5, since=loaded)
        for t in [*a_traffic, b_traffic]:
            t.stop()

        for t in [*a_traffic, b_traffic]:
            assert t.errors == [], t.errors
        for t in a_traffic:
            assert switches_once(t.deltas(), 1, 2), t.deltas()
            assert all(a.version == str(a.delta) for a in t.answers)
            assert all(a.delta == 2 for a in t.answers if a.sent >= loaded)  # sent after the swap: new version
        assert set(b_traffic.deltas()) == {100}

        wait_until(lambda: index(client)[("A", "1")] == ("UNAVAILABLE", "unloaded"), "A v1 unloaded")
        rows = index(client)
        assert rows[("A", "2")] == ("READY", "")
        assert rows[("B", "1")] == ("READY", "")
        assert client.get_model_metadata("A").versions == ["2"]
        config = client.get_model_config("A").config
        assert config.parameters["release"].string_value == "2"
        assert status_of(lambda: infer(client, "A", 0, version="1"))[0] == "UNAVAILABLE"

        # a slow new version: the old one answers the whole time it loads
        release = tmp_path / "release-v3"
        write_model(repo, "A", {3: adds(3, initialize=held_until(release))})
        traffic = Traffic(server.url, "A").start()
        traffic.wait_answers(3)
        with ThreadPoolExecutor(1) as pool:
            load = pool.submit(client.load_model, "A")
            wait_until(lambda: index(client).get(("A", "3"), ("",))[0] == "LOADING", "A v3 LOADING")
            loading_since = time.monotonic()
            assert index(client)[("A", "2")] == ("READY", "")
            assert infer(client, "A", 10) == (2, "2")  # v3 is still held in initialize
            traffic.wait_answers(3, since=loading_since, delta=2)
            assert client.is_server_ready()
            assert client.is_model_ready("A")
            assert not load.done()
            release.touch()
            load.result(timeout=WAIT)
        loaded = time.monotonic()
        traffic.wait_answers(3, since=loaded, delta=3)
        traffic.stop()
        assert traffic.errors == [], traffic.errors
        assert switches_once(traffic.deltas(), 2, 3), traffic.deltas()
        wait_until(lambda: index(client)[("A", "2")] == ("UNAVAILABLE", "unloaded"), "A v2 unloaded")
        assert index(client)[("A", "3")] == ("READY", "")
        assert infer(client, "A", 10) == (3, "3")
        assert infer(client, "B", 10) == (100, "1")


# ----------------------------------------------------------------------------------------- version policies


def test_version_policies(repo: Path, logs_dir: Path) -> None:
    three = {v: adds(v) for v in (1, 2, 3)}
    write_model(repo, "every", three, extra="version_policy: { all { } }\n")
    write_model(repo, "latest2", three, extra="version_policy: { latest { num_versions: 2 } }\n")
    write_model(repo, "some", three, extra="version_policy: { specific { versions: [ 1, 3 ] } }\n")
    write_model(repo, "missing", three, extra="version_policy: { specific { versions: [ 1, 5 ] } }\n")
    write_model(repo, "default", three)
    odd = write_model(repo, "odd", {1: adds(1)}, extra="version_policy: { all { } }\n")
    for name in ("v2", "01", "0", "1a"):  # not versions: ignored
        write_atomically(odd / name / "model.py", adds(99))

    with running(repo, log_dir=logs_dir) as server, client_for(server) as client:
        expected = {"every": [1, 2, 3], "latest2": [2, 3], "some": [1, 3], "missing": [1], "default": [3], "odd": [1]}
        for model, versions in expected.items():
            assert client.get_model_metadata(model).versions == [str(v) for v in versions], model
            for v in versions:
                assert infer(client, model, 1000, version=str(v)) == (v, str(v)), (model, v)
                assert client.is_model_ready(model, str(v))
            assert infer(client, model, 1000) == (versions[-1], str(versions[-1])), model  # no version: the latest

        # a version the policy leaves out, or that has no folder, was never loaded: NOT_FOUND
        for model, version in [("latest2", "1"), ("some", "2"), ("default", "1"), ("every", "4"), ("odd", "2")]:
            code, message = status_of(functools.partial(infer, client, model, 1, version=version))
            assert code == "NOT_FOUND", (model, version, message)
            assert f"version {version}" in message
            assert not client.is_model_ready(model, version)
        # a version the policy names, known to the repository but not served: UNAVAILABLE
        code, message = status_of(lambda: infer(client, "missing", 1, version="5"))
        assert code == "UNAVAILABLE", message
        assert "version 5" in message

        rows = index(client)
        assert {v for (name, v) in rows if name == "every"} == {"1", "2", "3"}
        assert {v for (name, v) in rows if name == "latest2"} == {"2", "3"}
        assert {v for (name, v) in rows if name == "odd"} == {"1"}
        assert rows[("missing", "5")] == ("UNAVAILABLE", "version folder not found")
        assert rows[("missing", "1")] == ("READY", "")
        assert all(state == "READY" for (name, v), (state, _) in rows.items() if name != "missing")


# ----------------------------------------------------------------------------------------- load failures


def failing_repository(repo: Path) -> None:
    write_model(repo, "good", {1: adds(1)})
    write_model(repo, "bad_init", {1: adds(1, initialize="raise ValueError('weights missing')")})
    broken = write_model(repo, "bad_config", {1: adds(1)})
    (broken / "config.pbtxt").write_text('name: "bad_config"\nbackend: "python"\ninput [ { name: "IN" ')
    write_model(repo, "no_version", {})
    (repo / "no_version" / "v1").mkdir()  # not a version folder
    write_model(repo, "bad_version", {1: adds(1)}, extra="version_policy: { specific { versions: [ 2 ] } }\n")


def test_load_failures_leave_the_server_live_and_the_good_model_serving(repo: Path, logs_dir: Path) -> None:
    failing_repository(repo)
    strict = ServerProcess(repo, log_dir=logs_dir)
    lenient = ServerProcess(repo, "--no-strict-readiness", log_dir=logs_dir)
    try:
        strict.start(wait_ready=False)
        lenient.start(wait_ready=False)
        lenient.wait_ready(WAIT)  # the start is over: every load was tried
        wait_until(lambda: "serving 1 model version(s)" in strict.log(), "the strict server's start to finish")
        with client_for(strict) as client:
            assert client.is_server_live()
            assert not client.is_server_ready()  # a model it was asked to load is not ready
            assert client.is_model_ready("good")
            assert infer(client, "good", 41) == (1, "1")
            for bad in ("bad_init", "bad_config", "no_version", "bad_version"):
                assert not client.is_model_ready(bad)
                assert status_of(functools.partial(infer, client, bad, 1))[0] == "UNAVAILABLE"
            rows = index(client)
        assert rows[("good", "1")] == ("READY", "")
        state, reason = rows[("bad_init", "1")]
        assert state == "UNAVAILABLE"
        assert "failed to initialize: ValueError: weights missing" in reason
        state, reason = rows[("bad_config", "")]
        assert state == "UNAVAILABLE"
        assert "bad_config/config.pbtxt" in reason
        state, reason = rows[("no_version", "")]
        assert state == "UNAVAILABLE"
        assert "no version folder" in reason
        state, reason = rows[("bad_version", "2")]
        assert state == "UNAVAILABLE"
        assert "version folder" in reason
        assert ("bad_version", "1") not in rows
        assert str(repo) not in " ".join(r for _, r in rows.values())  # reasons name no absolute path
        with client_for(lenient) as client:
            assert client.is_server_ready()
            assert infer(client, "good", 1) == (1, "1")
            assert index(client) == rows
        assert strict.stop() == 0
        assert lenient.stop() == 0
    finally:
        strict.stop()
        lenient.stop()


# ----------------------------------------------------------------------------------------- poll mode


def test_poll_mode_follows_the_repository(repo: Path, tmp_path: Path, logs_dir: Path) -> None:
    write_model(repo, "base", {1: adds(1)})
    args = ("--model-control-mode", "poll", "--repository-poll-secs", "0.5")
    with running(repo, *args, log_dir=logs_dir) as server, client_for(server) as client:
        # a new model folder (put in place at once, as a deploy tool would)
        staging = tmp_path / "staging"
        write_model(staging, "p", {1: adds(1)})
        os.replace(staging / "p", repo / "p")
        wait_until(lambda: client.is_model_ready("p"), "p ready")
        assert infer(client, "p", 10) == (1, "1")

        def answers(delta: int) -> Callable[[], bool]:
            return lambda: infer(client, "p", 10)[0] == delta

        # a changed model.py: the model reloads with the new code, answering all along
        write_atomically(repo / "p" / "1" / "model.py", adds(5))
        wait_until(answers(5), "p answering +5")

        # a broken change: the reload fails, the loaded code keeps answering
        write_atomically(repo / "p" / "1" / "model.py", "class Model:\n    def execute(self, inputs)\n")
        wait_until(lambda: "reload failed" in index(client)[("p", "1")][1], "p's failed reload reported")
        state, reason = index(client)[("p", "1")]
        assert state == "READY"
        assert "syntax error" in reason
        assert infer(client, "p", 10) == (5, "1")
        # a broken config: the same
        write_atomically(repo / "p" / "config.pbtxt", 'name: "p"\nmax_batch_size: "eight"\n')
        wait_until(lambda: "p/config.pbtxt" in server.log(), "the broken config reported in the log")
        rejected_config = index(client)[("p", "1")]  # checked at the end: the reason should say why
        assert client.is_model_ready("p")
        assert infer(client, "p", 10) == (5, "1")

        # fixed: the new code serves
        write_model(repo, "p", {1: adds(7)})
        wait_until(answers(7), "p answering +7")
        assert index(client)[("p", "1")] == ("READY", "")

        # removed: unloaded
        os.replace(repo / "p", tmp_path / "p-removed")
        wait_until(lambda: not client.is_model_ready("p"), "p unloaded")
        code, _ = status_of(lambda: infer(client, "p", 10))
        assert code in ("UNAVAILABLE", "NOT_FOUND")
        assert infer(client, "base", 10) == (1, "1")
        assert client.is_server_ready()
    # like the broken model.py above, a rejected config change shows in the index, not only in the log
    state, reason = rejected_config
    assert state == "READY"
    assert "reload failed" in reason, f"a rejected config.pbtxt change is not reported in the index: {reason!r}"
    assert "p/config.pbtxt" in reason


# ----------------------------------------------------------------------------------------- signals


@pytest.mark.parametrize(("sig", "in_flight"), [(signal.SIGTERM, 3), (signal.SIGINT, 1)], ids=["SIGTERM", "SIGINT"])
def test_signal_finishes_in_flight_requests_and_exits_0(
    tmp_path: Path, logs_dir: Path, sig: signal.Signals, in_flight: int
) -> None:
    repo, markers = tmp_path / "repository", tmp_path / "markers"
    slow_repository(repo, markers, instances=in_flight)
    server = ServerProcess(repo, "--exit-timeout-secs", "30", log_dir=logs_dir).start()
    url = server.url
    try:
        with ThreadPoolExecutor(in_flight) as pool:
            futures = [pool.submit(infer_once, url, "slow", v) for v in range(in_flight)]
            wait_until(lambda: started(markers) == in_flight, f"{in_flight} requests executing")
            server.signal(sig)
            wait_until(lambda: not accepts_connections(url), "new connections refused after the signal")
            with client_for(server) as late:
                assert status_of(lambda: infer(late, "fast", 1))[0] == "UNAVAILABLE"
            assert server.is_running()  # still finishing the held requests
            assert not any(f.done() for f in futures)
            (markers / "release").touch()
            results = [f.result(timeout=WAIT) for f in futures]
        assert results == [(1, "1")] * in_flight
        assert server.proc is not None
        assert server.proc.wait(timeout=WAIT) == 0, server.log()
    finally:
        server.stop()
    assert sorted(p.name for p in markers.glob("finalized-*")) == [
        f"finalized-slow_0_{i}_cpu" for i in range(in_flight)
    ], server.log()
    assert started(markers) == in_flight  # nothing else executed
    assert "stopped" in server.log()


def test_exit_timeout_bounds_the_shutdown_when_a_request_never_finishes(tmp_path: Path, logs_dir: Path) -> None:
    """--exit-timeout-secs is how long in-flight requests may take: past it the server exits anyway
    (Triton's meaning), even if a model is stuck in execute."""
    repo, markers = tmp_path / "repository", tmp_path / "markers"
    slow_repository(repo, markers, instances=1)
    server = ServerProcess(repo, "--exit-timeout-secs", "2", log_dir=logs_dir).start()
    assert server.proc is not None
    try:
        with ThreadPoolExecutor(1) as pool:
            stuck = pool.submit(infer_once, server.url, "slow", 1)
            wait_until(lambda: started(markers) == 1, "the request executing")
            server.signal(signal.SIGTERM)
            try:
                server.proc.wait(timeout=10)  # 2 s of grace, then the exit
            except subprocess.TimeoutExpired:
                pytest.fail(f"still running 10 s after SIGTERM with --exit-timeout-secs 2:\n{server.log()[-1500:]}")
            with pytest.raises(InferenceServerException):  # the stuck request ends, it does not hang
                stuck.result(timeout=WAIT)
    finally:
        (markers / "release").touch()
        if server.is_running():
            server.proc.kill()
            server.proc.wait()


# ----------------------------------------------------------------------------------------- instances


PAIR_MODEL = """
import threading

import numpy as np

BARRIER = threading.Barrier(2, timeout=15)  # the module is shared by the instances of a version


class Model:
    def initialize(self, context):
        self.name = context.instance_name

    def execute(self, inputs):
        BARRIER.wait()  # returns only when two executions run at the same time
        return {"OUT": (inputs["IN"] + 1).astype(np.int32), "WHO": np.array([[self.name]], dtype=object)}
"""


def has_nvidia_gpu() -> bool:
    """Asked of the machine, not of the server's own device code."""
    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


def test_instance_groups(repo: Path, logs_dir: Path) -> None:
    extra = """
        instance_group [ { kind: KIND_CPU, count: 2 } ]
        parameters { key: "execution_mode" value: { string_value: "thread" } }
        """
    write_model(repo, "pair", {1: PAIR_MODEL}, extra=extra)
    config = repo / "pair" / "config.pbtxt"
    config.write_text(
        config.read_text().replace("output [", 'output [ { name: "WHO" data_type: TYPE_STRING dims: [ 1 ] },')
    )
    write_model(repo, "gpu", {1: adds(1)}, extra="instance_group [ { kind: KIND_GPU, count: 1 } ]\n")
    args = ("--model-control-mode", "explicit", "--load-model", "pair")
    with running(repo, *args, log_dir=logs_dir) as server, client_for(server) as client:

        def one(value: int) -> tuple[int, str]:
            with client_for(server) as own:
                tensor = grpcclient.InferInput("IN", [1, 1], "INT32")
                tensor.set_data_from_numpy(np.array([[value]], dtype=np.int32))
                result = own.infer("pair", [tensor], client_timeout=WAIT)
                return int(result.as_numpy("OUT")[0, 0]) - value, result.as_numpy("WHO")[0, 0].decode()

        with ThreadPoolExecutor(2) as pool:  # both wait on a barrier of 2: only two instances pass it
            results = list(pool.map(one, [10, 20]))
        assert [delta for delta, _ in results] == [1, 1]
        assert sorted(who for _, who in results) == ["pair_0_0_cpu", "pair_0_1_cpu"]

        if has_nvidia_gpu():
            pytest.skip("an NVIDIA GPU is present: KIND_GPU loads here")
        code, message = status_of(lambda: client.load_model("gpu"))
        assert code == "UNAVAILABLE"
        assert "KIND_GPU" in message
        assert "no GPU" in message
        state, reason = index(client)[("gpu", "1")]
        assert state == "UNAVAILABLE"
        assert "KIND_GPU" in reason
        assert client.is_model_ready("pair")


# ----------------------------------------------------------------------------------------- a model that exits


EXITING_MODEL = """
import sys

import numpy as np


class Model:
    def execute(self, inputs):
        if int(inputs["IN"][0, 0]) < 0:
            sys.exit(3)  # a BaseException, not an Exception
        return {"OUT": (inputs["IN"] + 1).astype(np.int32)}
"""


@pytest.mark.parametrize("mode", ["event_loop", "thread", "process"])
def test_a_model_calling_sys_exit_fails_its_request_and_the_server_keeps_serving(
    repo: Path, logs_dir: Path, mode: str
) -> None:
    extra = f'parameters {{ key: "execution_mode" value: {{ string_value: "{mode}" }} }}\n'
    write_model(repo, "exits", {1: EXITING_MODEL}, extra=extra)
    write_model(repo, "fine", {1: adds(1)})
    server = ServerProcess(repo, log_dir=logs_dir).start()
    try:
        with client_for(server) as client:
            tensor = grpcclient.InferInput("IN", [1, 1], "INT32")
            tensor.set_data_from_numpy(np.array([[-1]], dtype=np.int32))
            code, message = status_of(lambda: client.infer("exits", [tensor], client_timeout=5))
            alive = server.is_running() and accepts_connections(server.url)
            assert alive, f"the server died with the model ({code}: {message}):\n{server.log()[-1500:]}"
            assert code == "INTERNAL", f"{code}: {message}"
            assert "SystemExit" in message
            assert infer(client, "exits", 1) == (1, "1")  # the instance is still there
            assert infer(client, "fine", 1) == (1, "1")
    finally:  # a stuck instance would hold a graceful stop: not what this test is about
        assert server.proc is not None
        server.proc.kill()
        server.proc.wait()
