"""``clipperd health``, the image's HEALTHCHECK: 0 against a ready server, 1 against anything
else, quickly, whatever it is given."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serverproc import ROOT, ServerProcess, free_port, running
from tests.tls_certs import make_ca, make_leaf

pytestmark = pytest.mark.e2e

BROKEN_MODEL = """\
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("this model never loads")
"""


def health(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CLIPPERD_")}
    command = [sys.executable, "-m", "server.cli", "health", *args]
    return subprocess.run(
        command, cwd=ROOT, env={**environment, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def ready_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repository = tmp_path_factory.mktemp("repo")
    _copy_tree(ROOT / "model_repository" / "identity_fp32", repository / "identity_fp32")
    with running(repository, log_dir=tmp_path_factory.mktemp("logs")) as server:
        yield server


def _copy_tree(source: Path, target: Path) -> None:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))


def test_ready_server_is_healthy(ready_server: ServerProcess) -> None:
    done = health("--http-port", str(ready_server.http_port))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_port_comes_from_the_servers_environment(ready_server: ServerProcess) -> None:
    assert health(env={"CLIPPERD_HTTP_PORT": str(ready_server.http_port)}).returncode == 0
    # the flag wins over the variable
    done = health("--http-port", str(ready_server.http_port), env={"CLIPPERD_HTTP_PORT": "1"})
    assert done.returncode == 0, done.stderr


def test_address_comes_from_the_servers_environment(ready_server: ServerProcess) -> None:
    port = str(ready_server.http_port)
    assert health("--http-port", port, env={"CLIPPERD_HTTP_ADDRESS": "127.0.0.1"}).returncode == 0
    assert health("--http-port", port, env={"CLIPPERD_HOST": "0.0.0.0"}).returncode == 0  # wildcard: loopback
    done = health("--http-port", port, env={"CLIPPERD_HTTP_ADDRESS": "127.0.0.2"})  # the server binds 127.0.0.1
    assert done.returncode == 1, done.stderr


def test_server_that_is_live_but_not_ready_is_unhealthy(tmp_path: Path) -> None:
    model = tmp_path / "repo" / "broken"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text(BROKEN_MODEL)
    (model / "config.pbtxt").write_text('backend: "python"\nmax_batch_size: 0\n')
    with running(tmp_path / "repo", log_dir=tmp_path, wait_ready=False) as server:
        done = health("--http-port", str(server.http_port))
    assert done.returncode == 1
    assert "HTTP 503" in done.stderr, done.stderr


def test_nothing_listening_is_unhealthy_at_once() -> None:
    started = time.monotonic()
    done = health("--http-port", str(free_port()))
    assert done.returncode == 1
    assert "ConnectionRefusedError" in done.stderr
    assert time.monotonic() - started < 10


def test_a_server_that_never_answers_is_unhealthy_within_the_timeout() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # accepts the connection (the backlog) but never answers
        started = time.monotonic()
        done = health("--http-port", str(listener.getsockname()[1]), "--timeout", "0.5")
    assert done.returncode == 1
    assert "timed out" in done.stderr, done.stderr
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--timeout", "0"], {}, "--timeout"),
        (["--timeout", "61"], {}, "--timeout"),
        (["--http-port", "99999"], {}, "--http-port"),
        (["--bogus"], {}, "unrecognized"),
        ([], {"CLIPPERD_HTTP_PORT": "eighty"}, "CLIPPERD_HTTP_PORT"),
        ([], {"CLIPPERD_HTTP_USE_SSL": "maybe"}, "CLIPPERD_HTTP_USE_SSL"),
    ],
)
def test_bad_arguments_are_unhealthy_never_2(args: list[str], env: dict[str, str], message: str) -> None:
    # Docker's HEALTHCHECK reserves exit code 2; argparse's own would be 2
    done = health(*args, env=env)
    assert done.returncode == 1
    assert message in done.stderr, done.stderr


def test_https_server_is_probed_over_tls(tmp_path: Path) -> None:
    ca = make_ca(tmp_path, "ca")
    leaf = make_leaf(tmp_path, "server", ca)
    repository = tmp_path / "repo"
    _copy_tree(ROOT / "model_repository" / "identity_fp32", repository / "identity_fp32")
    tls = ["--http-use-ssl", "--http-server-cert", str(leaf.cert), "--http-server-key", str(leaf.key)]
    with running(repository, *tls, log_dir=tmp_path) as server:
        port = str(server.http_port)
        over_tls = health("--http-port", port, env={"CLIPPERD_HTTP_USE_SSL": "true"})
        plaintext = health("--http-port", port)
    assert over_tls.returncode == 0, over_tls.stderr
    assert plaintext.returncode == 1
