"""The cache folder a bucket repository is copied to, and kept in step with the bucket.

``<cache dir>/<one folder per URL>/`` holds ``repository/`` (what the repository manager serves),
``staging/`` (copies in progress: same file system, so that a finished copy lands by rename) and
``objects.json`` (each cached key's size and ETag: a warm start downloads only what changed). A
lock file keeps a second server off the same folder. What is taken, when, is ``listing.plan``'s
rule; a version folder and a new model folder land whole, by one rename, so that a scan of the
folder never sees half a copy. Nothing is ever written to the bucket."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

from backends.common.config import PBTXT, YAML_NAMES, parse_pbtxt, parse_yaml
from backends.common.errors import ClipperdError, Unavailable
from server.storage.listing import MODEL_FILES, ObjectInfo, Plan, Unit, describe, plan, units
from server.storage.location import BucketLocation
from server.storage.s3 import CONNECTIONS, S3Bucket, StorageError

log = logging.getLogger(__name__)

STATE_FILE = "objects.json"
MAX_CONFIG_BYTES = 1 << 20  # a model configuration larger than this is not read (not a config)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/clipperd``, else ``~/.cache/clipperd``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "clipperd"


class BucketMirror:
    def __init__(
        self,
        location: BucketLocation,
        cache_dir: Path,
        *,
        settle_s: float,
        max_objects: int,
        max_bytes: int,
    ) -> None:
        self.location = location
        self.folder = cache_dir / location.folder_name()
        self.root = self.folder / "repository"
        self.settle_s = settle_s
        self.max_objects = max_objects
        self.max_bytes = max_bytes
        self.cached: dict[str, ObjectInfo] = {}  # what repository/ holds, as the bucket listed it
        self._previous: dict[str, ObjectInfo] | None = None  # the last scan's listing
        self._bucket: S3Bucket | None = None
        self._lock = asyncio.Lock()  # one scan at a time: poll and load requests take turns
        self._lock_file: IO[bytes] | None = None
        self._stopping = threading.Event()
        self._count = threading.Lock()
        self._reported: set[tuple[str, str]] = set()  # (what, why) already logged: each said once
        self.downloaded = [0, 0]  # files and bytes downloaded since start (a warm start: only what changed)

    # -- what the server calls ------------------------------------------------------------------

    async def start(self) -> None:
        """The first copy: StorageError (one line) when the bucket cannot be read. Lists the bucket;
        where anything differs from the cache, waits ``settle_s`` and lists again, then copies
        what was the same in both listings."""
        await asyncio.to_thread(self._open)
        async with self._lock:
            first = await self._list("")
            steps = plan(None, first, self.cached)
            if steps.waiting:
                await asyncio.sleep(self.settle_s)
                second = await self._list("")
                steps = plan(first, second, self.cached)
                first = second
            self._previous = first
            await asyncio.to_thread(self._apply, steps)
        log.info(
            "model repository %s copied to %s: %d objects, %d downloaded (%d bytes), %d unit(s) still changing",
            self.location.url,
            self.root,
            len(self.cached),
            *self.downloaded,
            len(steps.waiting),
        )

    async def sync(self) -> None:
        """One scan (poll mode): what settled since the last scan lands in the cache."""
        async with self._lock:
            current = await self._list("")
            steps = plan(self._previous, current, self.cached)
            self._previous = current
            await asyncio.to_thread(self._apply, steps)

    async def refresh(self, name: str) -> None:
        """Before a load request (explicit mode): lists the model's folder; where it differs from
        the last scan, waits ``settle_s`` and lists it again. ``name`` is a checked model name."""
        under = name + "/"
        async with self._lock:
            try:
                previous = _under(self._previous, under)
                current = await self._list(under)
                cached = {k: v for k, v in self.cached.items() if k.startswith(under)}
                steps = plan(previous, current, cached)
                if steps.waiting:
                    await asyncio.sleep(self.settle_s)
                    previous, current = current, await self._list(under)
                    steps = plan(previous, current, cached)
            except StorageError as error:
                raise Unavailable(f"model '{name}': the bucket cannot be read: {error}") from None
            self._previous = {k: v for k, v in (self._previous or {}).items() if not k.startswith(under)} | current
            await asyncio.to_thread(self._apply, steps)

    def close(self) -> None:
        """Stops copies in progress (between chunks) and releases the cache folder."""
        self._stopping.set()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # -- listing --------------------------------------------------------------------------------

    def _require_bucket(self) -> S3Bucket:
        if self._bucket is None:
            self._bucket = S3Bucket(self.location)
        return self._bucket

    async def _list(self, under: str) -> dict[str, ObjectInfo]:
        bucket = self._require_bucket()
        listing = await asyncio.to_thread(bucket.list, under, self.max_objects, self._skipped)
        total = sum(info.size for info in listing.values())
        if total > self.max_bytes:
            raise StorageError(
                f"{self.location.url} holds {total} bytes, more than --repository-max-bytes ({self.max_bytes}): "
                "refusing to copy it"
            )
        return listing

    def _skipped(self, key: str, why: str) -> None:
        self._report(f"object {key[:200]!r} in the bucket is not copied", why)

    def _report(self, what: str, why: str, level: int = logging.WARNING) -> None:
        if (what, why) not in self._reported:
            self._reported.add((what, why))
            log.log(level, "%s: %s", what, why)

    # -- the cache folder -----------------------------------------------------------------------

    def _open(self) -> None:
        """Takes the cache folder (a lock file), clears what a crash left, reads objects.json and
        checks the files it names are there."""
        try:
            (self.folder / "staging").mkdir(parents=True, exist_ok=True)
            self.root.mkdir(exist_ok=True)
            lock = (self.folder / "lock").open("ab")
        except OSError as error:
            raise StorageError(f"cache folder {self.folder} cannot be used: {error}") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise StorageError(
                f"cache folder {self.folder} is in use by another clipperd: give each server its own "
                "--repository-cache-dir"
            ) from None
        self._lock_file = lock
        self._require_bucket()  # boto3 reads its models and credentials here, off the event loop
        for debris in (self.folder / "staging").iterdir():
            shutil.rmtree(debris, ignore_errors=True)
        self.cached = self._read_state()
        _prune(self.root, {self.root / key for key in self.cached})

    def _read_state(self) -> dict[str, ObjectInfo]:
        try:
            data = json.loads((self.folder / STATE_FILE).read_text())
            objects = {str(k): ObjectInfo(int(v[0]), str(v[1])) for k, v in data["objects"].items()}
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return {}  # a cold cache, or one not written whole: copied again
        return {k: v for k, v in objects.items() if _has(self.root / k, v.size)}

    def _write_state(self) -> None:
        data = {"url": self.location.url, "objects": {k: [v.size, v.etag] for k, v in sorted(self.cached.items())}}
        staged = self.folder / (STATE_FILE + ".new")
        staged.write_text(json.dumps(data))
        os.replace(staged, self.folder / STATE_FILE)

    # -- applying a plan (on a worker thread) ---------------------------------------------------

    def _apply(self, steps: Plan) -> None:
        for unit in sorted(steps.waiting):
            self._report(
                describe(unit), "changing in the bucket: not copied until two scans list it the same", logging.INFO
            )
        if not steps.take and not steps.drop:
            return
        try:
            work = Path(tempfile.mkdtemp(dir=self.folder / "staging"))
            try:
                staged = self._stage(steps.take, work)
                for model in sorted(steps.models()):
                    self._apply_model(model, steps, staged, work)
            finally:
                self._write_state()  # what landed, even when a later step failed
                shutil.rmtree(work, ignore_errors=True)
        except OSError as error:  # the cache folder's disk: full, read-only, removed
            raise StorageError(f"cache folder {self.folder}: {type(error).__name__}: {error}") from None

    def _stage(self, take: dict[Unit, dict[str, ObjectInfo]], work: Path) -> set[Unit]:
        """Every file of the units to take, under ``work`` as in the repository: linked from the
        cache where it holds the same object, downloaded otherwise. The units staged whole."""
        jobs: list[tuple[Unit, str, ObjectInfo]] = []
        for unit, objects in take.items():
            for key, info in objects.items():
                (work / key).parent.mkdir(parents=True, exist_ok=True)
                if self.cached.get(key) == info and _link(self.root / key, work / key):
                    continue
                jobs.append((unit, key, info))
        failed: set[Unit] = set()
        bucket = self._require_bucket()
        with ThreadPoolExecutor(CONNECTIONS, thread_name_prefix="s3-copy") as pool:
            futures = [(unit, key, pool.submit(self._download, bucket, key, info, work)) for unit, key, info in jobs]
            for unit, key, future in futures:
                error = future.result()
                if error is not None:
                    failed.add(unit)
                    self._report(f"{describe(unit)}: {key[:200]!r} not copied", error)
        return set(take) - failed

    def _download(self, bucket: S3Bucket, key: str, info: ObjectInfo, work: Path) -> str | None:
        try:
            bucket.download(key, info, work / key, self._stopping.is_set)
        except StorageError as error:
            return str(error)
        except OSError as error:
            return f"{type(error).__name__}: {error}"
        with self._count:
            self.downloaded[0] += 1
            self.downloaded[1] += info.size
        return None

    def _apply_model(self, model: str, steps: Plan, staged: set[Unit], work: Path) -> None:
        own: Unit = (model, MODEL_FILES)
        taken = {u for u in steps.take if u[0] == model and u in staged}
        if own in taken:
            problem = config_problem(work / model)
            if problem is not None:
                self._report(describe(own), f"not copied: {problem}", logging.ERROR)
                taken.discard(own)
        own_ready = own in taken or (own in units(self.cached) and own not in steps.drop and own not in steps.take)
        versions = {u for u in taken if u[1]} if own_ready else set()
        target = self.root / model
        if not target.exists():
            if own in taken:
                self._land_new_model(model, steps, versions, work)
            return
        if own in taken:
            self._replace_own_files(model, steps.take[own], work)
        for unit in sorted(versions):
            _swap(work / model / unit[1], target / unit[1], work)
            self._record(unit, steps.take[unit])
        for unit in sorted(u for u in steps.drop if u[0] == model):
            if unit[1]:
                _swap(None, target / unit[1], work)
            else:
                self._replace_own_files(model, {}, work)
            self._record(unit, {})
        if not any(k.startswith(model + "/") for k in self.cached):
            _swap(None, target, work)

    def _land_new_model(self, model: str, steps: Plan, versions: set[Unit], work: Path) -> None:
        """A model new to the cache lands whole: its own files and settled versions, one rename."""
        folder = work / model
        for child in folder.iterdir():
            if child.is_dir() and (model, child.name) in steps.take and (model, child.name) not in versions:
                shutil.rmtree(child)  # a version that did not stage whole, or waits
        os.rename(folder, self.root / model)
        for unit in [(model, MODEL_FILES), *versions]:
            self._record(unit, steps.take[unit])

    def _replace_own_files(self, model: str, objects: dict[str, ObjectInfo], work: Path) -> None:
        """A model's own files, each replaced by one rename; those the bucket no longer has removed."""
        for key in objects:
            (self.root / key).parent.mkdir(parents=True, exist_ok=True)
            os.replace(work / key, self.root / key)
        old = units(self.cached).get((model, MODEL_FILES), {})
        for key in old.keys() - objects.keys():
            with contextlib.suppress(FileNotFoundError):
                (self.root / key).unlink()
        self._record((model, MODEL_FILES), objects)

    def _record(self, unit: Unit, objects: dict[str, ObjectInfo]) -> None:
        for key in units(self.cached).get(unit, {}):
            del self.cached[key]
        self.cached.update(objects)


