"""A container started the way Kubernetes starts it, without a container runtime: the image's
ENTRYPOINT/CMD/ENV/USER (image_contract.py reads them), the pod's command/args/envFrom/env merged by
Kubernetes' rules, volumes standing in as local folders, the server as uid 1000 when we are root.

What differs from a real pod, and only this: the program comes from this checkout's virtual
environment (PATH and PYTHONPATH point there), each mountPath is a local folder named in its
place wherever the argv or the environment names it, and each port the server binds is a free
port set through the same flag or variable that set it (a variable added where the default
applied)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.settings import Settings
from tests.deploy.image_contract import ImageConfig
from tests.serverproc import ROOT, free_port

PORT_SETTINGS = ("http_port", "grpc_port", "metrics_port")


def argv_of(image: ImageConfig, spec: dict[str, Any], env: dict[str, str]) -> list[str]:
    """Kubernetes' rule: ``command`` replaces ENTRYPOINT (and drops CMD), ``args`` replaces CMD;
    ``$(VAR)`` in either is the container's variable (left as written where there is none)."""
    if "command" in spec:
        argv = [*spec["command"], *spec.get("args", [])]
    else:
        argv = [*image.entrypoint, *spec.get("args", image.cmd)]
    return [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), str(a)) for a in argv]


def missing_config_maps(spec: dict[str, Any], config_maps: dict[str, dict[str, str]]) -> list[str]:
    """The ConfigMaps ``envFrom`` needs that are not there (Kubernetes then does not start the pod)."""
    refs = [source.get("configMapRef") or {} for source in spec.get("envFrom", [])]
    return [ref.get("name", "") for ref in refs if ref.get("name") not in config_maps and not ref.get("optional")]


def env_of(image: ImageConfig, spec: dict[str, Any], config_maps: dict[str, dict[str, str]]) -> dict[str, str]:
    """The image's ENV, then each envFrom in order, then env: a later one wins, as in Kubernetes."""
    missing = missing_config_maps(spec, config_maps)
    assert not missing, f"envFrom: no ConfigMap {missing}: Kubernetes would not start this container"
    env = dict(image.env)
    for source in spec.get("envFrom", []):
        assert set(source) <= {"configMapRef", "prefix"}, f"envFrom {source}: only ConfigMaps are read here"
        data = config_maps.get(source["configMapRef"]["name"], {})  # an optional one may be absent
        env.update({source.get("prefix", "") + k: v for k, v in data.items()})
    for variable in spec.get("env", []):
        assert "value" in variable, f"env {variable['name']}: only literal values are read here"
        env[variable["name"]] = str(variable["value"])
    return env


def flag_value(argv: list[str], flag: str) -> tuple[int, str] | None:
    """(index, value) of ``--flag=value`` or ``--flag value`` in argv; the last one wins."""
    found = None
    for i, arg in enumerate(argv):
        if arg.startswith(flag + "="):
            found = (i, arg.partition("=")[2])
        elif arg == flag and i + 1 < len(argv):
            found = (i + 1, argv[i + 1])
    return found


def serving_ports(argv: list[str], env: dict[str, str]) -> dict[str, int]:
    """Each port setting as the server will read it: its flag, else its variable, else the default."""
    defaults = Settings()
    ports = {}
    for name in PORT_SETTINGS:
        flagged = flag_value(argv, "--" + name.replace("_", "-"))
        text = flagged[1] if flagged else env.get(f"CLIPPERD_{name.upper()}")
        ports[name] = int(text) if text is not None else getattr(defaults, name)
    return ports


def remap_ports(argv: list[str], env: dict[str, str]) -> dict[int, int]:
    """Moves every port the server binds to a free one, where it was set; {container: local}."""
    mapping = {}
    for name, port in serving_ports(argv, env).items():
        local = free_port()
        mapping[port] = local
        flagged = flag_value(argv, "--" + name.replace("_", "-"))
        if flagged is not None:
            i, _ = flagged
            argv[i] = f"{argv[i].partition('=')[0]}={local}" if argv[i].startswith("--") else str(local)
        else:
            env[f"CLIPPERD_{name.upper()}"] = str(local)
    return mapping


