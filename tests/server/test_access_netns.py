"""Closed management from a real non-loopback client: the test makes a network namespace joined
to this one by a veth pair (addresses in 198.18.0.0/15, the benchmarking range, reachable only
between the two ends), starts the server on the host end's address and runs
tests/netns_client.py inside the namespace. By default inference, health, metadata, statistics
and metrics answer and model-repository, shared-memory and applications admin are refused;
the management token, or --allow-remote-management, opens them. Needs root and iproute2
(`make tools` installs it); skipped otherwise."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from tests.conftest import Region
from tests.serverproc import EXAMPLES, ROOT, ServerProcess

pytestmark = pytest.mark.timeout(300)

TOKEN = secrets.token_hex(24)
Starter = Callable[..., ServerProcess]  # start(*flags): a server on the host end's address
OPEN = ("infer", "ready", "metadata", "statistics", "trace_read")
# infer_region: an inference naming a region that a client on the server's machine registered
MANAGEMENT = ("index", "load", "shm_register", "shm_status", "shm_unregister", "infer_region", "trace_update")
REGION = "host_region"


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's 'ip' is not installed (make tools installs it)"
    return None


class Namespace:
    """A namespace with one veth pair; its name, the host end's address and the client end's."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.name = f"clipperd-test-{os.getpid()}-{tag}"
        self.host_if, self.ns_if = f"cdh{tag}", f"cdn{tag}"  # interface names: at most 15 characters
        subnet = secrets.randbelow(256)
        self.host_address, self.ns_address = f"198.18.{subnet}.1", f"198.18.{subnet}.2"

    def create(self) -> None:
        steps = [
            ("netns", "add", self.name),
            ("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if, "netns", self.name),
            ("addr", "add", f"{self.host_address}/30", "dev", self.host_if),
            ("link", "set", self.host_if, "up"),
            ("-n", self.name, "addr", "add", f"{self.ns_address}/30", "dev", self.ns_if),
            ("-n", self.name, "link", "set", self.ns_if, "up"),
            ("-n", self.name, "link", "set", "lo", "up"),
        ]
        for step in steps:
            done = _ip(*step)
            if done.returncode != 0:
                raise RuntimeError(f"ip {' '.join(step)}: {done.stderr.strip()}")

    def remove(self) -> None:
        _ip("link", "del", self.host_if)  # deletes both ends
        _ip("netns", "del", self.name)

    def run_client(self, server: ServerProcess, token: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env["PYTHONPATH"] = str(ROOT)
        command = [
            *("ip", "netns", "exec", self.name, sys.executable, "-m", "tests.netns_client"),
            *("--grpc", server.url, "--http", server.http_url),
            *("--metrics", f"{self.host_address}:{server.metrics_port}"),
            *(("--token", token) if token else ()),
            *("--region", REGION),
        ]
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        outcomes: dict[str, str] = json.loads(done.stdout)
        return outcomes


@pytest.fixture(scope="module")
def namespace() -> Iterator[Namespace]:
    reason = _why_not()
    if reason is not None:
        pytest.skip(reason)
    ns = Namespace()
    try:
        ns.create()
    except RuntimeError as error:
        ns.remove()
        pytest.skip(f"cannot make a network namespace here: {error}")
    try:
        yield ns
    finally:
        ns.remove()


@pytest.fixture
def start(namespace: Namespace, logs_dir: Path, make_region: Callable[[int], Region]) -> Iterator[Starter]:
    """Starts servers bound to the host end's address only (never a machine's real interfaces),
    each with a region registered from this side (the token, when set, opens it)."""
    started: list[ServerProcess] = []
    key, _ = make_region(64)

    def start_server(*args: str) -> ServerProcess:
        server = ServerProcess(
            EXAMPLES,
            *("--host", namespace.host_address, "--model-control-mode", "explicit"),
            *("--load-model", "identity_fp32", "--load-model", "simple", *args),
            log_dir=logs_dir,
        )
        server.url = f"{namespace.host_address}:{server.grpc_port}"
        server.http_url = f"{namespace.host_address}:{server.http_port}"
        started.append(server)
        server.start()
        if "--no-allow-shared-memory" in args:
            return server
        token = os.environ.get("CLIPPERD_MANAGEMENT_TOKEN")
        headers = {"authorization": f"Bearer {token}"} if token else None
        with grpcclient.InferenceServerClient(server.url) as client:
            client.register_system_shared_memory(REGION, key, 64, headers=headers)
        return server

    yield start_server
    for server in started:
        server.stop()


def _by_outcome(outcomes: dict[str, str], transport: str, names: tuple[str, ...]) -> dict[str, str]:
    return {name: outcomes[f"{transport}.{name}"] for name in names}


@pytest.mark.parametrize("frontend", ["native", "grpcio"])
def test_management_is_closed_to_remote_clients_unless_a_token_opens_it(
    namespace: Namespace, start: Starter, monkeypatch: pytest.MonkeyPatch, frontend: str
) -> None:
    monkeypatch.setenv("CLIPPERD_MANAGEMENT_TOKEN", TOKEN)  # the token from the environment, as advised
    server = start("--grpc-frontend", frontend)
    refused = namespace.run_client(server)
    for transport, denied in (("grpc", "PERMISSION_DENIED"), ("http", "403")):
        assert _by_outcome(refused, transport, OPEN) == dict.fromkeys(OPEN, "ok"), refused
        assert _by_outcome(refused, transport, MANAGEMENT) == dict.fromkeys(MANAGEMENT, denied), refused
    assert refused["grpc.config"] == "ok"
    assert refused["grpc.unload"] == "PERMISSION_DENIED"
    assert refused["http.applications"] == refused["http.clipper_admin"] == "403"
    assert (refused["admin.list_models"], refused["admin.apps"]) == ("403", "403")
    assert refused["metrics"] == "ok"

    opened = namespace.run_client(server, TOKEN)
    assert set(opened.values()) == {"ok"}, opened  # unload included: 'simple' is gone
    assert TOKEN not in server.log()


def test_allow_remote_management_opens_it_without_a_credential(namespace: Namespace, start: Starter) -> None:
    server = start("--allow-remote-management")
    outcomes = namespace.run_client(server)
    assert set(outcomes.values()) == {"ok"}, outcomes


def test_remote_registration_stays_off_when_shared_memory_is_off(namespace: Namespace, start: Starter) -> None:
    server = start("--allow-remote-management", "--no-allow-shared-memory")
    outcomes = namespace.run_client(server)
    assert (outcomes["grpc.shm_register"], outcomes["http.shm_register"]) == ("PERMISSION_DENIED", "403")
    assert (outcomes["grpc.index"], outcomes["http.index"], outcomes["grpc.infer"]) == ("ok", "ok", "ok")
