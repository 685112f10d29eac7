"""Version folders and version policies (Triton's rules)."""

from __future__ import annotations

from pathlib import Path

from backends.proto import model_config_pb2 as mc


def version_folders(model_dir: Path) -> dict[int, Path]:
    """Numeric version folders; names that are not plain positive decimals (``01``, ``0``, ``v1``)
    are ignored, as Triton ignores them."""
    found: dict[int, Path] = {}
    for child in model_dir.iterdir():
        name = child.name
        if name.isdigit() and name.isascii() and not name.startswith("0") and child.is_dir():
            found[int(name)] = child
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
