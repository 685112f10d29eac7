"""Many replicas: clipperd processes sharing one model repository and one Redis (a real
redis-server) behave as one service behind a round-robin client (tests/deploy/roundrobin.py,
which retries UNAVAILABLE once on the next replica, as a client behind a Kubernetes Service
should). Poll mode on each sees the same versions; SIGTERM to one under load, and a rolling
update under load, fail no request. Every wait is on a condition, with a generous deadline."""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as tpb

from clipperd_admin import ApplicationAdmin
from tests.appmodels import call
from tests.deploy.roundrobin import Load, RoundRobin, add_one
from tests.h2client import DATA, END_STREAM, HEADERS, RST_STREAM, RawH2, frame, message
from tests.pymodels import (
    accepts_connections,
    adds,
    infer_once,
    slow_repository,
    started,
    status_of,
    write_model,
)
from tests.redisproc import REDIS_SERVER, redis_running
from tests.serverproc import ServerProcess, wait_until

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (scripts/install-redis.sh)"),
]

WAIT = 60.0  # the longest any condition may take (a loaded 2-core machine)
EXIT_TIMEOUT = "30"  # --exit-timeout-secs: held requests are released well within it
HELD = 3  # requests held in flight on the replica that gets SIGTERM


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    with redis_running(tmp_path) as (url, _):
        yield url


def replica(repository: Path, redis_url: str, log_dir: Path, *extra: str) -> ServerProcess:
    """A replica as a Deployment runs them: shared repository, shared Redis, its own ports."""
    args = ("--app-state", redis_url, "--exit-timeout-secs", EXIT_TIMEOUT, *extra)
    return ServerProcess(repository, *args, log_dir=log_dir).start(timeout=WAIT)


def serves(server: ServerProcess, name: str) -> bool:
    with grpcclient.InferenceServerClient(server.url) as client:
        return bool(client.is_model_ready(name))


def index(server: ServerProcess) -> set[tuple[str, str, str]]:
    with grpcclient.InferenceServerClient(server.url) as client:
        return {(m.name, m.version, m.state) for m in client.get_model_repository_index().models}


def register_service_app(server: ServerProcess) -> None:
    """``svc``, an application over ``fast`` (its KServe face answers IN + 1 as the model does)."""
    ApplicationAdmin(server.http_url).register_application("svc", ["fast"], default_output=-1, slo_micros=10_000_000)


def has_index(server: ServerProcess, wanted: set[tuple[str, str, str]]) -> bool:
    return index(server) == wanted


def answered_at_least(balancer: RoundRobin, url: str, count: int) -> bool:
    """``url`` (every replica when empty) answered ``count`` requests or more."""
    return (balancer.answered_by[url] if url else balancer.ok) >= count


def stopped(server: ServerProcess) -> int:
    assert server.proc is not None
    return server.proc.wait(WAIT)


def test_two_replicas_are_one_service(tmp_path: Path, redis_url: str) -> None:
    repository = tmp_path / "models"
    write_model(repository, "fast", {1: adds(1)})
    write_model(repository, "other", {1: adds(1), 2: adds(1)}, extra="version_policy: { all { } }")
    a = replica(repository, redis_url, tmp_path)
    b = replica(repository, redis_url, tmp_path)
    try:
        assert index(a) == index(b) == {("fast", "1", "READY"), ("other", "1", "READY"), ("other", "2", "READY")}
        for server in (a, b):
            assert f"application state: Redis at {redis_url} (shared by every replica" in server.log()

        register_service_app(a)  # through one replica, served by the other
        wait_until(lambda: serves(b, "svc"), "b serves the application registered on a", WAIT)
        with grpcclient.InferenceServerClient(b.url) as client:
            assert add_one(client, "svc", 41) == ""

        admin_a, admin_b = ApplicationAdmin(a.http_url), ApplicationAdmin(b.http_url)
        admin_b.link_model_to_app("svc", "other")  # an admin change through the other one
        admin_b.update_application("svc", policy="exp4")
        wait_until(lambda: admin_a.get_application("svc")["policy"] == "exp4", "a sees b's change", WAIT)
        for server in (a, b):  # feedback through either
            assert call(server, "POST", "/svc/update", {"input": [1], "label": 2}, None)[0] == 200
        wait_until(
            lambda: admin_a.get_application("svc")["state"] == admin_b.get_application("svc")["state"],
            "the same learnt state on both",
            WAIT,
        )
        assert admin_a.get_application("svc")["state"]["users"] == 1

        balancer = RoundRobin([a.url, b.url])  # a round-robin client sees one service
        for value in range(20):
            balancer.request(functools.partial(add_one, model="svc", value=value))
            balancer.request(functools.partial(add_one, model="fast", value=value))
        balancer.close()
        assert (balancer.ok, balancer.retried, balancer.failed) == (40, 0, [])
        assert balancer.answered_by == {a.url: 20, b.url: 20}
    finally:
        a.stop()
        b.stop()


