"""deploy/ validated offline: the built-in kinds against Kubernetes' own schemas
(kubernetes-validate, strict: an unknown field fails), KServe's kinds against KServe's CRD schemas
(tests/data/kserve, strict the same way), and what the manifests must say to each other."""

from __future__ import annotations

import copy
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from backends.common.config import parse_pbtxt, validate
from backends.common.parameters import Parameters
from backends.proto import model_config_pb2 as mc
from backends.remote.settings import remote_settings
from tests.deploy.manifests import (
    DEPLOY,
    KSERVE,
    KUBERNETES,
    VARIANTS,
    Resource,
    container,
    documents,
    every_rendering,
    find,
    render,
    yaml_files,
)
from tests.serverproc import ROOT

pytestmark = pytest.mark.e2e

KUBERNETES_VERSION = "1.37.0"  # the newest release kubernetes-validate knows
CRDS = ROOT / "tests" / "data" / "kserve"
KSERVE_KINDS = {"ClusterServingRuntime", "ServingRuntime", "InferenceService"}
MODEL_FORMATS = {"pytorch", "onnx", "tensorflow", "sklearn", "xgboost", "triton"}
RENDERINGS = ("default", *VARIANTS)


def validate_builtin(resource: Resource) -> None:
    kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


@cache
def _crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    schemas = {}
    for path in CRDS.glob("serving.kserve.io_*.yaml"):
        crd = documents(path)[0]
        for version in crd["spec"]["versions"]:
            api_version = f"{crd['spec']['group']}/{version['name']}"
            schemas[(api_version, crd["spec"]["names"]["kind"])] = _strict(version["schema"]["openAPIV3Schema"])
    return schemas


def _strict(schema: Any) -> Any:
    """The API server's strict field validation: an object with declared properties takes no
    other field unless it preserves unknown fields."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def validate_kserve(resource: Resource) -> None:
    schema = _crd_schemas()[(resource["apiVersion"], resource["kind"])]
    jsonschema.validate(resource, schema, cls=jsonschema.Draft7Validator)


def _kserve_resources() -> list[Resource]:
    return [d for path in yaml_files(KSERVE) for d in documents(path)]


# ---- validation ------------------------------------------------------------------------------


def test_every_yaml_file_of_deploy_parses() -> None:
    files = yaml_files(DEPLOY)
    assert len(files) >= 20
    for path in files:
        assert documents(path), f"{path}: empty"


@pytest.mark.parametrize("variant", RENDERINGS)
def test_kubernetes_manifests_validate_strictly(variant: str) -> None:
    resources = every_rendering()[variant]
    assert {r["kind"] for r in resources} >= {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget"}
    for resource in resources:
        assert resource["kind"] not in KSERVE_KINDS
        validate_builtin(resource)


def test_strict_validation_fails_an_unknown_field() -> None:
    deployment = find(render(KUBERNETES), "Deployment", "clipperd")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}  # a typo of readinessProbe
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_builtin(deployment)
    runtime = copy.deepcopy(documents(KSERVE / "clipperd-runtime.yaml")[0])
    runtime["spec"]["containers"][0]["securitycontext"] = {}
    with pytest.raises(jsonschema.ValidationError):
        validate_kserve(runtime)


def test_kserve_resources_validate_against_the_crds() -> None:
    resources = _kserve_resources()
    assert {r["kind"] for r in resources} == {"ClusterServingRuntime", "InferenceService"}
    for resource in resources:
        validate_kserve(resource)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) is not on this machine")
@pytest.mark.parametrize("variant", RENDERINGS)
def test_kustomize_renders_what_these_tests_check(variant: str) -> None:
    """Our renderer (manifests.py) gives what kubectl's kustomize gives."""
    folder = KUBERNETES if variant == "default" else KUBERNETES / variant
    out = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, check=True).stdout
    import yaml

    theirs = {(r["kind"], r["metadata"]["name"]): r for r in yaml.safe_load_all(out)}
    ours = {(r["kind"], r["metadata"]["name"]): r for r in render(folder)}
    assert theirs == ours