def config_problem(model_dir: Path) -> str | None:
    """Why the model configuration in ``model_dir`` cannot be taken (None: it parses)."""
    found = [model_dir / n for n in (PBTXT, *YAML_NAMES) if (model_dir / n).is_file()]
    if len(found) != 1:
        return "no model configuration (config.pbtxt)" if not found else "several model configurations"
    path = found[0]
    if path.stat().st_size > MAX_CONFIG_BYTES:
        return f"{path.name} is larger than {MAX_CONFIG_BYTES} bytes"
    source = f"{model_dir.name}/{path.name}"
    try:
        text = path.read_text()
        (parse_pbtxt if path.name == PBTXT else parse_yaml)(text, source)
    except (ClipperdError, UnicodeDecodeError) as error:
        return str(error)
    return None


def _under(listing: dict[str, ObjectInfo] | None, under: str) -> dict[str, ObjectInfo] | None:
    return None if listing is None else {k: v for k, v in listing.items() if k.startswith(under)}


def _has(path: Path, size: int) -> bool:
    try:
        return path.is_file() and path.stat().st_size == size
    except OSError:
        return False


def _link(source: Path, dest: Path) -> bool:
    """A file the cache holds already, into a staged folder: a hard link (no copy of the bytes)."""
    try:
        os.link(source, dest)
    except OSError:
        try:
            shutil.copy2(source, dest)
        except OSError:
            return False
    return True


def _swap(new: Path | None, target: Path, work: Path) -> None:
    """``target`` replaced by ``new`` (or removed) with renames: the old one is moved aside first,
    so the path holds either the whole old folder or the whole new one."""
    if target.exists():
        aside = Path(tempfile.mkdtemp(dir=work, prefix="old-"))
        os.rename(target, aside / "x")
    if new is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(new, target)


def _prune(root: Path, keep: set[Path]) -> None:
    """Removes from ``root`` what ``keep`` does not name (a crash's leftovers), keeping hidden
    top-level entries (the server's own, as .clipperd/) and Python's __pycache__ folders."""
    for path in _walk(root):
        if path.is_dir():
            with contextlib.suppress(OSError):
                path.rmdir()  # only when empty
        elif path not in keep:
            path.unlink(missing_ok=True)


def _walk(root: Path) -> Iterator[Path]:
    """Files and folders under ``root``, children before their folder."""
    for child in sorted(root.iterdir()):
        if child.name == "__pycache__" or (child.parent == root and child.name.startswith(".")):
            continue
        if child.is_dir() and not child.is_symlink():
            yield from _walk(child)
        yield child
