"""The server started as the manifests start it (tests/deploy/container.py says how, and what
differs from a pod), then every probe, port and path they name called, from a non-loopback
address too (management refused there), and SIGTERM answered within the grace period.

Needs the Dockerfile of the image contract (docs/deploy.md, "Images") at the top of the checkout."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.deploy import container as ctr
from tests.deploy.image_contract import ImageConfig, from_dockerfile
from tests.deploy.manifests import KSERVE, KUBERNETES, config_maps, container, documents, find, render
from tests.serverproc import EXAMPLES, ROOT, refuse_in_fast_run

pytestmark = pytest.mark.e2e

READY_TIMEOUT_S = 120.0  # the whole bundled repository (TensorFlow, Spark) on a busy 2-core machine
HPA_METRIC = "clipperd_inflight_requests"


def _status(url: str, method: str = "GET") -> int:
    request = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0  # not listening yet


def _body(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def outside_address() -> str | None:
    """An address of this machine that is not loopback (what the kubelet and Prometheus come
    from, as far as the server can tell); None where the machine has none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing address
        except OSError:
            return None
        address = str(s.getsockname()[0])
    return None if ipaddress.ip_address(address).is_loopback else address


@pytest.fixture(scope="module")
def image() -> ImageConfig:
    dockerfile = ROOT / "Dockerfile"
    assert dockerfile.is_file(), "no Dockerfile at the top of the checkout (the image contract of docs/deploy.md)"
    return from_dockerfile(dockerfile)


