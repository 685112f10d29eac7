"""What the images promise (the shared contract of issue 16), read two ways: from a Dockerfile's
final stage and from a built image (``podman image inspect``). The one Dockerfile reader of
tests/deploy; the manifests that run the image are read by manifests.py, checked against it by
manifest_check.py and started by container.py."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = (ROOT / "Dockerfile", ROOT / "Dockerfile.gpu")


@dataclass(frozen=True)
class ImageConfig:
    """What an image gives a container: its user, ports, ENTRYPOINT, CMD, HEALTHCHECK, signal, ENV."""

    user: str = ""
    ports: frozenset[int] = frozenset()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    healthcheck: tuple[str, ...] = ()  # the CMD's argv
    stopsignal: str = ""
    env: dict[str, str] = field(default_factory=dict, hash=False)


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


# ---- a Dockerfile


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
    parsed = [text.strip().split(None, 1) for text in logical if text.strip()]
    return [(words[0].upper(), words[1] if len(words) > 1 else "") for words in parsed]


def command(text: str) -> tuple[str, ...]:
    """An instruction's command: exec form (a JSON array) as written; shell form as Docker runs it."""
    text = text.strip()
    if not text:
        return ()
    if text.startswith("["):
        value = json.loads(text)
        assert isinstance(value, list), f"{text}: not the exec form"
        assert all(isinstance(v, str) for v in value), f"{text}: not the exec form"
        return tuple(value)
    return ("/bin/sh", "-c", text)


def healthcheck_command(arguments: str) -> tuple[str, ...]:
    """HEALTHCHECK's command, after its options (``--interval=10s ... CMD [...]``); NONE: none."""
    if arguments.strip().upper() == "NONE":
        return ()
    options = re.match(r"(--\S+\s+)*CMD\s+", arguments.strip())
    assert options, f"HEALTHCHECK {arguments}: not [--option=value ...] CMD command"
    return command(arguments.strip()[options.end() :])


def _with_env(env: dict[str, str], arguments: str) -> dict[str, str]:
    """ENV KEY=VALUE... (or the legacy ENV KEY VALUE); ``$VAR`` and ``${VAR}`` are the values
    from before this instruction, as Docker expands them (not those it sets itself)."""
    pairs = shlex.split(arguments)
    if pairs and "=" not in pairs[0]:
        pairs = [f"{pairs[0]}={' '.join(pairs[1:])}"]
    after = dict(env)
    for pair in pairs:
        key, _, value = pair.partition("=")
        after[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), value)
    return after


def _step(image: ImageConfig, name: str, arguments: str) -> ImageConfig:
    """``image`` after one instruction (those that leave nothing in its config: unchanged)."""
    if name == "ENV":
        return dataclasses.replace(image, env=_with_env(image.env, arguments))
    if name == "EXPOSE":
        return dataclasses.replace(image, ports=image.ports | {int(p.split("/")[0]) for p in arguments.split()})
    if name == "ENTRYPOINT":
        return dataclasses.replace(image, entrypoint=command(arguments))
    if name == "CMD":
        return dataclasses.replace(image, cmd=command(arguments))
    if name == "HEALTHCHECK":
        return dataclasses.replace(image, healthcheck=healthcheck_command(arguments))
    if name == "USER":
        return dataclasses.replace(image, user=arguments.strip())
    if name == "STOPSIGNAL":
        return dataclasses.replace(image, stopsignal=arguments.strip())
    return image


def from_dockerfile(dockerfile: Path) -> ImageConfig:
    """The final stage's image settings; a stage built ``FROM`` an earlier one starts from its
    settings, one built from a base image from none (the base's own are not known here)."""
    stages: dict[str, ImageConfig] = {}
    image, stage = ImageConfig(), ""
    for name, arguments in instructions(dockerfile):
        if name == "FROM":
            words = arguments.split()
            image = stages.get(words[0], ImageConfig())
            stage = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
        else:
            image = _step(image, name, arguments)
        if stage:
            stages[stage] = image
    return image


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
