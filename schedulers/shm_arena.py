"""Tensors between the server and a worker process through shared memory, not pickles.

An arena is a file in /dev/shm that the server and one worker both map. The server writes a
batch's input arrays into it and sends only their names, types, shapes and offsets down the
pipe; the worker reads them in place (no copy) and writes its outputs after them; the server
copies the outputs out (its answers outlive the next batch, which reuses the arena). BYTES
(object) arrays, which have no flat layout, travel pickled instead.

Nothing is left in /dev/shm: the file's name is removed as soon as the worker has mapped it,
so the memory goes away with the last process that maps it, however either one ends."""

from __future__ import annotations

import contextlib
import mmap
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from backends.base import Tensors

SHM_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
ALIGN = 64


@dataclass(frozen=True)
class Placed:
    """One array in the arena."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int


Entry = Placed | tuple[str, Any]  # an array in the arena, or (name, object array) pickled


class Arena:
    def __init__(self, size: int, path: str | None = None) -> None:
        """A new arena of ``size`` bytes, or (with ``path``) the worker's mapping of one."""
        if path is None:
            fd, path = tempfile.mkstemp(prefix="clipperd-worker-", dir=SHM_DIR)
            try:
                os.ftruncate(fd, size)
                self.map = mmap.mmap(fd, size)
            finally:
                os.close(fd)
        else:
            with open(path, "r+b") as file:
                self.map = mmap.mmap(file.fileno(), size)
        self.path = path
        self.size = size

    def unlink(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def close(self) -> None:
        self.unlink()
        with contextlib.suppress(BufferError):  # a view still alive keeps the mapping until it goes
            self.map.close()

    def write(self, tensors: Tensors, start: int = 0) -> tuple[list[Entry], int] | None:
        """Places ``tensors`` from ``start``; their entries and the end, or None if they do not fit."""
        entries: list[Entry] = []
        offset = start
        view = memoryview(self.map)
        try:
            for name, array in tensors.items():
                if array.dtype.kind == "O":
                    entries.append((name, array))
                    continue
                flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
                offset = _aligned(offset)
                if offset + flat.size > self.size:
                    return None
                view[offset : offset + flat.size] = flat.data
                entries.append(Placed(name, array.dtype.str, tuple(array.shape), offset))
                offset += flat.size
        finally:
            view.release()
        return entries, offset

    def read(self, entries: list[Entry], copy: bool) -> Tensors:
        """The tensors of ``entries``: views of the arena (read-only), or copies."""
        tensors: Tensors = {}
        for entry in entries:
            if not isinstance(entry, Placed):
                tensors[entry[0]] = entry[1]
                continue
            dtype = np.dtype(entry.dtype)
            count = int(np.prod(entry.shape, dtype=np.int64))
            array = np.frombuffer(self.map, dtype, count, entry.offset).reshape(entry.shape)
            if copy:
                array = array.copy()
            else:
                array.flags.writeable = False
            tensors[entry.name] = array
        return tensors


def size_of(tensors: Tensors) -> int:
    """Bytes ``tensors`` take in an arena (object arrays take none)."""
    return sum(_aligned(a.nbytes) for a in tensors.values() if a.dtype.kind != "O")


def _aligned(offset: int) -> int:
    return (offset + ALIGN - 1) // ALIGN * ALIGN


def arena_size_for(needed: int, current: int) -> int:
    """Room for ``needed`` bytes of inputs and as much again of outputs, doubling from ``current``."""
    size = max(current, 1 << 20)
    while size < 2 * needed:
        size *= 2
    return size