@pytest.fixture
def sandbox() -> Iterator[Path]:
    """A folder uid 1000 can reach (pytest's tmp_path is root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="clipperd-pod-"))
    folder.chmod(0o755)
    yield folder
    subprocess.run(["chmod", "-R", "u+w", str(folder)], check=False)
    subprocess.run(["rm", "-rf", str(folder)], check=False)


def _uid(pod: dict[str, Any], spec: dict[str, Any]) -> int | None:
    uid = spec.get("securityContext", {}).get("runAsUser", pod.get("securityContext", {}).get("runAsUser"))
    return None if uid is None else int(uid)


def _mounts(
    spec: dict[str, Any], sandbox: Path, uid: int | None, repository: str, prepared: Path | None = None
) -> dict[str, Path]:
    """Each volumeMount as a local folder: the repository mount ``prepared`` or else a read-only
    copy of the bundled repository, every other one an empty folder the user may write
    (/dev/shm stays the real one)."""
    mounts = {repository: prepared or ctr.read_only_copy(EXAMPLES, sandbox / "models")}
    for mount in spec.get("volumeMounts", []):
        path = mount["mountPath"]
        if path not in mounts and path != "/dev/shm" and not mount.get("readOnly"):
            mounts[path] = ctr.writable_folder(sandbox / mount["name"], uid)
    for own in ("/tmp", "/var/cache/clipperd"):  # the image's own writable folders
        mounts.setdefault(own, ctr.writable_folder(sandbox / own.replace("/", "_"), uid))
    return mounts


@contextlib.contextmanager
def running(
    argv: list[str], env: dict[str, str], mounts: dict[str, Path], uid: int | None, hosts: Path | None = None
) -> Iterator[ctr.Started]:
    refuse_in_fast_run("a server process")
    log = Path(tempfile.mkstemp(prefix="clipperd-pod-", suffix=".log")[1])
    started = ctr.start(argv, env, mounts, log, uid, hosts)
    try:
        yield started
    finally:
        if started.proc.poll() is None:
            started.proc.kill()
            started.proc.wait()
        log.unlink()


def _port(spec: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    return next(int(p["containerPort"]) for p in spec["ports"] if p["name"] == port)


def _wait_ready(started: ctr.Started, url: str, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while _status(url) != 200:
        assert started.proc.poll() is None, f"exited with {started.proc.returncode}:\n{started.log_text()}"
        assert time.monotonic() < end, f"{url} not 200 within {timeout_s} s:\n{started.log_text()}"
        time.sleep(0.25)


def _probe(started: ctr.Started, spec: dict[str, Any], probe: dict[str, Any], host: str = "127.0.0.1") -> int:
    get = probe["httpGet"]
    local = started.ports[_port(spec, get["port"])]
    return _status(f"http://{host}:{local}{get['path']}")


def _grpc_ready(local_port: int) -> bool:
    with grpcclient.InferenceServerClient(f"127.0.0.1:{local_port}") as client:
        return bool(client.is_server_ready())


def _infer(http_port: int) -> None:
    """One inference on the read-only repository: it serves, not only answers its probes."""
    with httpclient.InferenceServerClient(f"127.0.0.1:{http_port}") as client:
        a = httpclient.InferInput("INPUT0", [1, 16], "INT32")
        b = httpclient.InferInput("INPUT1", [1, 16], "INT32")
        x = np.arange(16, dtype=np.int32).reshape(1, 16)
        a.set_data_from_numpy(x)
        b.set_data_from_numpy(x)
        result = client.infer("simple", [a, b])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x + x)


def _stop_within(started: ctr.Started, seconds: float) -> None:
    begin = time.monotonic()
    started.proc.send_signal(signal.SIGTERM)
    try:
        code = started.proc.wait(seconds)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {seconds} s after SIGTERM:\n{started.log_text()}")
    assert code == 0, started.log_text()
    assert time.monotonic() - begin < seconds


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ---- Kubernetes ------------------------------------------------------------------------------


def test_deployment_starts_as_its_pod_and_answers_every_probe_port_and_path(image: ImageConfig, sandbox: Path) -> None:
    resources = render(KUBERNETES)
    pod = find(resources, "Deployment", "clipperd")["spec"]["template"]
    spec = container(resources)
    env = ctr.env_of(image, spec, config_maps(resources))
    argv = ctr.argv_of(image, spec, env)
    uid = _uid(pod["spec"], spec)
    assert uid == 1000
    repository = next(m["mountPath"] for m in spec["volumeMounts"] if m["name"] == "models")
    mounts = _mounts(spec, sandbox, uid, repository)
    before = _tree(mounts[repository])
    with running(argv, env, mounts, uid) as started:
        declared = {int(p["containerPort"]) for p in spec["ports"]}
        assert set(started.ports) == declared, "the ports the server binds are not the ports the container declares"
        startup = spec["startupProbe"]
        _wait_ready(
            started,
            f"http://127.0.0.1:{started.ports[_port(spec, startup['httpGet']['port'])]}{startup['httpGet']['path']}",
            min(READY_TIMEOUT_S, startup["periodSeconds"] * startup["failureThreshold"]),
        )
        for name in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert _probe(started, spec, spec[name]) == 200, name
        _check_service_ports(resources, spec, started)
        _check_prometheus(pod["metadata"]["annotations"], started)
        _check_from_outside(spec, pod["metadata"]["annotations"], started)
        _infer(started.ports[_port(spec, "http")])
        grace = pod["spec"]["terminationGracePeriodSeconds"] - spec["lifecycle"]["preStop"]["sleep"]["seconds"]
        _stop_within(started, grace)
    assert _tree(mounts[repository]) == before, "the server wrote into the read-only repository"


def _check_service_ports(resources: list[dict[str, Any]], spec: dict[str, Any], started: ctr.Started) -> None:
    """Each of the Service's ports answers what its name and appProtocol say it serves."""
    service = find(resources, "Service", "clipperd")
    for port in service["spec"]["ports"]:
        local = started.ports[_port(spec, port["targetPort"])]
        if port["name"] == "grpc":
            assert port["appProtocol"] == "grpc"
            assert _grpc_ready(local)
        elif port["name"] == "http":
            assert _status(f"http://127.0.0.1:{local}/v2/health/ready") == 200
            assert _status(f"http://127.0.0.1:{local}/v2") == 200  # server metadata
        elif port["name"] == "metrics":
            assert "# TYPE" in _body(f"http://127.0.0.1:{local}/metrics")
        else:
            pytest.fail(f"the Service's port {port['name']!r} is not checked here: add it")


def _check_prometheus(annotations: dict[str, str], started: ctr.Started, prefix: str = "prometheus.io") -> None:
    """The scrape annotations name a port and path that serve the metric the HPA scales on."""
    port = started.ports[int(annotations[f"{prefix}/port"])]
    text = _body(f"http://127.0.0.1:{port}{annotations[f'{prefix}/path']}")
    assert f"\n{HPA_METRIC}{{" in text, f"{HPA_METRIC} is not exported"


