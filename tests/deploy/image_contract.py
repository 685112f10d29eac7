"""What the images promise (the shared contract of issue 16), read three ways: from a Dockerfile's
final stage, from a built image (``podman image inspect``) and from the manifests under
``deploy/`` that run it. The tests compare them."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = (ROOT / "Dockerfile", ROOT / "Dockerfile.gpu")
MANIFEST_DIRS = (ROOT / "deploy" / "kubernetes", ROOT / "deploy" / "kserve")
SUBCOMMANDS = ("serve", "tritonserver")  # what may follow ENTRYPOINT ["clipperd"] as a container's args
PROBE_PATHS = ("/v2/health/ready", "/v2/health/live")


@dataclass(frozen=True)
class ImageConfig:
    user: str
    ports: frozenset[int]
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    healthcheck: tuple[str, ...]  # the CMD's argv
    stopsignal: str
    env: dict[str, str] = field(hash=False)


CONTRACT = ImageConfig(
    user="1000:1000",
    ports=frozenset({8000, 8001, 8002}),
    entrypoint=("clipperd",),
    cmd=("serve",),
    healthcheck=("clipperd", "health"),
    stopsignal="SIGTERM",
    env={
        "CLIPPERD_MODEL_REPOSITORY": "/models",
        "CLIPPERD_REPOSITORY_CACHE_DIR": "/var/cache/clipperd",
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": "/tmp",
    },
)


def differences(image: ImageConfig, contract: ImageConfig = CONTRACT) -> list[str]:
    """Where ``image`` departs from ``contract`` (the contract's ENV must be in the image's)."""
    found = [
        f"{name}: {getattr(image, name)!r}, the contract says {getattr(contract, name)!r}"
        for name in ("user", "ports", "entrypoint", "cmd", "healthcheck", "stopsignal")
        if getattr(image, name) != getattr(contract, name)
    ]
    found += [
        f"ENV {key}={image.env.get(key)!r}, the contract says {value!r}"
        for key, value in contract.env.items()
        if image.env.get(key) != value
    ]
    return found


# ---- a Dockerfile's final stage


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    parsed = [tuple(text.strip().split(None, 1)) for text in logical if text.strip()]
    return [(words[0].upper(), words[1] if len(words) > 1 else "") for words in parsed]


def _argv(text: str) -> tuple[str, ...]:
    """An instruction's command: exec form (a JSON array) as written; shell form as Docker runs it."""
    text = text.strip()
    if not text:
        return ()
    if text.startswith("["):
        return tuple(json.loads(text))
    return ("/bin/sh", "-c", text)


def from_dockerfile(dockerfile: Path) -> ImageConfig:
    """The final stage's image settings (the stages before it leave none in the image)."""
    steps = instructions(dockerfile)
    last_from = max(i for i, (name, _) in enumerate(steps) if name == "FROM")
    values: dict[str, str] = {}
    env: dict[str, str] = {}
    ports: set[int] = set()
    for name, arguments in steps[last_from + 1 :]:
        if name == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(arguments))  # type: ignore[misc]
        elif name == "EXPOSE":
            ports.update(int(port.split("/")[0]) for port in arguments.split())
        else:
            values[name] = arguments
    healthcheck = _argv(re.sub(r"^(--\S+\s+)*CMD\s+", "", values.get("HEALTHCHECK", "")))
    return ImageConfig(
        user=values.get("USER", ""),
        ports=frozenset(ports),
        entrypoint=_argv(values.get("ENTRYPOINT", "")),
        cmd=_argv(values.get("CMD", "")),
        healthcheck=healthcheck,
        stopsignal=values.get("STOPSIGNAL", ""),
        env=env,
    )


# ---- a built image


def from_inspect(inspected: dict[str, Any]) -> ImageConfig:
    """From one entry of ``podman image inspect`` (podman shows the health check beside
    ``Config``; ``docker image inspect`` inside it)."""
    config = inspected["Config"]
    test = (inspected.get("Healthcheck") or config.get("Healthcheck") or {}).get("Test") or []
    return ImageConfig(
        user=config.get("User", ""),
        ports=frozenset(int(port.split("/")[0]) for port in config.get("ExposedPorts") or {}),
        entrypoint=tuple(config.get("Entrypoint") or ()),
        cmd=tuple(config.get("Cmd") or ()),
        healthcheck=tuple(test[1:] if test[:1] == ["CMD"] else test),
        stopsignal=config.get("StopSignal", ""),
        env=dict(item.split("=", 1) for item in config.get("Env") or ()),
    )


# ---- the manifests that run it


@dataclass
class Container:
    where: str  # file: kind/name/container
    spec: dict[str, Any]
    pod: dict[str, Any]  # the pod spec (or the serving runtime's spec) around it
    config_maps: dict[str, dict[str, str]]


def manifest_documents(dirs: tuple[Path, ...] = MANIFEST_DIRS) -> Iterator[tuple[Path, dict[str, Any]]]:
    for folder in dirs:
        for path in sorted([*folder.glob("**/*.yaml"), *folder.glob("**/*.yml")]) if folder.is_dir() else []:
            for document in yaml.safe_load_all(path.read_text()):
                if isinstance(document, dict) and "kind" in document:
                    yield path, document