# ---- what the manifests say to each other ----------------------------------------------------


def _settings(resources: list[Resource]) -> dict[str, str]:
    return dict(find(resources, "ConfigMap", "clipperd-settings")["data"])


def _clipperd_deployments(resources: list[Resource]) -> list[str]:
    """The Deployments that run clipperd: the server (or front end) and any model containers."""
    return [
        r["metadata"]["name"]
        for r in resources
        if r["kind"] == "Deployment" and "clipperd" in container(resources, r["metadata"]["name"])["image"]
    ]


@pytest.mark.parametrize("variant", RENDERINGS)
def test_probes_ports_and_drain(variant: str) -> None:
    resources = every_rendering()[variant]
    for name in _clipperd_deployments(resources):
        pod = find(resources, "Deployment", name)["spec"]["template"]["spec"]
        spec = container(resources, name)
        ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
        assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}, name
        for probe, path in (("startupProbe", "/v2/health/ready"), ("readinessProbe", "/v2/health/ready")):
            assert spec[probe]["httpGet"] == {"path": path, "port": "http"}, name
        assert spec["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}, name
        assert set(spec["lifecycle"]["preStop"]) == {"sleep"}, name  # no exec: the image has no shell
        (source,) = spec["envFrom"]
        settings = find(resources, "ConfigMap", source["configMapRef"]["name"])["data"]
        exit_timeout = float(settings["CLIPPERD_EXIT_TIMEOUT_SECS"])
        assert pod["terminationGracePeriodSeconds"] > spec["lifecycle"]["preStop"]["sleep"]["seconds"] + exit_timeout
    assert container(resources)["envFrom"] == [{"configMapRef": {"name": "clipperd-settings"}}]


@pytest.mark.parametrize("variant", RENDERINGS)
def test_security_context_and_writable_folders(variant: str) -> None:
    resources = every_rendering()[variant]
    for name in _clipperd_deployments(resources):
        pod = find(resources, "Deployment", name)["spec"]["template"]["spec"]
        spec = container(resources, name)
        security = spec["securityContext"]
        assert security["runAsNonRoot"] is True, name
        assert security["runAsUser"] == pod["securityContext"]["runAsUser"] == 1000, name
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"] == {"drop": ["ALL"]}, name
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in spec["volumeMounts"]}
        for path in ("/tmp", "/var/cache/clipperd", "/dev/shm"):
            assert "emptyDir" in mounts[path], (name, path)
        assert mounts["/dev/shm"]["emptyDir"]["medium"] == "Memory", name


def test_service_pdb_and_hpa_point_at_the_pods() -> None:
    resources = render(KUBERNETES)
    deployment = find(resources, "Deployment", "clipperd")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = find(resources, "Service", "clipperd")
    assert service["spec"]["selector"].items() <= labels.items()
    names = {p["name"]: p for p in service["spec"]["ports"]}
    assert {n: p["port"] for n, p in names.items()} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert names["grpc"]["appProtocol"] == "grpc"
    pdb = find(resources, "PodDisruptionBudget", "clipperd")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8002",
        "prometheus.io/path": "/metrics",
    }
    hpa = find(resources, "HorizontalPodAutoscaler", "clipperd")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "clipperd"}
    assert hpa["spec"]["minReplicas"] >= 2  # with the PDB, a drain never takes the last replica


def test_the_hpa_metric_is_the_one_the_adapter_rule_serves() -> None:
    hpa = find(render(KUBERNETES), "HorizontalPodAutoscaler", "clipperd")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    (rule,) = documents(KUBERNETES / "prometheus-adapter" / "rules.yaml")[0]["rules"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    series = rule["seriesQuery"].split("{")[0].strip("'\"")
    assert rule["name"]["matches"] == f"^{series}$"
    assert series == "clipperd_inflight_requests"  # test_container_start checks the server exports it
    for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
        assert placeholder in rule["metricsQuery"]
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}