def _check_from_outside(spec: dict[str, Any], annotations: dict[str, str], started: ctr.Started) -> None:
    """The kubelet and Prometheus are not on the pod's loopback: the server's default access
    rules must let them reach the probes and metrics, and keep management closed to them."""
    host = outside_address()
    assert host is not None, "this machine has no address but loopback: the probes cannot be called from outside"
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert _probe(started, spec, spec[name], host) == 200, name
    metrics = started.ports[int(annotations["prometheus.io/port"])]
    assert _status(f"http://{host}:{metrics}{annotations['prometheus.io/path']}") == 200
    http = started.ports[_port(spec, "http")]
    assert _status(f"http://{host}:{http}/v2/repository/index", "POST") == 403
    assert _status(f"http://127.0.0.1:{http}/v2/repository/index", "POST") == 200


# ---- the remote variant: a front end and its model containers --------------------------------


@contextlib.contextmanager
def _deployment(
    resources: list[dict[str, Any]],
    name: str,
    image: ImageConfig,
    sandbox: Path,
    prepared: Path | None = None,
    hosts: Path | None = None,
) -> Iterator[tuple[dict[str, Any], ctr.Started, Path]]:
    """One pod of Deployment ``name``, started and probed as the base's test above does; yields
    (its container spec, the server, its repository folder) and stops it on SIGTERM within its
    grace period."""
    pod = find(resources, "Deployment", name)["spec"]["template"]
    spec = container(resources, name)
    env = ctr.env_of(image, spec, config_maps(resources))
    argv = ctr.argv_of(image, spec, env)
    uid = _uid(pod["spec"], spec)
    assert uid == 1000
    own = sandbox / name
    own.mkdir(mode=0o755)
    mounts = _mounts(spec, own, uid, "/models", prepared)
    with running(argv, env, mounts, uid, hosts) as started:
        startup = spec["startupProbe"]
        url = f"http://127.0.0.1:{started.ports[_port(spec, startup['httpGet']['port'])]}{startup['httpGet']['path']}"
        _wait_ready(started, url, min(READY_TIMEOUT_S, startup["periodSeconds"] * startup["failureThreshold"]))
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert _probe(started, spec, spec[probe]) == 200, (name, probe)
        _check_prometheus(pod["metadata"]["annotations"], started)
        yield spec, started, mounts["/models"]
        grace = pod["spec"]["terminationGracePeriodSeconds"] - spec["lifecycle"]["preStop"]["sleep"]["seconds"]
        _stop_within(started, grace)


def _front_end_repository(resources: list[dict[str, Any]], target: Path, ports: dict[str, tuple[int, int]]) -> Path:
    """The front end's repository volume (a ConfigMap) as the kubelet writes it, each endpoint
    ``service:port`` moved to the local port its model container listens on: {service: (port, local)}."""
    pod = find(resources, "Deployment", "clipperd")["spec"]["template"]["spec"]
    mount = next(m for m in container(resources)["volumeMounts"] if m["mountPath"] == "/models")
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    data = dict(config_maps(resources)[volume["configMap"]["name"]])
    for key, text in data.items():
        for service, (port, local) in ports.items():
            text = text.replace(f'"{service}:{port}"', f'"{service}:{local}"')
        data[key] = text
    target.mkdir(mode=0o755)
    ctr.config_map_volume(data, volume, target)
    for folder in [target, *(p for p in target.rglob("*") if p.is_dir() and not p.is_symlink())]:
        folder.chmod(0o555)  # a configMap volume is read-only
    return target


