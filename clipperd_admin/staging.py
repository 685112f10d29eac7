"""Repository files, changed atomically: every new folder or config is written in a hidden
staging area inside the repository (the server skips hidden folders, and a rename within one
file system is atomic), then renamed into place, so poll mode never sees half a model."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.common.versions import version_folders
from backends.proto import model_config_pb2 as mc
from clipperd_admin.errors import ModelClash, ModelNotFound
from clipperd_admin.specs import config_text, parse_config

STAGING = ".clipperd-admin"  # hidden: the server's scan skips names starting with '.'
CONFIG = "config.pbtxt"


@dataclass
class Bundle:
    """What a deploy puts in the repository: the model's config and its version folder's files."""

    config: mc.ModelConfig
    write: Callable[[Path], None]  # writes the model files into an (empty) version folder
    # where the config leaves the tensors to the server (ONNX): the model file's tensors, and how
    # to read them from a version folder already there, so that versions with other tensors clash
    tensors: Any = None
    tensors_of: Callable[[Path], Any] | None = None


class RepositoryFiles:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ModelNotFound(f"the model repository {self.root} is not a folder")

    # -- reading ------------------------------------------------------------------------------

    def model_dir(self, name: str) -> Path:
        return self.root / name

    def exists(self, name: str) -> bool:
        return self.model_dir(name).exists()

    def versions(self, name: str) -> list[int]:
        """Version folders, as the server counts them (plain positive decimals)."""
        folder = self.model_dir(name)
        return sorted(version_folders(folder)) if folder.is_dir() else []

    def read_config(self, name: str) -> mc.ModelConfig:
        folder = self.model_dir(name)
        path = folder / CONFIG
        if not folder.is_dir():
            raise ModelNotFound(f"model '{name}' is not in the repository {self.root}")
        if not path.is_file():
            others = [p.name for p in folder.glob("config.y*ml")]
            what = f"its config is {others[0]}: only config.pbtxt is edited" if others else "it has no config.pbtxt"
            raise ModelClash(f"model '{name}': {what}")
        return parse_config(path.read_text(), f"{name}/{CONFIG}")

    # -- writing ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One admin change at a time on this repository (across processes on this machine)."""
        area = self._area()
        with (area / "lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def add_model(self, name: str, bundle: Bundle, version: int) -> None:
        """A new model folder with its config and one version, in one rename."""
        with self._staged() as staged:
            model = staged / name
            (model / str(version)).mkdir(parents=True)
            bundle.write(model / str(version))
            (model / CONFIG).write_text(config_text(bundle.config))
            try:
                os.rename(model, self.model_dir(name))
            except OSError:
                raise ModelClash(f"model '{name}' appeared in the repository during the deploy") from None

    def add_version(self, name: str, bundle: Bundle, version: int) -> None:
        """A new version folder of an existing model, in one rename (its config is not touched)."""
        with self._staged() as staged:
            folder = staged / str(version)
            folder.mkdir()
            bundle.write(folder)
            target = self.model_dir(name) / str(version)
            if target.exists():
                raise ModelClash(f"model '{name}' version {version} appeared in the repository during the deploy")
            try:
                os.rename(folder, target)
            except OSError as error:
                raise ModelClash(f"model '{name}' version {version} cannot be added: {error}") from None

    def write_config(self, name: str, config: mc.ModelConfig) -> None:
        """Replaces the model's config.pbtxt in one step (os.replace)."""
        with self._staged() as staged:
            path = staged / CONFIG
            path.write_text(config_text(config))
            os.replace(path, self.model_dir(name) / CONFIG)

    def remove(self, path: Path) -> None:
        """Takes a folder out of the repository in one rename, then deletes it."""
        with self._staged() as staged:
            os.rename(path, staged / "removed")
            shutil.rmtree(staged / "removed")

    # -- the staging area ---------------------------------------------------------------------

    def _area(self) -> Path:
        area = self.root / STAGING
        area.mkdir(exist_ok=True)
        return area

    @contextlib.contextmanager
    def _staged(self) -> Iterator[Path]:
        staged = Path(tempfile.mkdtemp(prefix="stage-", dir=self._area()))
        try:
            yield staged
        finally:
            shutil.rmtree(staged, ignore_errors=True)
