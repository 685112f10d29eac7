"""Whether a manifest's clipperd container would work with an image: its command and args after
the image's ENTRYPOINT, the ports the server then binds (container.py's Kubernetes merge of
env and args), its probes and its securityContext. test_dockerfiles.py checks the Dockerfiles'
images against deploy/, test_image.py the built one."""

from __future__ import annotations

from tests.deploy.container import argv_of, env_of, missing_config_maps, serving_ports
from tests.deploy.image_contract import CONTRACT, ImageConfig
from tests.deploy.manifests import Container

SUBCOMMANDS = ("serve", "tritonserver")  # what may follow ENTRYPOINT ["clipperd"] as a container's args
PROBE_PATHS = ("/v2/health/ready", "/v2/health/live")


def _probe_problems(container: Container, http_port: int) -> list[str]:
    named = {port.get("name"): port["containerPort"] for port in container.spec.get("ports") or []}
    problems = []
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.spec.get(kind)
        if not probe:
            continue
        if "httpGet" in probe:
            port = probe["httpGet"].get("port")
            number = named.get(port) if isinstance(port, str) else port
            if number != http_port or probe["httpGet"].get("path") not in PROBE_PATHS:
                problems.append(
                    f"{kind} GET {port}{probe['httpGet'].get('path')}: not the server's health on {http_port}"
                )
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
    missing = missing_config_maps(container.spec, container.config_maps)
    if missing:
        return [f"{container.where}: envFrom names ConfigMaps {missing}, which are not there"]
    command = container.spec.get("command")
    problems = []
    if command is not None and list(command) != list(image.entrypoint):
        problems.append(f"command {command} replaces the image's entrypoint {list(image.entrypoint)}")
    env = env_of(image, container.spec, container.config_maps)
    argv = argv_of(image, container.spec, env)
    subcommand = argv[len(image.entrypoint) : len(image.entrypoint) + 1]
    if command is None and subcommand and subcommand[0] not in SUBCOMMANDS:
        args = argv[len(image.entrypoint) :][:2]
        problems.append(f"args {args}: after {list(image.entrypoint)} they must start with one of {SUBCOMMANDS}")
    ports = serving_ports(argv, env)
    for port in container.spec.get("ports") or []:
        if port["containerPort"] not in ports.values():
            problems.append(f"containerPort {port['containerPort']}: the server binds {ports}")
    problems += _probe_problems(container, ports["http_port"])
    problems += _security_problems(container, env)
    return [f"{container.where}: {problem}" for problem in problems]