def _pod_spec(document: dict[str, Any]) -> dict[str, Any] | None:
    spec = document.get("spec") or {}
    if document["kind"] in ("ServingRuntime", "ClusterServingRuntime", "Pod"):
        return spec  # type: ignore[no-any-return]
    template = spec.get("template") or (spec.get("jobTemplate") or {}).get("spec", {}).get("template")
    return (template or {}).get("spec")


def clipperd_containers(documents: list[tuple[Path, dict[str, Any]]]) -> list[Container]:
    """The containers whose image is clipperd's (its name holds "clipperd")."""
    config_maps = {
        doc["metadata"]["name"]: {str(k): str(v) for k, v in (doc.get("data") or {}).items()}
        for _, doc in documents
        if doc["kind"] == "ConfigMap"
    }
    found = []
    for path, document in documents:
        pod = _pod_spec(document)
        for spec in (pod or {}).get("containers") or []:
            if "clipperd" in str(spec.get("image", "")):
                where = f"{path.relative_to(ROOT)}: {document['kind']}/{document['metadata']['name']}/{spec['name']}"
                found.append(Container(where, spec, pod or {}, config_maps))
    return found


def container_env(container: Container, image: ImageConfig) -> dict[str, str]:
    """The environment the server sees: the image's, then envFrom's ConfigMaps, then env."""
    env = dict(image.env)
    for source in container.spec.get("envFrom") or []:
        env.update(container.config_maps.get((source.get("configMapRef") or {}).get("name", ""), {}))
    env.update({item["name"]: str(item["value"]) for item in container.spec.get("env") or [] if "value" in item})
    return env


def flag_value(args: list[str], flag: str) -> str | None:
    """``--flag=value`` or ``--flag value`` in ``args`` (the last one given wins)."""
    value = None
    for i, arg in enumerate(args):
        if arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
        elif arg == flag and i + 1 < len(args):
            value = args[i + 1]
    return value


def serving_ports(args: list[str], env: dict[str, str]) -> dict[str, int]:
    """The ports the server binds when run with ``args`` in ``env`` (flag, then variable, then default)."""
    defaults = {"http": 8000, "grpc": 8001, "metrics": 8002}
    return {
        name: int(flag_value(args, f"--{name}-port") or env.get(f"CLIPPERD_{name.upper()}_PORT") or default)
        for name, default in defaults.items()
    }


def _probe_problems(container: Container, ports: dict[str, int]) -> list[str]:
    named = {port.get("name"): port["containerPort"] for port in container.spec.get("ports") or []}
    problems = []
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.spec.get(kind)
        if not probe:
            continue
        if "httpGet" in probe:
            port = probe["httpGet"].get("port")
            number = named.get(port) if isinstance(port, str) else port
            if number != ports["http"] or probe["httpGet"].get("path") not in PROBE_PATHS:
                problems.append(f"{kind} GET {port}{probe['httpGet'].get('path')}: not the server's health on {ports}")
        elif "exec" in probe and probe["exec"].get("command", [])[:2] != list(CONTRACT.healthcheck):
            problems.append(f"{kind} runs {probe['exec'].get('command')}: not clipperd health")
    return problems


def _security_problems(container: Container, env: dict[str, str]) -> list[str]:
    context = {**(container.pod.get("securityContext") or {}), **(container.spec.get("securityContext") or {})}
    problems = [
        f"securityContext {key}: {context[key]}, the image runs as 1000"
        for key in ("runAsUser", "runAsGroup")
        if key in context and context[key] != 1000
    ]
    if context.get("readOnlyRootFilesystem"):
        mounted = {mount["mountPath"].rstrip("/") for mount in container.spec.get("volumeMounts") or []}
        writable = {env.get("HOME", "/tmp"), env.get("CLIPPERD_REPOSITORY_CACHE_DIR", "")} - {""}
        problems += [f"read-only root filesystem, but nothing mounted at {path}" for path in writable - mounted]
    return problems


def manifest_problems(container: Container, image: ImageConfig) -> list[str]:
    """What would not work when ``container`` runs ``image``."""
    command = container.spec.get("command")
    args = [str(arg) for arg in container.spec.get("args") or []]
    problems = []
    if command is not None and list(command) != list(image.entrypoint):
        problems.append(f"command {command} replaces the image's entrypoint {list(image.entrypoint)}")
    if args and args[0] not in SUBCOMMANDS:
        problems.append(f"args {args[:2]}: after {list(image.entrypoint)} they must start with one of {SUBCOMMANDS}")
    env = container_env(container, image)
    ports = serving_ports(args, env)
    for port in container.spec.get("ports") or []:
        if port["containerPort"] not in ports.values():
            problems.append(f"containerPort {port['containerPort']}: the server binds {ports}")
    problems += _probe_problems(container, ports)
    problems += _security_problems(container, env)
    return [f"{container.where}: {problem}" for problem in problems]
