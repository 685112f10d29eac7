"""Version folders and version policies (Triton's rules)."""

from __future__ import annotations

from pathlib import Path

from backends.proto import model_config_pb2 as mc

MAX_VERSION = 2**63 - 1  # versions are int64 in the config and on the wire


def folder_version(name: str) -> int | None:
    """The version a folder name stands for, or None: only plain positive ASCII decimals without
    a leading zero, up to int64 (``1``, ``12``; not ``01``, ``0``, ``-1``, ``v1``, ``١``), so that
    one version has one folder name. The repository and the backends' auto-complete both use it."""
    if not (name.isascii() and name.isdigit()) or name.startswith("0") or len(name) > len(str(MAX_VERSION)):
        return None
    number = int(name)
    return number if number <= MAX_VERSION else None


def version_folders(model_dir: Path) -> dict[int, Path]:
    """The version folders of a model (see :func:`folder_version`); other names are ignored."""
    found: dict[int, Path] = {}
    for child in model_dir.iterdir():
        number = folder_version(child.name)
        if number is not None and child.is_dir():
            found[number] = child
    return found


def select_versions(policy: mc.ModelVersionPolicy, available: list[int]) -> tuple[list[int], list[int]]:
    """The versions to serve under ``policy``, and the versions it names that do not exist."""
    ordered = sorted(available)
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return ordered, []
    if choice == "specific":
        wanted = sorted(set(policy.specific.versions))
        return [v for v in wanted if v in available], [v for v in wanted if v not in available]
    count = policy.latest.num_versions if choice == "latest" else 1
    return ordered[-max(count, 1) :], []
