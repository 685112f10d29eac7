"""Triton's command line runs clipperd: KServe's launch line (with its leading ``tritonserver``)
and Triton's flags in Triton's syntax start real servers that tritonclient calls; unknown and
unimplemented flags, and bad environment values, stop the start with one line and exit code 2."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from clipperd_admin.server_api import ServerApi
from server.cli import build_parser
from tests.serverproc import EXAMPLES, ROOT, free_port, running

pytestmark = pytest.mark.timeout(120)

# KServe's ClusterServingRuntime for Triton (../shared/reference/kserve/kserve-tritonserver.yaml),
# with free ports in place of 9000 and 8080
KSERVE_ARGS = ("tritonserver", "--model-store={repo}", "--grpc-port={grpc}", "--http-port={http}")
KSERVE_TAIL = ("--allow-grpc=true", "--allow-http=true")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("triton-cli-repo")
    shutil.copytree(EXAMPLES / "simple", root / "simple")
    return root


class Launched:
    """A clipperd started with exactly the given command line (no flags of the test's own)."""

    def __init__(self, command: Sequence[str], log: Path, http_url: str) -> None:
        self.log_path = log
        self.http_url = http_url
        self.proc = subprocess.Popen(
            command, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ}
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc.poll() is None, f"exited with {self.proc.returncode}:\n{self.log()}"
            try:
                with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(self.log())

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(30)


Launch = Callable[[Sequence[str], str], Launched]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    started: list[Launched] = []

    def start(command: Sequence[str], http_url: str) -> Launched:
        server = Launched(command, tmp_path / f"server-{len(started)}.log", http_url)
        started.append(server)
        server.wait_ready()
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            assert server.stop() == 0, server.log()


def _infer_simple(grpc_url: str | None, http_url: str | None) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.int32)
    if grpc_url is not None:
        with grpcclient.InferenceServerClient(grpc_url) as client:
            inputs = [grpcclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
            inputs[0].set_data_from_numpy(a)
            inputs[1].set_data_from_numpy(b)
            np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), a + b)
    if http_url is not None:
        with httpclient.InferenceServerClient(http_url) as client:
            inputs = [httpclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
            inputs[0].set_data_from_numpy(a)
            inputs[1].set_data_from_numpy(b)
            np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT1"), a - b)


def _refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def _kserve_line(repo: Path, grpc: int, http: int, metrics: int) -> list[str]:
    args = [a.format(repo=repo, grpc=grpc, http=http) for a in KSERVE_ARGS]
    return [*args, *KSERVE_TAIL, f"--metrics-port={metrics}"]  # Triton's default 8002 may be taken here


# ---- launch lines that start and serve


def test_kserve_launch_line_with_its_leading_tritonserver_serves(repo: Path, launch: Launch) -> None:
    grpc, http, metrics = free_port(), free_port(), free_port()
    command = [sys.executable, "-m", "server.cli", *_kserve_line(repo, grpc, http, metrics)]
    launch(command, f"127.0.0.1:{http}")
    _infer_simple(f"127.0.0.1:{grpc}", f"127.0.0.1:{http}")
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as answer:
        assert b"nv_inference_request_success" in answer.read()


def test_the_tritonserver_console_script_is_clipperd_serve(repo: Path, launch: Launch) -> None:
    """What ``[project.scripts] tritonserver`` runs: the args after the program name as ``serve``'s."""
    grpc, http, metrics = free_port(), free_port(), free_port()
    line = _kserve_line(repo, grpc, http, metrics)
    script = (
        "import sys; from server.cli import tritonserver_main; sys.argv = sys.argv[1:]; sys.exit(tritonserver_main())"
    )
    launch([sys.executable, "-c", script, *line], f"127.0.0.1:{http}")
    _infer_simple(f"127.0.0.1:{grpc}", None)
    scripts = (ROOT / "pyproject.toml").read_text()
    assert 'tritonserver = "server.cli:tritonserver_main"' in scripts


def test_triton_flags_act(repo: Path, launch: Launch) -> None:
    """--allow-metrics=false closes the metrics port, --log-verbose=1 logs at DEBUG, --strict-model-config
    =false is accepted, tuning flags are warned about once each, --id names the server."""
    grpc, http, metrics = free_port(), free_port(), free_port()
    line = _kserve_line(repo, grpc, http, metrics)
    extra = ["--allow-metrics=false", "--strict-model-config=false", "--log-verbose=1"]
    extra += ["--pinned-memory-pool-byte-size", "268435456", "--log-format=ISO8601", "--id=edge-7"]
    server = launch([sys.executable, "-m", "server.cli", *line, *extra], f"127.0.0.1:{http}")
    _infer_simple(f"127.0.0.1:{grpc}", f"127.0.0.1:{http}")
    assert _refused("127.0.0.1", metrics)
    log = server.log()
    assert " DEBUG " in log
    assert log.count("--pinned-memory-pool-byte-size ignored") == 1
    assert log.count("--log-format ignored") == 1
    with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc}") as client:
        assert client.get_server_metadata().name == "edge-7"