def test_poll_mode_on_every_replica_sees_the_same_versions(tmp_path: Path, redis_url: str) -> None:
    repository = tmp_path / "models"
    write_model(repository, "fast", {1: adds(1)})
    poll = ("--model-control-mode", "poll", "--repository-poll-secs", "0.2")
    a = replica(repository, redis_url, tmp_path, *poll)
    b = replica(repository, redis_url, tmp_path, *poll)
    try:
        assert index(a) == index(b) == {("fast", "1", "READY")}
        staging = tmp_path / "staging"  # a new version is copied next to the repository, then renamed in
        write_model(staging, "fast", {2: adds(1)})
        os.rename(staging / "fast" / "2", repository / "fast" / "2")
        wanted = {("fast", "2", "READY"), ("fast", "1", "UNAVAILABLE")}
        for server in (a, b):
            wait_until(functools.partial(has_index, server, wanted), f"{server.url} serves version 2 only", WAIT)
            with grpcclient.InferenceServerClient(server.url) as client:
                result = client.infer("fast", [_one(5)], client_timeout=WAIT)
                assert result.get_response().model_version == "2"
    finally:
        a.stop()
        b.stop()


def _one(value: int) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("IN", [1, 1], "INT32")
    tensor.set_data_from_numpy(np.array([[value]], dtype=np.int32))
    return tensor


def test_sigterm_to_one_replica_under_load_loses_nothing(tmp_path: Path, redis_url: str) -> None:
    repository, markers = tmp_path / "models", tmp_path / "markers"
    slow_repository(repository, markers, instances=HELD)  # "slow" holds its requests until released
    a = replica(repository, redis_url, tmp_path)
    b = replica(repository, redis_url, tmp_path)
    try:
        register_service_app(a)
        wait_until(lambda: serves(b, "svc"), "b serves the application", WAIT)
        balancer = RoundRobin([a.url, b.url])
        with Load(balancer, ("fast", "svc")), ThreadPoolExecutor(HELD) as pool:
            wait_until(
                lambda: min(balancer.answered_by[a.url], balancer.answered_by[b.url]) >= 20, "load on both", WAIT
            )
            held = [pool.submit(infer_once, a.url, "slow", v) for v in range(HELD)]
            wait_until(lambda: started(markers) == HELD, f"{HELD} requests executing on a", WAIT)

            a.signal(signal.SIGTERM)
            wait_until(lambda: "stopping: no new requests" in a.log(), "a takes the SIGTERM", WAIT)
            wait_until(lambda: not accepts_connections(a.url), "a refuses new connections", WAIT)
            with grpcclient.InferenceServerClient(a.url) as late:  # answered at once, never left hanging
                assert status_of(lambda: add_one(late, "fast", 1))[0] == "UNAVAILABLE"
            answered = balancer.ok
            wait_until(
                lambda: balancer.retried >= 5 and balancer.ok >= answered + 50,
                "the load goes on, its requests to a retried on b",
                WAIT,
            )
            assert a.is_running()  # still draining: the held requests are in flight
            assert not any(f.done() for f in held)
            (markers / "release").touch()
            assert [f.result(timeout=WAIT) for f in held] == [(1, "1")] * HELD  # in flight at SIGTERM: answered
            assert stopped(a) == 0, a.log()
            balancer.set_endpoints([b.url])
            answered = balancer.ok
            wait_until(lambda: balancer.ok >= answered + 20, "the load goes on with b alone", WAIT)
        assert balancer.failed == [], (balancer.failed[:5], balancer.retry_causes)
        assert balancer.ok >= 100
    finally:
        (markers / "release").touch()
        a.stop()
        b.stop()