def remap_paths(values: list[str], mounts: dict[str, Path]) -> list[str]:
    """Each mountPath named in a value (as the path or a path below it) becomes its local folder."""
    if not mounts:
        return list(values)
    # one pass, longest first: a local folder (under /tmp too) is never rewritten again
    pattern = re.compile("|".join(re.escape(m) + r"(?=/|$)" for m in sorted(mounts, key=len, reverse=True)))
    return [pattern.sub(lambda m: str(mounts[m.group(0)]), value) for value in values]


def program(name: str) -> str:
    """An image's program, from this checkout's environment (the console script pip made)."""
    path = Path(sys.executable).parent / name
    assert path.exists(), f"{name} is not a console script of this environment: {path}"
    return str(path)


@dataclass
class Started:
    proc: subprocess.Popen[bytes]
    ports: dict[int, int]  # container port -> local port
    log: Path
    argv: list[str]
    env: dict[str, str]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start(
    argv: list[str], env: dict[str, str], mounts: dict[str, Path], log: Path, uid: int | None, hosts: Path | None = None
) -> Started:
    """Starts ``argv`` with ``env`` (nothing of ours inherited but where the program lies);
    with ``hosts``, in a mount namespace of its own whose /etc/hosts is that file (the cluster
    DNS's stand-in: Service names to local addresses; needs root)."""
    argv = remap_paths(argv, mounts)
    env = dict(zip(env, remap_paths(list(env.values()), mounts), strict=True))
    ports = remap_ports(argv, env)
    env["PATH"] = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    env["PYTHONPATH"] = str(ROOT)  # this checkout's code, as the image's install would be
    argv = [program(argv[0]), *argv[1:]]
    as_user: dict[str, Any] = {}
    if uid is not None and can_run_as(uid, argv[0]):  # the pod's runAsUser
        as_user = {"user": uid, "group": uid, "extra_groups": []}
    if hosts is not None:
        argv, as_user = with_hosts_file(argv, hosts, as_user.get("user")), {}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, env=env, cwd=mounts.get("/tmp", ROOT), stdout=out, stderr=subprocess.STDOUT, **as_user
        )
    return Started(proc, ports, log, argv, env)


def with_hosts_file(argv: list[str], hosts: Path, uid: int | None) -> list[str]:
    """``argv`` run in a mount namespace of its own where ``hosts`` is bind-mounted over
    /etc/hosts (glibc reads it on every lookup), as ``uid`` once the mount is made."""
    bind = 'mount --bind "$0" /etc/hosts && exec "$@"'
    user = [] if uid is None else ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    return ["unshare", "--mount", "--", "sh", "-c", bind, str(hosts), *user, *argv]


def config_map_volume(data: dict[str, str], volume: dict[str, Any], target: Path) -> Path:
    """A configMap volume as the kubelet writes it: the files in a hidden timestamped folder,
    ``..data`` linking to it, and each top-level entry a link through ``..data``; ``items``
    place keys at paths (a key not listed is left out), read-only by ``defaultMode``."""
    source = volume["configMap"]
    items = source.get("items") or [{"key": key, "path": key} for key in data]
    payload = target / "..2026_01_01_00_00_00.000000000"
    for item in items:
        assert item["key"] in data, f"configMap {source['name']}: no key {item['key']!r}"
        path = payload / item["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(data[item["key"]])
        path.chmod(item.get("mode", source.get("defaultMode", 0o644)))
    (target / "..data").symlink_to(payload.name)
    for top in sorted({Path(item["path"]).parts[0] for item in items}):
        (target / top).symlink_to(Path("..data") / top)
    return target


def can_run_as(uid: int, executable: str) -> bool:
    """Whether we can start ``executable`` as ``uid``: only root can switch users, and the
    environment's interpreter may lie where ``uid`` cannot reach (a pyenv under /root); then the
    server runs as we do (the image's own test, make test-image, runs it as 1000)."""
    if os.geteuid() != 0:
        return False
    try:
        done = subprocess.run(
            [executable, "--version"], user=uid, group=uid, extra_groups=[], capture_output=True, check=False
        )
    except PermissionError:
        return False
    return done.returncode == 0


def writable_folder(path: Path, uid: int | None) -> Path:
    """A folder the container's user may write (an emptyDir)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0 and uid is not None:
        os.chown(path, uid, uid)
    return path


def read_only_copy(source: Path, target: Path) -> Path:
    """``source`` copied to ``target``, readable by all and writable by none but root (a
    read-only volume: the server must write nothing there)."""
    shutil.copytree(source, target)
    for path in [target, *target.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    return target
