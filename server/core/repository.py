"""The model repository manager: scans the repository folder, applies version policies and the
control mode (none / explicit / poll), and loads, unloads and reloads models while everything
else keeps serving. A reload builds the new versions first and swaps them in at once: the old
version answers until the new one is ready, then drains and unloads."""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from backends import registry
from backends.common import config_keys
from backends.common.config import is_ensemble, load_model_config
from backends.common.errors import ClipperdError, InvalidArgument, NotFound, Unavailable, Unimplemented
from backends.common.versions import select_versions, version_folders
from backends.proto import model_config_pb2 as mc
from schedulers.cache import ResponseCache
from schedulers.protocol import RemoteEndpoints
from schedulers.rate_limiter import RateLimiter
from server.core.bls import RepositoryCaller
from server.core.model_version import ModelVersion, load_model_version

log = logging.getLogger(__name__)

MAX_NAME_LENGTH = 255


class ControlMode(enum.Enum):
    NONE = "none"
    EXPLICIT = "explicit"
    POLL = "poll"


class State(enum.Enum):
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"


@dataclass
class VersionStatus:
    state: State
    reason: str = ""


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: str
    state: str
    reason: str


@dataclass
class ModelEntry:
    name: str
    serving: dict[int, ModelVersion] = field(default_factory=dict)
    latest: ModelVersion | None = None
    status: dict[int, VersionStatus] = field(default_factory=dict)
    reason: str = ""  # why the model as a whole is unavailable (bad config, no versions)
    fingerprint: tuple[tuple[str, int, int], ...] = ()
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def publish(self, serving: dict[int, ModelVersion]) -> None:
        """Swaps the served versions in one step, as seen by the request path."""
        self.serving = serving
        self.latest = serving[max(serving)] if serving else None


def shown(name: str) -> str:
    """A model name as it may appear in an error message: bounded and printable."""
    return repr(name[:64] + ("..." if len(name) > 64 else ""))


class RepositorySource(Protocol):
    """Where the folder's files come from when it is a copy (a bucket: server/storage/mirror.py)."""

    async def refresh(self, name: str) -> None:
        """Brings model ``name``'s folder up to date before a load request; ClipperdError if it cannot."""