def test_allow_and_address_flags_choose_what_is_bound(repo: Path, launch: Launch) -> None:
    grpc, http, metrics = free_port(), free_port(), free_port()
    line = [f"--model-repository={repo}", "--grpc-port", str(grpc), "--http-port", str(http)]
    line += [f"--metrics-port={metrics}", "--allow-grpc=false", "--http-address", "127.0.0.2", "--log-info=false"]
    server = launch([sys.executable, "-m", "server.cli", "serve", *line], f"127.0.0.2:{http}")
    assert _refused("127.0.0.1", grpc)  # --allow-grpc=false: no gRPC port
    assert _refused("127.0.0.1", http)  # --http-address 127.0.0.2: not on 127.0.0.1
    _infer_simple(None, f"127.0.0.2:{http}")
    with urllib.request.urlopen(f"http://127.0.0.2:{metrics}/metrics", timeout=5):
        pass  # the metrics port follows --http-address, as Triton's does
    assert " INFO " not in server.log()  # --log-info=false


# ---- command lines refused with one line


def _fails(*args: str, env: dict[str, str] | None = None) -> str:
    command = [sys.executable, "-m", "server.cli", *args]
    done = subprocess.run(
        command, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.parametrize("head", [("serve",), ("tritonserver",)])
def test_an_unknown_flag_is_one_line(head: tuple[str, ...]) -> None:
    assert "--no-such-flag" in _fails(*head, f"--model-repository={EXAMPLES}", "--no-such-flag=1")


@pytest.mark.parametrize(
    ("flag", "why"),
    [
        ("--model-namespacing=true", "one namespace"),
        ("--http-header-forward-pattern=.*", "does not forward HTTP headers"),
        ("--response-cache-byte-size=1024", "--cache-config local,size"),
        ("--allow-sagemaker=1", "no SageMaker endpoint"),
    ],
)
def test_an_unimplemented_flag_that_changes_answers_is_one_line(flag: str, why: str) -> None:
    line = _fails("tritonserver", f"--model-store={EXAMPLES}", flag)
    assert flag.split("=")[0] in line
    assert why in line


def test_a_second_model_repository_is_refused() -> None:
    line = _fails("serve", f"--model-repository={EXAMPLES}", f"--model-store={EXAMPLES}")
    assert "clipperd serves one model repository" in line


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("CLIPPERD_GRPC_PORT", "abc", "expected a whole number"),  # int
        ("CLIPPERD_HTTP_PORT", "70000", "expected a port from 0 to 65535"),  # int, a port
        ("CLIPPERD_EXIT_TIMEOUT_SECS", "soon", "expected a number"),  # float
        ("CLIPPERD_ALLOW_GRPC", "ture", "expected true or false"),  # bool
        ("CLIPPERD_MODEL_CONTROL_MODE", "manual", "expected one of none, explicit, poll"),  # choice
        ("CLIPPERD_MODEL_REPOSITORY", "", "expected a path"),  # path
        ("CLIPPERD_MODEL_REPOSITORY", "/no/such/folder", "is not a folder"),  # path
        ("CLIPPERD_LOG_VERBOSE", "loud", "expected a verbosity level"),  # Triton's int-or-bool
    ],
)
def test_environment_values_are_checked_as_flags_are(variable: str, value: str, says: str) -> None:
    line = _fails("serve", env={variable: value})
    assert variable in line
    assert says in line
    assert "Traceback" not in line


def test_gc_freeze_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert build_parser().parse_args(["serve"]).gc_freeze is True
    assert build_parser().parse_args(["serve", "--gc-freeze=false"]).gc_freeze is False
    monkeypatch.setenv("CLIPPERD_GC_FREEZE", "0")
    assert build_parser().parse_args(["serve"]).gc_freeze is False


# ---- the control mode, told by the server


@pytest.mark.parametrize("mode", ["none", "explicit", "poll"])
def test_the_server_says_its_control_mode_and_the_admin_client_reads_it(repo: Path, logs_dir: Path, mode: str) -> None:
    # the repository API closed to this client: the old probe (a load call) could not learn the mode
    closed = "--http-restricted-api=model-repository:admin-key=secret"
    flags = [f"--model-control-mode={mode}", "--load-model=simple", closed]
    with running(repo, *(flags if mode == "explicit" else flags[::2]), log_dir=logs_dir) as server:
        with urllib.request.urlopen(f"http://{server.http_url}/v2", timeout=5) as answer:
            metadata = json.loads(answer.read())
        assert metadata["parameters"] == {"model_control_mode": mode}
        assert ServerApi(server.http_url).control_mode() == mode


@pytest.mark.parametrize("listener", ["gRPC", "HTTP", "metrics"])
def test_a_port_already_taken_is_one_line_naming_the_listener(listener: str, tmp_path: Path) -> None:
    """As tritonserver when its port is taken: the start ends with one line naming the listener
    and the address, exit code 2, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {"gRPC": "--grpc-port", "HTTP": "--http-port", "metrics": "--metrics-port"}
        flags = [f"{flag}={port if name == listener else 0}" for name, flag in ports.items()]
        command = [sys.executable, "-m", "server.cli", "serve", f"--model-repository={tmp_path}", "--host=127.0.0.1"]
        done = subprocess.run(command + flags, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert f"cannot listen for {listener} on 127.0.0.1:{port}: Address already in use" in output
    assert "Traceback" not in output
    assert [line for line in output.splitlines() if "ERROR" in line] == [
        line for line in output.splitlines() if "cannot listen" in line
    ]
