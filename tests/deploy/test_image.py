"""The built image (``make test-image`` builds it and names it in CLIPPERD_TEST_IMAGE): its
settings keep the contract and the manifests' expectations, and the server started from the
image's own filesystem (``podman image mount`` + chroot, as user 1000, with the image's
ENTRYPOINT, CMD and ENV, the root file system read-only) serves the bundled repository to
tritonclient over gRPC and HTTP and passes the image's own HEALTHCHECK.

Run it in a network namespace of its own (scripts/test-image.sh does): the server binds the
image's ports, 8000-8002."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.deploy.container import argv_of
from tests.deploy.image_contract import ImageConfig, differences, from_inspect
from tests.deploy.manifest_check import manifest_problems
from tests.deploy.manifests import KSERVE, clipperd_containers, documents, every_clipperd_container
from tests.serverproc import EXAMPLES

IMAGE = os.environ.get("CLIPPERD_TEST_IMAGE", "")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not IMAGE, reason="make test-image builds the image and names it in CLIPPERD_TEST_IMAGE"),
]

# the whole bundled repository: scripts/test-image.sh builds the image with all its frameworks
SERVED = tuple(sorted(p.name for p in EXAMPLES.iterdir() if (p / "config.pbtxt").is_file()))
READY_TIMEOUT_S = 180.0


def podman(*args: str) -> str:
    return subprocess.run(["podman", *args], check=True, capture_output=True, text=True, timeout=300).stdout


def run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def inspected() -> dict[str, Any]:
    return json.loads(podman("image", "inspect", IMAGE))[0]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def image(inspected: dict[str, Any]) -> ImageConfig:
    return from_inspect(inspected)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    for name in SERVED:
        shutil.copytree(EXAMPLES / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
    folder.chmod(0o755)  # user 1000 reads it through the bind mount
    return folder


@pytest.fixture(scope="module")
def rootfs(repository: Path) -> Iterator[Path]:
    """The image's file system, read-only, with what a runtime would add: /proc, /dev, /dev/shm,
    /etc/hosts, the repository read-only at /models, and empty writable folders at /tmp and the cache (the
    emptyDirs of the Kubernetes manifests). Everything is unmounted afterwards, even on failure."""
    root = Path(podman("image", "mount", IMAGE).strip())
    mounted: list[Path] = []

    def mount(*args: str, target: Path) -> None:
        run("mount", *args, str(target))
        mounted.append(target)

    try:
        mount("--bind", "/proc", target=root / "proc")
        mount("--bind", "/dev", target=root / "dev")
        mount("--bind", "/dev/shm", target=root / "dev" / "shm")
        mount("-t", "tmpfs", "-o", "mode=1777,size=256m", "tmpfs", target=root / "tmp")
        mount("-t", "tmpfs", "-o", "mode=0750,uid=1000,gid=1000,size=64m", "tmpfs", target=root / "var/cache/clipperd")
        # the /etc/hosts every runtime writes (the image's is empty): localhost and the hostname
        hosts = repository.parent / "hosts"
        hosts.write_text(f"127.0.0.1 localhost\n::1 localhost ip6-localhost\n127.0.1.1 {socket.gethostname()}\n")
        mount("--bind", str(hosts), target=root / "etc" / "hosts")
        mount("--bind", "-o", "ro", str(repository), target=root / "models")
        run("mount", "-o", "remount,bind,ro", str(root / "models"))  # older mounts ignore ro on the bind itself
        yield root
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", str(target)], check=False, capture_output=True, timeout=60)
        podman("image", "unmount", IMAGE)


@dataclass
class InImage:
    root: Path
    config: ImageConfig
    user: tuple[int, int]
    workdir: str

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """``argv`` run as the image would run it: its root, user, working folder and ENV only."""
        uid, gid = self.user

        def enter() -> None:
            os.chroot(self.root)
            os.chdir(self.workdir)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)

        return subprocess.Popen(argv, env=dict(self.config.env), preexec_fn=enter, **kwargs)

    def run(self, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        with self.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
            out, err = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@pytest.fixture(scope="module")
def in_image(rootfs: Path, image: ImageConfig, inspected: dict[str, Any]) -> InImage:
    uid, gid = (int(part) for part in image.user.split(":"))
    return InImage(rootfs, image, (uid, gid), inspected["Config"].get("WorkingDir") or "/")


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def served(in_image: InImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    log = tmp_path_factory.mktemp("image-logs") / "clipperd.log"
    with log.open("wb") as out:
        proc = in_image.popen([*in_image.config.entrypoint, *in_image.config.cmd], stdout=out, stderr=out)
    server = Served(proc, log)
    try:
        wait_ready(server)
        yield server
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def http_ready(port: int = 8000) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as answer:
            return answer.status == 200  # type: ignore[no-any-return]
    except OSError:
        return False


def wait_ready(server: Served, port: int = 8000) -> None:
    end = time.monotonic() + READY_TIMEOUT_S
    while not http_ready(port):
        if server.proc.poll() is not None:
            pytest.fail(f"clipperd exited with {server.proc.returncode}:\n{server.text()}")
        if time.monotonic() > end:
            pytest.fail(f"clipperd not ready after {READY_TIMEOUT_S} s:\n{server.text()}")
        time.sleep(0.25)


# ---- the image's settings


def test_image_keeps_the_contract(image: ImageConfig) -> None:
    assert differences(image) == []


def test_manifests_run_the_image_as_built(image: ImageConfig) -> None:
    containers = every_clipperd_container()
    assert containers
    assert [problem for container in containers for problem in manifest_problems(container, image)] == []


def test_image_holds_no_build_secrets(inspected: dict[str, Any], in_image: InImage) -> None:
    env = " ".join(in_image.config.env)
    assert "PIP_CERT" not in env
    assert "PIP_FIND_LINKS" not in env
    history = podman("image", "history", "--no-trunc", "--format", "{{.CreatedBy}}", IMAGE)
    assert "PIP_CERT=" not in history  # the builder stage's RUN lines are not the image's
    assert not (in_image.root / "src").exists()


# ---- the server, from the image's own files


def test_server_runs_from_the_image_as_user_1000(served: Served, in_image: InImage) -> None:
    status = Path(f"/proc/{served.proc.pid}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == ["1000"] * 4
    assert os.readlink(f"/proc/{served.proc.pid}/root") == str(in_image.root)
    assert os.readlink(f"/proc/{served.proc.pid}/exe").startswith(f"{in_image.root}/usr/bin/python3")  # the image's


def test_every_bundled_model_is_ready(served: Served) -> None:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient("127.0.0.1:8001") as client:
        rows = client.get_model_repository_index().models
        ready = sorted(row.name for row in rows if row.state == "READY")
    assert ready == list(SERVED)


def test_grpc_infer(served: Served) -> None:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient("127.0.0.1:8001") as client:
        assert client.is_server_ready()
        first = np.arange(16, dtype=np.int32).reshape(1, 16)
        second = np.ones((1, 16), dtype=np.int32)
        inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
        inputs[0].set_data_from_numpy(first)
        inputs[1].set_data_from_numpy(second)
        result = client.infer("simple", inputs)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), first + second)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), first - second)


def mlp_input() -> np.ndarray:
    return np.random.default_rng(16).standard_normal((4, 64)).astype(np.float32)


def test_http_infer_torch_and_grpc_infer_onnx_agree_with_torch_here(served: Served) -> None:
    import torch
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    data = mlp_input()
    http = httpclient.InferenceServerClient("127.0.0.1:8000")
    try:
        tensor = httpclient.InferInput("INPUT__0", [4, 64], "FP32")
        tensor.set_data_from_numpy(data, binary_data=True)
        from_torch = http.infer("mlp_torch", [tensor]).as_numpy("OUTPUT__0")
    finally:
        http.close()
    with grpcclient.InferenceServerClient("127.0.0.1:8001") as client:
        tensor = grpcclient.InferInput("INPUT0", [4, 64], "FP32")
        tensor.set_data_from_numpy(data)
        from_onnx = client.infer("mlp_onnx", [tensor]).as_numpy("OUTPUT0")
    expected = torch.jit.load(str(EXAMPLES / "mlp_torch" / "1" / "model.pt"))(torch.from_numpy(data)).detach().numpy()
    np.testing.assert_allclose(from_torch, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(from_onnx, expected, rtol=1e-4, atol=1e-4)


def test_metrics_port_serves_prometheus_text(served: Served) -> None:
    with urllib.request.urlopen("http://127.0.0.1:8002/metrics", timeout=10) as answer:
        text = answer.read().decode()
    assert 'nv_inference_request_success{model="mlp_torch"' in text


def test_the_images_healthcheck_passes(served: Served, in_image: InImage) -> None:
    done = in_image.run(list(in_image.config.healthcheck))
    assert done.returncode == 0, done.stderr.decode()


def test_stop_signal_drains_and_exits_cleanly_then_health_fails(served: Served, in_image: InImage) -> None:
    served.proc.send_signal(signal.Signals[in_image.config.stopsignal])
    assert served.proc.wait(60) == 0, served.text()
    done = in_image.run(list(in_image.config.healthcheck))
    assert done.returncode == 1
    assert "ConnectionRefused" in done.stderr.decode()
    assert "Traceback" not in served.text(), served.text()


# ---- KServe's own Triton runtime, only its image changed


def proc_status(pid: int, field: str) -> list[str]:
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith(field))
    return line.split()[1:]


def test_kserve_triton_runtime_runs_clipperd_as_1000_with_no_capabilities(
    served: Served, in_image: InImage, repository: Path, tmp_path: Path
) -> None:
    """The args of deploy/kserve/kserve-tritonserver.yaml (KServe's file, image changed), after
    the image's ENTRYPOINT, as its securityContext's user, the repository at /mnt/models."""
    assert served.proc.poll() is not None  # after the STOPSIGNAL test: ports are free again
    (spec,) = [c.spec for c in clipperd_containers(documents(KSERVE / "kserve-tritonserver.yaml"), "kserve")]
    argv = argv_of(in_image.config, spec, dict(in_image.config.env))
    assert argv[:3] == ["clipperd", "tritonserver", "--model-store=/mnt/models"]
    uid = spec["securityContext"]["runAsUser"]
    assert spec["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert (uid, uid) == in_image.user
    mnt = in_image.root / "mnt"
    run("mount", "-t", "tmpfs", "-o", "mode=0755,size=1m", "tmpfs", str(mnt))
    try:
        (mnt / "models").mkdir()
        run("mount", "--bind", "-o", "ro", str(repository), str(mnt / "models"))
        log = tmp_path / "kserve.log"
        with log.open("wb") as out:
            proc = in_image.popen(argv, stdout=out, stderr=out)
        server = Served(proc, log)
        try:
            wait_ready(server, port=8080)
            assert proc_status(proc.pid, "Uid:") == [str(uid)] * 4
            assert proc_status(proc.pid, "CapEff:") == ["0000000000000000"]
            assert proc_status(proc.pid, "CapPrm:") == ["0000000000000000"]
            import tritonclient.grpc as grpcclient

            with grpcclient.InferenceServerClient("127.0.0.1:9000") as client:
                assert client.is_server_ready()
                data = np.arange(16, dtype=np.int32).reshape(1, 16)
                inputs = [grpcclient.InferInput(f"INPUT{i}", [1, 16], "INT32") for i in (0, 1)]
                for tensor in inputs:
                    tensor.set_data_from_numpy(data)
                np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), data * 2)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0, server.text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
    finally:
        subprocess.run(["umount", str(mnt / "models")], check=False, capture_output=True, timeout=60)
        subprocess.run(["umount", str(mnt)], check=False, capture_output=True, timeout=60)