def _index(http_port: int) -> list[dict[str, Any]]:
    request = urllib.request.Request(f"http://127.0.0.1:{http_port}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return list(json.loads(response.read()))


def _infer_mlp(url: str, model: str, config: dict[str, Any], x: np.ndarray) -> np.ndarray:
    with grpcclient.InferenceServerClient(url) as client:
        tensor = grpcclient.InferInput(config["input"][0]["name"], list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer(model, [tensor])
    return np.asarray(result.as_numpy(config["output"][0]["name"]))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the Service names resolve through a private /etc/hosts")
def test_remote_variant_starts_its_model_containers_and_front_end(image: ImageConfig, sandbox: Path) -> None:
    """deploy/kubernetes/remote as its pods start: one pod of each model Deployment (one model
    loaded, explicit mode, from the read-only repository), then the front end on its ConfigMap
    repository, whose endpoints name the headless Services. The cluster's DNS is a private
    /etc/hosts in the front end's mount namespace (each Service name to 127.0.0.1), and each
    endpoint's port is its container's local gRPC port; then one inference per model through the
    front end, answered as the model container answers, and SIGTERM to every pod."""
    resources = render(KUBERNETES / "remote")
    services = [r for r in resources if r["kind"] == "Service" and r["spec"].get("clusterIP") == "None"]
    with contextlib.ExitStack() as stack:
        ports: dict[str, tuple[int, int]] = {}
        containers: dict[str, str] = {}  # model -> its container's gRPC address
        for service in services:
            name = service["metadata"]["name"]  # each model Service is named as its Deployment
            spec, started, _ = stack.enter_context(_deployment(resources, name, image, sandbox))
            (port,) = service["spec"]["ports"]
            local = started.ports[_port(spec, port["targetPort"])]
            ports[name] = (port["port"], local)
            loaded = [m["name"] for m in _index(started.ports[_port(spec, "http")]) if m.get("state") == "READY"]
            assert [f"--load-model={m}" for m in loaded] == spec["args"][1:], f"{name} loaded {loaded}"
            containers[loaded[0]] = f"127.0.0.1:{local}"
        assert len(ports) == 2
        hosts = sandbox / "hosts"
        hosts.write_text("127.0.0.1 localhost\n" + "".join(f"127.0.0.1 {name}\n" for name in ports))
        hosts.chmod(0o644)
        repository = _front_end_repository(resources, sandbox / "front-end-repository", ports)
        before = _tree(repository)
        spec, front, _ = stack.enter_context(_deployment(resources, "clipperd", image, sandbox, repository, hosts))
        _check_service_ports(resources, spec, front)
        front_grpc = f"127.0.0.1:{front.ports[_port(spec, 'grpc')]}"
        x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
        answers = {}
        for model, url in containers.items():  # the front end serves each under the container's name
            config = _model_config(front.ports[_port(spec, "http")], model)
            answers[model] = _infer_mlp(front_grpc, model, config, x)
            np.testing.assert_array_equal(answers[model], _infer_mlp(url, model, config, x))
            healthy = _remote_healthy(front.ports[_port(spec, "metrics")], model)
            assert healthy == {url: 1.0}, f"{model}: the front end's endpoints are {healthy}, not the name's address"
        assert len(answers) == 2
        np.testing.assert_allclose(answers["mlp_torch"], answers["mlp_onnx"], rtol=1e-4, atol=1e-5)  # the same MLP
    assert _tree(repository) == before


def _remote_healthy(metrics_port: int, model: str) -> dict[str, float]:
    """clipperd_remote_healthy of ``model`` by endpoint (the addresses its name resolved to)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = _body(f"http://127.0.0.1:{metrics_port}/metrics")
    return {
        sample.labels["endpoint"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "clipperd_remote_healthy" and sample.labels.get("model") == model
    }


def _model_config(http_port: int, model: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/models/{model}/config", timeout=10) as response:
        return dict(json.loads(response.read()))


# ---- KServe ----------------------------------------------------------------------------------


def _runtime(path: Path) -> dict[str, Any]:
    return dict(documents(path)[0])


def _serve_runtime(runtime: dict[str, Any], image: ImageConfig, sandbox: Path) -> tuple[ctr.Started, Path]:
    spec = runtime["spec"]["containers"][0]
    env = ctr.env_of(image, spec, {})
    argv = ctr.argv_of(image, spec, env)
    uid = _uid({}, spec)
    assert uid == 1000
    mounts = _mounts(spec, sandbox, uid, "/mnt/models")  # where KServe's storage initializer puts the model
    log = Path(tempfile.mkstemp(prefix="clipperd-kserve-", suffix=".log")[1])
    return ctr.start(argv, env, mounts, log, uid), mounts["/mnt/models"]


@pytest.mark.parametrize("file", ["kserve-tritonserver.yaml", "clipperd-runtime.yaml"])
def test_kserve_runtime_starts_and_answers_v2_on_its_ports(file: str, image: ImageConfig, sandbox: Path) -> None:
    """KServe's own Triton runtime (image changed, args as KServe wrote them) and clipperd's
    runtime: REST on 8080, gRPC on 9000 (the h2c port of grpc-v2), metrics where the runtime's
    prometheus.kserve.io annotations point."""
    refuse_in_fast_run("a server process")
    runtime = _runtime(KSERVE / file)
    spec = runtime["spec"]["containers"][0]
    if file == "kserve-tritonserver.yaml":
        assert spec["args"][:2] == ["tritonserver", "--model-store=/mnt/models"]
    started, models = _serve_runtime(runtime, image, sandbox)
    before = _tree(models)
    try:
        assert set(started.ports) >= {8080, 9000, 8002}
        _wait_ready(started, f"http://127.0.0.1:{started.ports[8080]}/v2/health/ready", READY_TIMEOUT_S)
        for name in ("readinessProbe", "livenessProbe"):
            if name in spec:
                assert _probe(started, spec, spec[name]) == 200, name
        assert _grpc_ready(started.ports[9000])
        _check_prometheus(runtime["spec"]["annotations"], started, "prometheus.kserve.io")
        _infer(started.ports[8080])
        _stop_within(started, 30 + 5)
        assert _tree(models) == before, "the server wrote into /mnt/models, which KServe mounts read-only"
    finally:
        if started.proc.poll() is None:
            started.proc.kill()
            started.proc.wait()
        started.log.unlink()


def test_container_start_does_what_kubernetes_does_with_command_and_args(image: ImageConfig) -> None:
    """The merge rules the tests above rely on (a broken one would start something else)."""
    env = ctr.env_of(
        image,
        {"envFrom": [{"configMapRef": {"name": "c"}}], "env": [{"name": "A", "value": "2"}]},
        {"c": {"A": "1", "B": "x"}},
    )
    assert env["A"] == "2"
    assert env["B"] == "x"
    assert env["CLIPPERD_MODEL_REPOSITORY"] == image.env["CLIPPERD_MODEL_REPOSITORY"]
    assert ctr.argv_of(image, {}, env) == [*image.entrypoint, *image.cmd]
    assert ctr.argv_of(image, {"args": ["tritonserver", "--x=$(B)"]}, env) == [
        *image.entrypoint,
        "tritonserver",
        "--x=x",
    ]
    assert ctr.argv_of(image, {"command": ["other"]}, env) == ["other"]
    assert ctr.argv_of(image, {"args": ["$(NONE)"]}, env) == [*image.entrypoint, "$(NONE)"]  # left as written
    prefixed = {"envFrom": [{"configMapRef": {"name": "c"}, "prefix": "P_"}]}
    assert ctr.env_of(image, prefixed, {"c": {"A": "1"}})["P_A"] == "1"
    with pytest.raises(AssertionError, match="no ConfigMap"):  # Kubernetes would not start the pod
        ctr.env_of(image, {"envFrom": [{"configMapRef": {"name": "gone"}}]}, {})
    optional = {"envFrom": [{"configMapRef": {"name": "gone", "optional": True}}]}
    assert ctr.env_of(image, optional, {}) == image.env
    argv, env2 = ["clipperd", "serve", "--grpc-port=9000"], {"CLIPPERD_HTTP_PORT": "8080"}
    mapping = ctr.remap_ports(argv, env2)
    assert set(mapping) == {9000, 8080, 8002}
    assert argv[2] == f"--grpc-port={mapping[9000]}"
    assert env2["CLIPPERD_HTTP_PORT"] == str(mapping[8080])
    assert env2["CLIPPERD_METRICS_PORT"] == str(mapping[8002])
    assert ctr.remap_paths(
        ["sqlite:////tmp/a.db", "/tmpx", "--model-store=/mnt/models"], {"/tmp": Path("/x"), "/mnt/models": Path("/m")}
    ) == ["sqlite:////x/a.db", "/tmpx", "--model-store=/m"]
    assert os.path.basename(ctr.program("clipperd")) == "clipperd"


def test_image_matches_the_manifests(image: ImageConfig) -> None:
    """The Dockerfile's user, ports, entrypoint, signal, health check and folders are the ones
    the Deployment and the KServe runtimes rely on."""
    resources = render(KUBERNETES)
    spec = container(resources)
    pod = find(resources, "Deployment", "clipperd")["spec"]["template"]["spec"]
    assert image.user.split(":")[0] == str(pod["securityContext"]["runAsUser"])
    assert image.ports == {p["containerPort"] for p in spec["ports"]}
    assert image.entrypoint == ("clipperd",)
    assert image.cmd == ("serve",)
    assert image.stopsignal == "SIGTERM"  # what lifecycle.py drains on
    assert image.healthcheck == ("clipperd", "health")
    mounts = {m["name"]: m["mountPath"] for m in spec["volumeMounts"]}
    assert image.env["CLIPPERD_MODEL_REPOSITORY"] == mounts["models"]
    assert image.env["CLIPPERD_REPOSITORY_CACHE_DIR"] == mounts["cache"]
    assert image.env["HOME"] == "/tmp"  # a writable emptyDir under a read-only root