def test_a_rolling_update_under_load_fails_no_request(tmp_path: Path, redis_url: str) -> None:
    """A Deployment's rolling update (maxSurge 1, maxUnavailable 0), one pod at a time: the new
    replica starts and becomes ready, joins the endpoints; the old one gets SIGTERM, drains,
    exits, and leaves the endpoints only then (the slowest case for the clients)."""
    repository = tmp_path / "models"
    write_model(repository, "fast", {1: adds(1)})
    a = replica(repository, redis_url, tmp_path)
    register_service_app(a)
    balancer = RoundRobin([a.url])
    replicas = [a]
    try:
        with Load(balancer, ("fast", "svc")):
            wait_until(lambda: balancer.ok >= 30, "load on a", WAIT)
            old = a
            for _ in range(2):  # a -> b, then b -> c
                new = replica(repository, redis_url, tmp_path)
                replicas.append(new)
                assert serves(new, "svc")  # the applications came from Redis before it was ready
                balancer.set_endpoints([old.url, new.url])
                wait_until(functools.partial(answered_at_least, balancer, new.url, 20), "the new replica answers", WAIT)
                old.signal(signal.SIGTERM)
                assert stopped(old) == 0, old.log()
                balancer.set_endpoints([new.url])
                answered = balancer.ok
                wait_until(functools.partial(answered_at_least, balancer, "", answered + 20), "the load goes on", WAIT)
                old = new
        assert balancer.failed == [], (balancer.failed[:5], balancer.retry_causes)
        assert balancer.ok >= 100
        assert all(balancer.answered_by[r.url] >= 20 for r in replicas), balancer.answered_by
    finally:
        for server in replicas:
            server.stop()
    assert all("stopped" in r.log() for r in replicas[:2])


def _half_sent_answer(connection: RawH2, stream_id: int) -> tuple[str | None, bytes]:
    """Reads stream ``stream_id``'s answer to its end, past the GOAWAY a stopping server sends:
    (grpc-status, the response message); (None, b"") when the connection closed first."""
    headers: dict[str, str] = {}
    data = b""
    while (got := connection.read_frame()) is not None:
        kind, flags, sid, payload = got
        if sid != stream_id:
            continue
        if kind == HEADERS:
            headers.update((str(n), str(v)) for n, v in connection.decoder.decode(payload, raw=False))
        elif kind == DATA:
            data += payload
        if flags & END_STREAM or kind == RST_STREAM:
            break
    return headers.get("grpc-status"), data[5:]


def test_a_request_half_received_at_sigterm_is_answered(tmp_path: Path, redis_url: str) -> None:
    """In flight is from the first byte: a call whose message is still arriving when SIGTERM
    comes (a large tensor, a slow link) is received to its end and answered, not cut off."""
    repository = tmp_path / "models"
    write_model(repository, "fast", {1: adds(1)})
    server = replica(repository, redis_url, tmp_path)
    request = tpb.ModelInferRequest(model_name="fast")
    request.inputs.add(name="IN", datatype="INT32", shape=[1, 1])
    request.raw_input_contents.append(np.array([[41]], dtype=np.int32).tobytes())
    body = message(request.SerializeToString())
    connection = RawH2(server.grpc_port)
    try:
        connection.request(1)
        connection.send(frame(DATA, 0, 1, body[:7]))  # the prefix and two bytes of the message
        server.signal(signal.SIGTERM)
        wait_until(lambda: "stopping: no new requests" in server.log(), "the server takes the SIGTERM", WAIT)
        connection.send(frame(DATA, END_STREAM, 1, body[7:]))
        status, answer = _half_sent_answer(connection, 1)
        assert status == "0", server.log()[-2000:]
        assert list(tpb.ModelInferResponse.FromString(answer).raw_output_contents[0]) == list(
            np.array([42], dtype=np.int32).tobytes()
        )
        assert stopped(server) == 0
    finally:
        connection.close()
        server.stop()


def test_an_http_request_half_received_at_sigterm_is_answered(tmp_path: Path, redis_url: str) -> None:
    repository = tmp_path / "models"
    write_model(repository, "fast", {1: adds(1)})
    server = replica(repository, redis_url, tmp_path)
    body = json.dumps({"inputs": [{"name": "IN", "datatype": "INT32", "shape": [1, 1], "data": [41]}]}).encode()
    head = f"POST /v2/models/fast/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n\r\n"
    try:
        with socket.create_connection(("127.0.0.1", server.http_port), timeout=WAIT) as sock:
            sock.sendall(head.encode() + body[:10])
            server.signal(signal.SIGTERM)
            wait_until(lambda: "stopping: no new requests" in server.log(), "the server takes the SIGTERM", WAIT)
            sock.sendall(body[10:])
            answer = b""
            while chunk := sock.recv(1 << 16):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["outputs"][0]["data"] == [42]
        assert stopped(server) == 0
    finally:
        server.stop()
