"""A remote model whose ``endpoints`` is a DNS name (a Kubernetes headless Service): the
endpoints follow the name's addresses as it is resolved again every ``resolve_interval_s``.

No DNS server is needed: the front end runs in a mount namespace of its own (``unshare
--mount``) where /etc/hosts is a bind mount of a file this test rewrites in place (glibc reads
/etc/hosts again on every lookup). ``models.test`` maps to 127.0.0.2 and, when the test adds the
line, 127.0.0.3; one clipperd model container listens on each, on the same port (Linux routes
all of 127.0.0.0/8 to the loopback interface). Needs root (a mount namespace)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.backends.test_remote import metric
from tests.remote_cluster import Load, received, remote_config, sample_inputs, wait_for, write_repository
from tests.serverproc import EXAMPLES, ServerProcess, free_port

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: unshare --mount and a bind mount over /etc/hosts"),
]

MODEL = "identity_fp32"
NAME = "models.test"
FIRST, SECOND = "127.0.0.2", "127.0.0.3"
RESOLVE_INTERVAL_S = 1
CONCURRENCY = 4
# each request waits this long in its endpoint's queue for a batch to form, so that at any
# moment of the closed loop below most requests are queued, not in flight: removing an
# endpoint then has queued requests to move to the other one
QUEUE_DELAY_US = 50_000


class PrivateHostsServer(ServerProcess):
    """A clipperd whose /etc/hosts is ``hosts``: a bind mount in a mount namespace of its own,
    so the machine's own /etc/hosts is never touched."""

    def __init__(self, repository: Path, hosts: Path, *args: str, log_dir: Path) -> None:
        super().__init__(repository, *args, log_dir=log_dir)
        self.hosts = hosts

    def command(self) -> list[str]:
        bind = 'mount --bind "$0" /etc/hosts && exec "$@"'
        return ["unshare", "--mount", "--", "sh", "-c", bind, str(self.hosts), *super().command()]


def container_on(host: str, grpc_port: int, repository: Path, log_dir: Path) -> ServerProcess:
    """A model container bound to ``host`` (a loopback address), gRPC on ``grpc_port``."""
    server = ServerProcess(repository, "--host", host, log_dir=log_dir)  # the later --host wins
    server.grpc_port = grpc_port
    server.url = f"{host}:{grpc_port}"
    server.log_path = log_dir / f"clipperd-{host}-{grpc_port}.log"
    return server


def write_hosts(path: Path, *addresses: str) -> None:
    """Rewrites ``path`` in place (the same inode: the bind mount shows the new text)."""
    lines = ["127.0.0.1 localhost", *(f"{address} {NAME}" for address in addresses)]
    with path.open("r+") as f:
        f.seek(0)
        f.write("\n".join(lines) + "\n")
        f.truncate()


@dataclass
class Setup:
    front: ServerProcess
    first: ServerProcess
    second: ServerProcess
    hosts: Path
    port: int

    def in_rotation(self) -> set[str]:
        """The endpoints the front end has now, healthy or not."""
        return set(metric(self.front, "clipperd_remote_healthy", MODEL))

    def healthy(self) -> set[str]:
        return {e for e, v in metric(self.front, "clipperd_remote_healthy", MODEL).items() if v == 1}


@pytest.fixture
def setup(tmp_path: Path, logs_dir: Path) -> Iterator[Setup]:
    repository = tmp_path / "containers"
    repository.mkdir()
    shutil.copytree(EXAMPLES / MODEL, repository / MODEL)
    port = free_port()
    first = container_on(FIRST, port, repository, logs_dir)
    second = container_on(SECOND, port, repository, logs_dir)
    hosts = tmp_path / "hosts"
    hosts.write_text("")
    write_hosts(hosts, FIRST)
    config = remote_config(
        MODEL,
        f"{NAME}:{port}",
        remote_model=MODEL,
        batching=False,
        declare=f"dynamic_batching {{ max_queue_delay_microseconds: {QUEUE_DELAY_US} }}",
        resolve_interval_s=str(RESOLVE_INTERVAL_S),
        health_interval_ms="200",
        timeout_ms="2000",
    )
    front = PrivateHostsServer(write_repository(tmp_path / "front", {MODEL: config}), hosts, log_dir=logs_dir)
    servers = [first, second, front]
    try:
        first.start(wait_ready=False)
        second.start(wait_ready=False)
        first.wait_ready(60)
        second.wait_ready(60)
        front.start()
        yield Setup(front, first, second, hosts, port)
    finally:
        for server in reversed(servers):
            if server.is_running():
                server.stop()


def test_the_hosts_file_is_the_front_end_s_own(setup: Setup) -> None:
    """The test's premise: the front end resolves the name, this machine does not."""
    import socket

    with pytest.raises(socket.gaierror):
        socket.getaddrinfo(NAME, setup.port)
    assert setup.in_rotation() == {setup.first.url}


def test_endpoints_follow_the_name_as_it_is_resolved_again(setup: Setup) -> None:
    """A second address of the name brings its container into use within a few resolve
    intervals; removing it takes the container out while the load goes on, and no request
    fails: the queued ones move to the other endpoint, the ones in flight finish. Twice."""
    inputs = sample_inputs(MODEL, 1, 0)
    load = Load(setup.front.url, MODEL, inputs, CONCURRENCY).start()
    try:
        time.sleep(1)
        assert received(setup.second.url, MODEL) == (0, 0), (
            "the second container was used before its name pointed at it"
        )
        for _ in range(2):
            write_hosts(setup.hosts, FIRST, SECOND)
            took = wait_for(
                lambda: setup.second.url in setup.healthy(), 10 * RESOLVE_INTERVAL_S, "second endpoint added"
            )
            before = received(setup.second.url, MODEL)[0]
            wait_for(lambda b=before: received(setup.second.url, MODEL)[0] > b + 10, 10, "second endpoint used")
            print(f"added: in rotation after {took:.2f} s")
            write_hosts(setup.hosts, FIRST)
            took = wait_for(lambda: setup.second.url not in setup.in_rotation(), 10 * RESOLVE_INTERVAL_S, "removed")
            answered = load.answered
            print(f"removed: out after {took:.2f} s")
            frozen = received(setup.second.url, MODEL)[0]
            time.sleep(1)
            assert received(setup.second.url, MODEL)[0] == frozen, "the removed endpoint was still sent requests"
            assert load.answered > answered + 10, "the load stopped when the endpoint was removed"
    finally:
        load.stop()
    print(f"answers {load.answered}, failures {load.failures}, slowest {load.slowest_s:.2f} s")
    assert load.failures == {}, load.messages
    assert setup.in_rotation() == {setup.first.url}
    assert setup.front.is_running(), setup.front.log()
