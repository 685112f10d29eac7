"""The rule that keeps partial uploads out of the served repository, with no marker file.

A bucket's listing (each key's size and ETag, keys relative to the repository's prefix) is cut
into *units*: each version folder of a model (``<model>/<version>/...``), and each model's own
files (``<model>/config.pbtxt``, label files, any non-version folder). A unit is taken into the
cache only once it is *settled*: listed the same (keys, sizes, ETags) by two consecutive scans.
A unit already in the cache as listed needs nothing. A unit that the cache holds and two
consecutive scans do not list is removed. A model's versions wait for its own files (its config)
to be settled; the mirror also waits for the config to parse (see ``mirror.py``).

Pure functions, no I/O: the unit tests drive them with listings made by hand."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from backends.common.versions import folder_version

MAX_SEGMENT_BYTES = 255  # a file name's limit on Linux file systems


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    etag: str


Listing = Mapping[str, ObjectInfo]  # key relative to the repository prefix -> what the bucket holds
Unit = tuple[str, str]  # (model, version folder); the version is "" for the model's own files
MODEL_FILES = ""


def key_problem(key: str) -> str | None:
    """Why a key cannot become a file of the cache folder (None: it can). A bucket is input: a
    key must not climb out of the folder or hide among the server's own files."""
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts) or "\\" in key or "\x00" in key:
        return "an empty, '.' or '..' path segment"
    if parts[0].startswith("."):
        return "a hidden model folder"
    if any(len(p.encode()) > MAX_SEGMENT_BYTES for p in parts):
        return f"a path segment longer than {MAX_SEGMENT_BYTES} bytes"
    return None


def unit_of(key: str) -> Unit | None:
    """The unit a key belongs to; None for a file at the repository's root (no model has it)."""
    model, _, rest = key.partition("/")
    if not rest:
        return None
    head, _, tail = rest.partition("/")
    if tail and folder_version(head) is not None:
        return (model, head)
    return (model, MODEL_FILES)


def units(listing: Listing) -> dict[Unit, dict[str, ObjectInfo]]:
    grouped: dict[Unit, dict[str, ObjectInfo]] = {}
    for key, info in listing.items():
        unit = unit_of(key)
        if unit is not None:
            grouped.setdefault(unit, {})[key] = info
    return grouped


@dataclass
class Plan:
    take: dict[Unit, dict[str, ObjectInfo]] = field(default_factory=dict)  # settled, not in the cache as listed
    drop: set[Unit] = field(default_factory=set)  # in the cache, absent from two consecutive listings
    waiting: set[Unit] = field(default_factory=set)  # still changing: looked at again next scan

    def models(self) -> set[str]:
        return {m for m, _ in (*self.take, *self.drop)}


def plan(previous: Listing | None, current: Listing, cached: Listing) -> Plan:
    """What to change in the cache after a scan that listed ``current``, the scan before it having
    listed ``previous`` (None: there was none), the cache holding ``cached``."""
    now, have = units(current), units(cached)
    before = units(previous) if previous is not None else None
    result = Plan()
    for unit, objects in now.items():
        if have.get(unit) == objects:
            continue
        if before is not None and before.get(unit) == objects:
            result.take[unit] = objects
        else:
            result.waiting.add(unit)
    for unit in have.keys() - now.keys():
        if before is not None and unit not in before:
            result.drop.add(unit)
        else:
            result.waiting.add(unit)
    _versions_wait_for_their_model(result, now)
    return result


def _versions_wait_for_their_model(result: Plan, now: Mapping[Unit, object]) -> None:
    """A version is taken only with its model's own files settled (in the cache as listed, or
    taken now): a new version may need the config uploaded with it."""
    for unit in list(result.take):
        model, version = unit
        own = (model, MODEL_FILES)
        if version and (own in result.waiting or own not in now):
            del result.take[unit]
            result.waiting.add(unit)


def describe(unit: Unit) -> str:
    model, version = unit
    return f"model '{model}' version {version}" if version else f"model '{model}' (its own files)"
