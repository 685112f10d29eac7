"""Clipper's prediction cache, Triton's response cache: a model version's outputs for one exact
request, answered again without running the model.

One ``ResponseCache`` serves every model (Triton's ``local`` cache, ``--cache-config
local,size=<bytes>``): least recently used entries go first once the stored bytes would pass the
size. A key holds the request's input bytes themselves (with names, data types and shapes), so
two requests that differ in one byte never share an entry: Python's dict hashes the key and then
compares it exactly. Each loaded model version draws a generation of its own: a reload, even with
new files under the same version number, never meets the entries of the load before, and closing
a version purges them. Outputs are stored as read-only copies, so neither the model nor a later
request can change what the next hit answers.

Used on the event loop thread only (lookups and inserts never wait), hence no locks."""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from backends.base import Tensors
from backends.common.config import is_ensemble
from backends.common.tensors import serialize_bytes
from backends.proto import model_config_pb2 as mc

log = logging.getLogger(__name__)

# bytes charged to each entry on top of its key's and outputs' payloads: the Python objects that
# hold them (dict slot, tuples, array headers), so that many tiny entries still fill the cache
ENTRY_OVERHEAD = 256

# one input as the key holds it: name, wire data type, shape, the raw bytes
KeyPart = tuple[str, str, tuple[int, ...], bytes]
# (generation, model name, version, input parts sorted by name)
CacheKey = tuple[int, str, int, tuple[KeyPart, ...]]
# one input as a request carries it: name, wire data type, shape, the array
RequestInput = tuple[str, str, Sequence[int], np.ndarray]


@dataclass(frozen=True, slots=True)
class _Entry:
    outputs: Tensors  # read-only copies
    size: int  # bytes charged


def input_bytes(datatype: str, data: np.ndarray) -> bytes:
    """An input's bytes as on the wire: row-major elements, BYTES elements length-prefixed."""
    if datatype == "BYTES":
        return serialize_bytes(data)
    return data.tobytes()


def _array_size(array: np.ndarray) -> int:
    if array.dtype == object:  # BYTES: the elements' own bytes, plus a reference each
        return sum(len(v) for v in array.reshape(-1)) + 8 * array.size
    return int(array.nbytes)


def entry_size(key: CacheKey, outputs: Tensors) -> int:
    """Bytes an entry is charged: its key's input bytes and names, its outputs, the overhead."""
    key_bytes = len(key[1]) + sum(len(n) + len(t) + 8 * len(shape) + len(raw) for n, t, shape, raw in key[3])
    output_bytes = sum(len(name) + _array_size(array) for name, array in outputs.items())
    return key_bytes + output_bytes + ENTRY_OVERHEAD


def _frozen_copy(array: np.ndarray) -> np.ndarray:
    copy = np.array(array, copy=True, order="C")  # BYTES: the (immutable) elements are shared
    copy.setflags(write=False)
    return copy


class ResponseCache:
    """A least-recently-used map from request keys to outputs, bounded by bytes."""

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes < 1:
            raise ValueError(f"the cache size must be at least 1 byte, got {capacity_bytes}")
        self.capacity = capacity_bytes
        self.size = 0  # bytes charged to the entries held now
        self.evictions = 0  # entries dropped to make room (not purges, not replacements)
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()
        self._generations = itertools.count(1)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: CacheKey) -> bool:
        return key in self._entries

    def new_generation(self) -> int:
        """A number no other loaded model version has: part of each of its keys."""
        return next(self._generations)

    def lookup(self, key: CacheKey) -> Tensors | None:
        """The stored outputs (read-only), and the entry becomes the most recently used."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry.outputs

    def insert(self, key: CacheKey, outputs: Tensors) -> bool:
        """Stores copies of ``outputs`` under ``key``, evicting the least recently used entries
        as needed; an entry larger than the whole cache is not stored (False)."""
        size = entry_size(key, outputs)
        if size > self.capacity:
            return False
        old = self._entries.pop(key, None)
        if old is not None:
            self.size -= old.size
        while self.size + size > self.capacity:
            _, evicted = self._entries.popitem(last=False)
            self.size -= evicted.size
            self.evictions += 1
        self._entries[key] = _Entry({name: _frozen_copy(a) for name, a in outputs.items()}, size)
        self.size += size
        return True

    def purge(self, generation: int) -> int:
        """Drops every entry of one loaded model version; returns how many."""
        keys = [k for k in self._entries if k[0] == generation]
        for key in keys:
            self.size -= self._entries.pop(key).size
        return len(keys)

    def keys(self) -> list[CacheKey]:
        """The keys, least recently used first."""
        return list(self._entries)


class VersionCache:
    """One loaded model version's share of the cache: its keys carry its generation, and closing
    it (unload, or retirement by a reload) purges its entries and refuses late inserts."""

    def __init__(self, cache: ResponseCache, model: str, version: int) -> None:
        self.cache = cache
        self.model = model
        self.version = version
        self.generation = cache.new_generation()
        self.closed = False

    def key(self, inputs: Iterable[RequestInput]) -> CacheKey:
        parts = sorted((name, dtype, tuple(shape), input_bytes(dtype, data)) for name, dtype, shape, data in inputs)
        return (self.generation, self.model, self.version, tuple(parts))

    def lookup(self, key: CacheKey) -> Tensors | None:
        return self.cache.lookup(key)

    def insert(self, key: CacheKey, outputs: Tensors) -> bool:
        return not self.closed and self.cache.insert(key, outputs)

    def close(self) -> None:
        self.closed = True
        self.cache.purge(self.generation)


def _uncacheable(config: mc.ModelConfig) -> str:
    """Why a model cannot use the response cache (Triton's limits), or ""."""
    if config.HasField("sequence_batching"):
        return "the sequence batcher does not use the response cache"
    if config.model_transaction_policy.decoupled:
        return "decoupled models do not use the response cache"
    if is_ensemble(config):
        return "top-level ensemble requests do not use the response cache (its steps may)"
    return ""


def version_cache(config: mc.ModelConfig, version: int, cache: ResponseCache | None) -> VersionCache | None:
    """The cache handle of a loading model version, or None when it does not cache: its config
    does not enable ``response_cache``, the server has no cache (a warning, as Triton's), or the
    model is of a kind Triton does not cache (a warning)."""
    if not config.response_cache.enable:
        return None
    if cache is None:
        log.warning(
            "model '%s' enables response_cache, but the server has no cache (start it with "
            "--cache-config local,size=<bytes>): its responses are not cached",
            config.name,
        )
        return None
    reason = _uncacheable(config)
    if reason:
        log.warning("model '%s' enables response_cache, but %s: its responses are not cached", config.name, reason)
        return None
    return VersionCache(cache, config.name, version)
