"""The manifests of deploy/ as data: YAML documents, a kustomization rendered the way
``kubectl kustomize`` renders the few features deploy/ uses (resources, RFC 6902 patches, a
strategic-merge ``$patch: delete``, images), and the clipperd containers they run with their pod
and ConfigMaps. Anything else in a kustomization is an error here, so a feature this renderer
does not know can never be skipped silently."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

from tests.serverproc import ROOT

DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
KSERVE = DEPLOY / "kserve"
VARIANTS = ("gpu", "s3", "redis", "remote")  # deploy/kubernetes/<variant>: base/ plus a patch
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "patches", "images"}

Resource = dict[str, Any]


def documents(path: Path) -> list[Any]:
    """Every YAML document of ``path`` (empty ones dropped)."""
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def yaml_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.yaml"))


def render(folder: Path) -> list[Resource]:
    """The resources the kustomization in ``folder`` produces."""
    spec = documents(folder / "kustomization.yaml")[0]
    unknown = set(spec) - KUSTOMIZATION_KEYS
    assert not unknown, f"{folder}: kustomization keys this renderer does not implement: {unknown}"
    resources: list[Resource] = []
    for entry in spec.get("resources", []):
        target = folder / entry
        resources += render(target) if target.is_dir() else documents(target)
    for patch in spec.get("patches", []):
        resources = _apply_patch(resources, folder / patch["path"], patch.get("target"))
    for image in spec.get("images", []):
        _set_image(resources, image)
    return resources


def _matches(resource: Resource, target: dict[str, str]) -> bool:
    group, _, version = resource["apiVersion"].rpartition("/")
    wanted = {"group": group, "version": version, "kind": resource["kind"], "name": resource["metadata"]["name"]}
    return all(wanted[key] == value for key, value in target.items())


def _apply_patch(resources: list[Resource], path: Path, target: dict[str, str] | None) -> list[Resource]:
    patch = documents(path)[0]
    if isinstance(patch, list):  # RFC 6902
        assert target, f"{path}: a JSON patch needs a target"
        hits = [i for i, r in enumerate(resources) if _matches(r, target)]
        assert hits, f"{path}: the target {target} matches no resource"
        for i in hits:
            resources[i] = jsonpatch.apply_patch(resources[i], patch)
        return resources
    assert patch.get("$patch") == "delete", f"{path}: only RFC 6902 patches and '$patch: delete' are rendered here"
    key = (patch["kind"], patch["metadata"]["name"])
    kept = [r for r in resources if (r["kind"], r["metadata"]["name"]) != key]
    assert len(kept) == len(resources) - 1, f"{path}: deletes {key}, which is not there"
    return kept


def _set_image(resources: list[Resource], image: dict[str, str]) -> None:
    for container in all_containers(resources):
        name, _, _tag = container["image"].partition(":")
        if name != image["name"]:
            continue
        new = image.get("newName", name)
        container["image"] = f"{new}@{image['digest']}" if "digest" in image else f"{new}:{image['newTag']}"


def pod_spec(resource: Resource) -> dict[str, Any] | None:
    """The pod spec a resource runs: a workload's (or CronJob's) template, a Pod's or a serving
    runtime's own spec; None for a resource that runs no pod."""
    spec = resource.get("spec") or {}
    if resource["kind"] in ("ServingRuntime", "ClusterServingRuntime", "Pod"):
        return spec  # type: ignore[no-any-return]
    template = spec.get("template") or (spec.get("jobTemplate") or {}).get("spec", {}).get("template")
    return (template or {}).get("spec")


def all_containers(resources: list[Resource]) -> list[dict[str, Any]]:
    return [c for r in resources for c in (pod_spec(r) or {}).get("containers") or []]


def config_maps(resources: list[Resource]) -> dict[str, dict[str, str]]:
    """Each ConfigMap's data by name (what envFrom reads)."""
    return {
        r["metadata"]["name"]: {str(k): str(v) for k, v in (r.get("data") or {}).items()}
        for r in resources
        if r["kind"] == "ConfigMap"
    }


@dataclass
class Container:
    where: str  # rendering or file: kind/name/container
    spec: dict[str, Any]
    pod: dict[str, Any]  # the pod spec (or the serving runtime's spec) around it
    config_maps: dict[str, dict[str, str]]


def clipperd_containers(resources: list[Resource], where: str) -> list[Container]:
    """The containers of ``resources`` whose image is clipperd's (its name holds "clipperd")."""
    maps = config_maps(resources)
    found = []
    for resource in resources:
        pod = pod_spec(resource) or {}
        for spec in pod.get("containers") or []:
            if "clipperd" in str(spec.get("image", "")):
                name = f"{resource['kind']}/{resource['metadata']['name']}/{spec['name']}"
                found.append(Container(f"{where}: {name}", spec, pod, maps))
    return found


def every_clipperd_container() -> list[Container]:
    """Every clipperd container deploy/ runs: each Kubernetes rendering's, each KServe file's."""
    found = [c for name, resources in every_rendering().items() for c in clipperd_containers(resources, name)]
    for path in yaml_files(KSERVE):
        found += clipperd_containers(documents(path), str(path.relative_to(ROOT)))
    return found


def find(resources: list[Resource], kind: str, name: str) -> Resource:
    hits = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(hits) == 1, f"{kind}/{name}: {len(hits)} found"
    return copy.deepcopy(hits[0])


def container(resources: list[Resource], deployment: str = "clipperd") -> dict[str, Any]:
    pod = find(resources, "Deployment", deployment)["spec"]["template"]["spec"]
    return dict(pod["containers"][0])


def every_rendering() -> dict[str, list[Resource]]:
    """deploy/kubernetes itself and each variant, rendered."""
    renderings = {"default": render(KUBERNETES)}
    for variant in VARIANTS:
        renderings[variant] = render(KUBERNETES / variant)
    return renderings