def test_variants() -> None:
    renderings = every_rendering()
    gpu = container(renderings["gpu"])["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in container(renderings["default"])["resources"]["limits"]
    s3 = renderings["s3"]
    assert _settings(s3)["CLIPPERD_MODEL_REPOSITORY"].startswith("s3://")
    assert "PersistentVolumeClaim" not in {r["kind"] for r in s3}
    mounts = {m["name"]: m["mountPath"] for m in container(s3)["volumeMounts"]}
    assert _settings(s3)["AWS_SHARED_CREDENTIALS_FILE"].startswith(mounts["s3-credentials"] + "/")
    redis = renderings["redis"]
    service = find(redis, "Service", "clipperd-redis")
    port = service["spec"]["ports"][0]["port"]
    assert _settings(redis)["CLIPPERD_APP_STATE"] == f"redis://clipperd-redis:{port}/0"
    assert _settings(renderings["default"])["CLIPPERD_APP_STATE"].startswith("sqlite:////tmp/")  # a writable emptyDir


def _selects(selector: dict[str, str], resources: list[Resource]) -> list[str]:
    """The Deployments whose pods carry every label of ``selector``."""
    return [
        r["metadata"]["name"]
        for r in resources
        if r["kind"] == "Deployment" and selector.items() <= r["spec"]["template"]["metadata"]["labels"].items()
    ]


def _front_end_configs(resources: list[Resource]) -> dict[str, mc.ModelConfig]:
    """The remote variant's front-end repository: each model's config.pbtxt of the ConfigMap
    volume mounted at the repository, parsed and checked as the server does at load."""
    pod = find(resources, "Deployment", "clipperd")["spec"]["template"]["spec"]
    mount = next(m for m in container(resources)["volumeMounts"] if m["mountPath"] == "/models")
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    data = find(resources, "ConfigMap", volume["configMap"]["name"])["data"]
    configs = {}
    for item in volume["configMap"]["items"]:
        assert item["key"] in data, item
        model, *rest = Path(item["path"]).parts
        if rest == ["config.pbtxt"]:
            config = parse_pbtxt(data[item["key"]], item["path"])
            validate(config, item["path"], model)
            configs[model] = config
        else:  # a version folder, made by the one file a ConfigMap can place there
            assert len(rest) == 2, item
            assert rest[0].isdigit(), item
    return configs


def test_remote_variant_front_end_names_each_model_s_headless_service() -> None:
    """Each remote model of the front end: endpoints name a headless Service whose port is the
    gRPC containerPort of one model Deployment, which loads that one model (explicit mode)."""
    resources = every_rendering()["remote"]
    configs = _front_end_configs(resources)
    assert set(configs) == {"mlp_torch", "mlp_onnx"}
    settings = find(resources, "ConfigMap", "clipperd-model-settings")["data"]
    assert settings["CLIPPERD_MODEL_CONTROL_MODE"] == "explicit"
    assert settings["CLIPPERD_APP_STATE"] == "memory://"
    assert "CLIPPERD_CACHE_CONFIG" not in settings  # the front end caches
    served = set()
    for name, config in configs.items():
        remote = remote_settings(Parameters.of(config))
        assert config.backend == "remote", name
        assert config.input, f"{name}: inputs declared, so that it loads with no container up"
        assert config.output, f"{name}: outputs declared, so that it loads with no container up"
        assert remote.resolve, f"{name}: endpoints must be one name:port"
        assert len(remote.addresses) == 1, f"{name}: endpoints must be one name:port"
        (address,) = remote.addresses
        service = find(resources, "Service", address.host)
        assert service["spec"]["clusterIP"] == "None", f"{address.host}: not headless"
        assert service["spec"]["publishNotReadyAddresses"] is True  # the name resolves before pods are ready
        assert [p["port"] for p in service["spec"]["ports"]] == [address.port]
        (deployment,) = _selects(service["spec"]["selector"], resources)
        spec = container(resources, deployment)
        grpc_port = next(p["containerPort"] for p in spec["ports"] if p["name"] == "grpc")
        assert address.port == grpc_port, "headless: the front end connects to the pod's port itself"
        assert spec["args"] == ["serve", f"--load-model={remote.remote_model or name}"]
        assert spec["envFrom"] == [{"configMapRef": {"name": "clipperd-model-settings"}}]
        served.add(deployment)
    assert served == {"clipperd-mlp-torch", "clipperd-mlp-onnx"}


def test_remote_variant_each_model_scales_on_its_own() -> None:
    resources = every_rendering()["remote"]
    front_labels = find(resources, "Deployment", "clipperd")["spec"]["template"]["metadata"]["labels"]
    for name in ("clipperd-mlp-torch", "clipperd-mlp-onnx"):
        hpa = find(resources, "HorizontalPodAutoscaler", name)
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert hpa["spec"]["minReplicas"] >= 2
        pdb = find(resources, "PodDisruptionBudget", name)
        assert _selects(pdb["spec"]["selector"]["matchLabels"], resources) == [name]
        assert _selects(find(resources, "Service", name)["spec"]["selector"], resources) == [name]
        pod = find(resources, "Deployment", name)["spec"]["template"]
        assert pod["metadata"]["annotations"]["prometheus.io/port"] == "8002"
        assert {v["name"]: v for v in pod["spec"]["volumes"]}["models"]["persistentVolumeClaim"]["readOnly"] is True
    # the front end's own HPA and Service are the base's, and select no model container
    assert _selects(find(resources, "Service", "clipperd")["spec"]["selector"], resources) == ["clipperd"]
    policy = find(resources, "NetworkPolicy", "clipperd-models")
    grpc_from = [rule for rule in policy["spec"]["ingress"] if {"port": 8001, "protocol": "TCP"} in rule["ports"]]
    (rule,) = grpc_from
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchLabels"].items() <= front_labels.items(), "the front end cannot reach gRPC"


# ---- KServe ----------------------------------------------------------------------------------


def test_clipperd_runtime() -> None:
    runtime = documents(KSERVE / "clipperd-runtime.yaml")[0]
    spec = runtime["spec"]
    assert {f["name"] for f in spec["supportedModelFormats"]} == MODEL_FORMATS
    assert spec["protocolVersions"] == ["v2", "grpc-v2"]
    (server,) = spec["containers"]
    assert "--model-repository=/mnt/models" in server["args"]
    assert spec["annotations"] == {"prometheus.kserve.io/port": "8002", "prometheus.kserve.io/path": "/metrics"}
    deployment = container(render(KUBERNETES))
    same = ("runAsNonRoot", "runAsUser", "readOnlyRootFilesystem", "allowPrivilegeEscalation", "capabilities")
    for key in (*same, "seccompProfile"):
        assert server["securityContext"][key] == deployment["securityContext"][key], key


def test_kserve_triton_runtime_differs_from_kserve_s_only_in_its_image() -> None:
    ours = documents(KSERVE / "kserve-tritonserver.yaml")[0]
    theirs = documents(CRDS / "kserve-tritonserver.yaml")[0]
    assert ours["spec"]["containers"][0].pop("image") != theirs["spec"]["containers"][0].pop("image")
    assert ours == theirs


def test_inference_services_name_a_runtime_that_serves_them() -> None:
    runtimes = {r["metadata"]["name"]: r["spec"] for r in _kserve_resources() if r["kind"] == "ClusterServingRuntime"}
    services = [r for r in _kserve_resources() if r["kind"] == "InferenceService"]
    assert {s["spec"]["predictor"]["model"]["protocolVersion"] for s in services} == {"v2", "grpc-v2"}
    for service in services:
        model = service["spec"]["predictor"]["model"]
        runtime = runtimes[model["runtime"]]
        assert model["modelFormat"]["name"] in {f["name"] for f in runtime["supportedModelFormats"]}
        assert model["protocolVersion"] in runtime["protocolVersions"]
        for port in model.get("ports", []):  # gRPC: the container port named h2c is the server's gRPC port
            assert port["name"] == "h2c"
            assert f"--grpc-port={port['containerPort']}" in runtime["containers"][0]["args"]
