"""The remote backend when endpoints fail: killed (kill -9) and restarted under a load of 16
clients that counts every answer, hung (SIGSTOP), all gone; and configs that cannot load."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.backends.test_remote import infer, metric
from tests.remote_cluster import Load, RemoteCluster, received, remote_config, sample_inputs, wait_for, write_repository
from tests.serverproc import ServerProcess, free_port, running

pytestmark = pytest.mark.e2e

MODEL = "identity_fp32"
CONCURRENCY = 16


@pytest.fixture
def cluster(tmp_path: Path, logs_dir: Path) -> Iterator[RemoteCluster]:
    cluster = RemoteCluster(tmp_path, logs_dir, [MODEL], containers=2)
    cluster.start_containers()
    config = remote_config(
        MODEL, cluster.endpoints(), remote_model=MODEL, count=2, health_interval_ms="200", timeout_ms="1500"
    )
    try:
        cluster.start_front({MODEL: config})
        yield cluster
    finally:
        cluster.stop()


def front_ready(front: ServerProcess) -> bool:
    with grpcclient.InferenceServerClient(front.url) as client:
        return bool(client.is_model_ready(MODEL))


def test_kill_one_container_under_load(cluster: RemoteCluster) -> None:
    """kill -9 one container under 16 clients: nothing hangs, every failure is UNAVAILABLE and
    there are at most as many as requests were in flight, the survivor answers the rest, and
    the restarted container is used again within seconds."""
    front = cluster.front
    assert front is not None
    inputs = sample_inputs(MODEL, 1, 0)
    load = Load(front.url, MODEL, inputs, CONCURRENCY).start()
    try:
        wait_for(lambda: all(received(c.url, MODEL)[0] > 0 for c in cluster.containers), 10, "both containers used")
        cluster.kill(0)
        killed_at = load.answered
        survivor_before = received(cluster.containers[1].url, MODEL)[0]
        time.sleep(2)
        assert received(cluster.containers[1].url, MODEL)[0] - survivor_before > 50, "the survivor took no load"
        cluster.restart(0)
        used_in = wait_for(lambda: received(cluster.containers[0].url, MODEL)[0] > 0, 10, "restarted one used")
        time.sleep(0.5)
    finally:
        load.stop()
    print(
        f"answers {load.answered} (after the kill: {load.answered - killed_at}), failures {load.failures}, "
        f"restarted container used again after {used_in:.2f} s, slowest answer {load.slowest_s:.2f} s"
    )
    assert set(load.failures) <= {"StatusCode.UNAVAILABLE"}, (load.failures, load.messages)
    assert sum(load.failures.values()) <= CONCURRENCY, load.messages
    assert all("remote endpoint 127.0.0.1:" in m for m in load.messages), load.messages
    assert load.slowest_s < 5
    assert metric(front, "clipperd_remote_ejections", MODEL)[cluster.containers[0].url] >= 1
    assert front_ready(front)


def test_hung_container_is_ejected_after_its_timeout(cluster: RemoteCluster) -> None:
    """SIGSTOP: the batches sent to it time out (timeout_ms 1500), go to the other container,
    and it is ejected; SIGCONT: it comes back."""
    front = cluster.front
    assert front is not None
    hung = cluster.containers[0].url
    load = Load(front.url, MODEL, sample_inputs(MODEL, 1, 1), 4).start()
    try:
        wait_for(lambda: received(hung, MODEL)[0] > 0, 10, "the container used")
        cluster.kill(0, signal.SIGSTOP)
        stopped = time.monotonic()
        took = wait_for(lambda: metric(front, "clipperd_remote_healthy", MODEL)[hung] == 0, 10, "ejected")
        assert took < 1.5 + 1.0, f"ejected {took:.2f} s after SIGSTOP"
        time.sleep(1)
        cluster.kill(0, signal.SIGCONT)
        wait_for(lambda: metric(front, "clipperd_remote_healthy", MODEL)[hung] == 1, 10, "back in rotation")
    finally:
        load.stop()
    print(f"ejected {took:.2f} s after SIGSTOP; answers {load.answered}, failures {load.failures}")
    assert time.monotonic() - stopped < 30
    assert set(load.failures) <= {"StatusCode.UNAVAILABLE"}, load.messages
    assert sum(load.failures.values()) <= 4
    assert load.slowest_s < 1.5 * 2 + 1  # at most its timeout, then an answer from the other


def test_ready_follows_the_endpoints(cluster: RemoteCluster) -> None:
    front = cluster.front
    assert front is not None
    inputs = sample_inputs(MODEL, 1, 2)
    cluster.kill(0)
    assert front_ready(front)
    cluster.kill(1)
    wait_for(lambda: not front_ready(front), 5, "NOT READY with no endpoint")
    start = time.monotonic()
    with pytest.raises(InferenceServerException) as failed:
        infer(front.url, MODEL, inputs)
    assert time.monotonic() - start < 1
    assert failed.value.status() == "StatusCode.UNAVAILABLE"
    assert "no remote endpoint is healthy" in str(failed.value.message())
    cluster.restart(1)
    wait_for(lambda: front_ready(front), 10, "READY again")
    assert np.array_equal(infer(front.url, MODEL, inputs)["OUTPUT0"], inputs["INPUT0"])


DECLARED = """max_batch_size: 8
input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ 16 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 16 ] } ]"""


def test_bad_configs_fail_the_load(tmp_path: Path, logs_dir: Path) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    many = ",".join(f"127.0.0.1:{20000 + i}" for i in range(65))
    cases = {
        "no_endpoints": (remote_config("no_endpoints", "", declare=DECLARED), "must name at least one host:port"),
        "bad_port": (remote_config("bad_port", "127.0.0.1:99999", declare=DECLARED), "port from 1 to 65535"),
        "bad_host": (remote_config("bad_host", "not a host:80", declare=DECLARED), "must be host:port"),
        "bad_protocol": (
            remote_config("bad_protocol", nobody, protocol="smtp", declare=DECLARED),
            "must be one of grpc, http",
        ),
        "too_many": (remote_config("too_many", many, declare=DECLARED), "names 65 endpoints, at most 64"),
        "no_answer": (remote_config("no_answer", nobody), "no remote endpoint answered"),
        "no_address": (remote_config("no_address", "no-such-host.invalid:8001", declare=DECLARED), "do not resolve"),
    }
    repository = write_repository(tmp_path / "bad", {name: text for name, (text, _) in cases.items()})
    with (
        running(repository, "--model-control-mode=explicit", log_dir=logs_dir) as front,
        grpcclient.InferenceServerClient(front.url) as client,
    ):
        for name, (_, expected) in cases.items():
            with pytest.raises(InferenceServerException) as failed:
                client.load_model(name)
            assert expected in str(failed.value.message()), (name, failed.value.message())
            assert f"'{name}'" in str(failed.value.message())