class ModelRepository:
    def __init__(
        self,
        root: Path,
        mode: ControlMode = ControlMode.NONE,
        startup_models: list[str] | None = None,
        cache: ResponseCache | None = None,
        source: RepositorySource | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.root = root.resolve()
        self.source = source  # a bucket's copy: a load request first brings the model's folder up to date
        self.cache = cache  # the response cache the versions that enable it share
        self.limiter = limiter  # the rate limiter every version's instances share (--rate-limit)
        self.mode = mode
        self.startup_models = startup_models or []
        self._models: dict[str, ModelEntry] = {}
        self._expected: set[str] = set()  # models asked to be loaded: readiness waits for them
        self._closing: set[asyncio.Task[None]] = set()
        self._calls = RepositoryCaller(self)  # models calling models (BLS) through this repository

    # -- the request path -------------------------------------------------------------------

    def get(self, name: str, version: str = "") -> ModelVersion:
        """The version that serves ``name``/``version`` now, or the error a client should see."""
        entry = self._models.get(name)
        if entry is None:
            raise NotFound(f"Request for unknown model: {shown(name)} is not found")
        if not version:
            if entry.latest is None:
                raise Unavailable(f"model {shown(name)} is not ready")
            return entry.latest
        number = _parse_version(version)
        served = entry.serving.get(number)
        if served is not None:
            return served
        status = entry.status.get(number)
        if status is None:
            raise NotFound(f"Request for unknown model: {shown(name)} version {number} is not found")
        raise Unavailable(f"model {shown(name)} version {number} is not ready ({status.state.value})")

    def __contains__(self, name: str) -> bool:
        """Whether ``name`` is a model here (loaded, loading or failed to load): what makes a name
        a model rather than an application (server/core/resolver.py)."""
        return name in self._models

    def step_model(self, name: str, version: str) -> ModelVersion:
        """An ensemble step's model: the version serving it now (see schedulers/ensemble.py)."""
        return self.get(name, version)

    def step_config(self, name: str) -> mc.ModelConfig:
        """A model's config as its folder holds it now, loaded or not (an ensemble's step)."""
        return load_model_config(self._model_folder(name), registry.autocomplete)

    def is_ready(self, name: str, version: str = "") -> bool:
        """Serving, and for a remote model, with at least one healthy endpoint."""
        try:
            served = self.get(name, version)
        except ClipperdError:
            return False
        scheduler = served.scheduler
        return not isinstance(scheduler, RemoteEndpoints) or scheduler.ready

    def all_ready(self) -> bool:
        """Strict readiness: every model the server was asked to load is serving."""
        return all(self._models.get(n) is not None and self._models[n].latest is not None for n in self._expected)

    def versions(self, name: str) -> list[ModelVersion]:
        entry = self._models.get(name)
        return [entry.serving[v] for v in sorted(entry.serving)] if entry else []

    def loaded(self) -> list[ModelVersion]:
        return [mv for entry in self._models.values() for mv in entry.serving.values()]

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Loads what the control mode says to load at start; failures are logged, not fatal."""
        if self.mode is ControlMode.EXPLICIT:
            names = self.scan() if "*" in self.startup_models else self.startup_models
        else:
            names = self.scan()
        self._expected.update(names)  # even those whose folder is missing: readiness waits for them
        await asyncio.gather(*(self._load_quietly(n) for n in names))

    async def stop(self) -> None:
        """Unloads everything after in-flight requests finish."""
        await asyncio.gather(*(self.unload(n, by_api=False) for n in list(self._models)), return_exceptions=True)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def poll(self) -> None:
        """One rescan in poll mode: loads new models, reloads changed ones, unloads removed ones."""
        present = set(self.scan())
        for name in list(self._models):
            if name not in present and self._models[name].serving:
                await self._load_quietly_unload(name)
        for name in sorted(present):
            entry = self._models.get(name)
            if entry is None or entry.fingerprint != fingerprint(self.root / name):
                await self._load_quietly(name)

    # -- the management API -------------------------------------------------------------------

    async def load(self, name: str, *, by_api: bool = True) -> None:
        """Loads or reloads ``name``; raises why it could not be served."""
        if by_api:
            self._check_api_allowed()
            if self.source is not None:
                self._check_name(name)
                await self.source.refresh(name)
        folder = self._model_folder(name)
        step_failed = await self._load_steps(name, {name}) if by_api else None
        entry = self._models.setdefault(name, ModelEntry(name))
        self._expected.add(name)
        async with entry.lock:
            await self._load_entry(entry, folder)
        if step_failed is not None:  # the ensemble itself is sound: say which step cannot serve
            raise step_failed

    async def _load_steps(self, name: str, seen: set[str]) -> ClipperdError | None:
        """Loading an ensemble loads the step models not serving yet, as Triton does (and theirs,
        for an ensemble of ensembles); the first step that fails, as the error to report once
        the ensemble's own checks have passed. Unknown steps are left to those checks."""
        try:
            config = await asyncio.to_thread(self.step_config, name)
        except ClipperdError:
            return None
        if not is_ensemble(config):
            return None
        failed: ClipperdError | None = None
        for step in sorted({s.model_name for s in config.ensemble_scheduling.step} - seen):
            seen.add(step)
            entry = self._models.get(step)
            if (entry is not None and entry.latest is not None) or not (self.root / step).is_dir():
                continue
            failed = failed or await self._load_steps(step, seen)
            try:
                await self.load(step, by_api=False)
            except ClipperdError as error:
                reason = f"ensemble {shown(name)}: step model {shown(step)} failed to load: {error.message}"
                failed = failed or Unavailable(reason)
        return failed

    async def unload(self, name: str, *, by_api: bool = True) -> None:
        if by_api:
            self._check_api_allowed()
            self._check_name(name)
        entry = self._models.get(name)
        if entry is None:
            if by_api and not (self.root / name).is_dir():
                raise NotFound(f"model {shown(name)} is not in the model repository")
            return
        self._expected.discard(name)
        async with entry.lock:
            old = entry.serving
            entry.publish({})
            for version in old:
                entry.status[version] = VersionStatus(State.UNLOADING)
            await asyncio.gather(*(mv.close() for mv in old.values()))
            for version in old:
                entry.status[version] = VersionStatus(State.UNAVAILABLE, "unloaded")

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        rows: list[IndexEntry] = []
        names = sorted(set(self.scan()) | set(self._models))
        for name in names:
            entry = self._models.get(name)
            if entry is None or (not entry.status and not entry.reason):
                if not ready_only:
                    rows.append(IndexEntry(name, "", "", ""))
                continue
            if not entry.status:
                if not ready_only:
                    rows.append(IndexEntry(name, "", State.UNAVAILABLE.value, entry.reason))
                continue
            for version in sorted(entry.status):
                status = entry.status[version]
                if ready_only and status.state is not State.READY:
                    continue
                rows.append(IndexEntry(name, str(version), status.state.value, status.reason))
        return rows

    def scan(self) -> list[str]:
        """Model folders in the repository (hidden folders and links leading outside it skipped)."""
        if not self.root.is_dir():
            return []
        names = []
        for child in sorted(self.root.iterdir()):
            if child.name.startswith(".") or not child.is_dir():
                continue
            if not child.resolve().is_relative_to(self.root):
                log.warning("skipping %s: it leads outside the model repository", child.name)
                continue
            names.append(child.name)
        return names

    # -- internals ----------------------------------------------------------------------------

    async def _load_entry(self, entry: ModelEntry, folder: Path) -> None:
        entry.fingerprint = fingerprint(folder)
        try:  # off the loop: a remote model's config is completed by asking its endpoints
            config = await asyncio.to_thread(load_model_config, folder, registry.autocomplete)
        except ClipperdError as error:
            self._mark_failed(entry, str(error))
            raise
        self._check_keys(entry, config)
        available = version_folders(folder)
        wanted, missing = select_versions(config.version_policy, list(available))
        for version in missing:
            entry.status[version] = VersionStatus(State.UNAVAILABLE, "version folder not found")
        if not wanted:
            self._mark_failed(entry, f"model '{entry.name}' has no version folder to serve")
            raise Unavailable(entry.reason)
        entry.reason = ""
        await self._swap_in(entry, config, {v: available[v] for v in wanted})

    def _check_keys(self, entry: ModelEntry, config: mc.ModelConfig) -> None:
        """Keys clipperd does not implement: refused where ignoring them changes answers, else warned."""
        refused = config_keys.refusal(config)
        if refused:
            self._mark_failed(entry, refused)
            raise Unimplemented(refused)
        warned = config_keys.warning(config)
        if warned:
            log.warning("%s", warned)

    async def _swap_in(self, entry: ModelEntry, config: mc.ModelConfig, wanted: dict[int, Path]) -> None:
        for version in wanted:
            if version not in entry.serving:
                entry.status[version] = VersionStatus(State.LOADING)
        versions = list(wanted)
        results = await asyncio.gather(
            *(load_model_version(config, v, wanted[v], self, self.cache, self._calls, self.limiter) for v in versions),
            return_exceptions=True,
        )
        serving: dict[int, ModelVersion] = {}
        errors: list[ClipperdError] = []
        for version, result in zip(versions, results, strict=True):
            if isinstance(result, ModelVersion):
                serving[version] = result
                entry.status[version] = VersionStatus(State.READY)
            else:
                errors.append(self._version_failed(entry, version, result, serving))
        if errors:  # a version that failed to load leaves the ones serving in place
            for version, mv in entry.serving.items():
                serving.setdefault(version, mv)
        retired = [mv for v, mv in entry.serving.items() if serving.get(v) is not mv]
        entry.publish(serving)
        for mv in retired:
            if mv.version not in serving:
                entry.status[mv.version] = VersionStatus(State.UNLOADING)
            self._close_later(entry, mv)
        if errors:
            raise errors[0]

    def _version_failed(
        self, entry: ModelEntry, version: int, error: BaseException, serving: dict[int, ModelVersion]
    ) -> ClipperdError:
        message = str(error) if isinstance(error, ClipperdError) else f"{type(error).__name__}: {error}"
        old = entry.serving.get(version)
        if old is not None:  # a failed reload keeps the version that was answering
            serving[version] = old
            entry.status[version] = VersionStatus(State.READY, f"reload failed: {message}")
        else:
            entry.status[version] = VersionStatus(State.UNAVAILABLE, message)
        log.error("model '%s' version %d: %s", entry.name, version, message)
        return error if isinstance(error, ClipperdError) else Unavailable(message)

    def _close_later(self, entry: ModelEntry, mv: ModelVersion) -> None:
        async def close() -> None:
            await mv.close()
            if mv.version not in entry.serving:
                entry.status[mv.version] = VersionStatus(State.UNAVAILABLE, "unloaded")

        task = asyncio.get_running_loop().create_task(close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _mark_failed(self, entry: ModelEntry, reason: str) -> None:
        entry.reason = reason
        for version, status in entry.status.items():
            if version in entry.serving:  # still answering: say why the new files were not taken
                status.reason = f"reload failed: {reason}"
            else:
                status.state, status.reason = State.UNAVAILABLE, reason
        log.error("%s", reason)

    async def _load_quietly(self, name: str) -> None:
        try:
            await self.load(name, by_api=False)
        except ClipperdError as error:
            log.error("model %s not loaded: %s", shown(name), error.message)

    async def _load_quietly_unload(self, name: str) -> None:
        try:
            await self.unload(name, by_api=False)
        except ClipperdError as error:
            log.error("model %s not unloaded: %s", shown(name), error.message)

    def _check_api_allowed(self) -> None:
        if self.mode is not ControlMode.EXPLICIT:
            raise Unavailable(
                f"explicit model load / unload is not allowed: the model control mode is "
                f"'{self.mode.value}' (start the server with --model-control-mode=explicit)"
            )

    def _check_name(self, name: str) -> None:
        bad = (
            not name
            or len(name) > MAX_NAME_LENGTH
            or name in (".", "..")
            or name.startswith(".")
            or any(c in name for c in "/\\\x00")
        )
        if bad:
            raise InvalidArgument(f"invalid model name {shown(name)}")

    def _model_folder(self, name: str) -> Path:
        self._check_name(name)
        folder = self.root / name
        if not folder.is_dir():
            raise NotFound(f"model {shown(name)} is not in the model repository")
        if not folder.resolve().is_relative_to(self.root):
            raise InvalidArgument(f"model {shown(name)} leads outside the model repository")
        return folder


def _parse_version(version: str) -> int:
    if not version.isdigit() or not version.isascii() or len(version) > 19:
        raise InvalidArgument(f"invalid model version {version[:32]!r}: a positive integer is expected")
    return int(version)


def fingerprint(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """What changed in a model folder, for poll mode: every file's path, size and mtime."""
    rows = []
    try:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                stat = path.stat()
                rows.append((str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
    except OSError:
        return ()
    return tuple(rows)
