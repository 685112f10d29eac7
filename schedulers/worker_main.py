"""A worker process: one model instance, as ``python -m schedulers.worker_main FD``.

The server starts it (with its own interpreter, or the model's ``worker_python``) and talks to
it over the socket FD: pickled control messages, tensors in a shared-memory arena
(schedulers/shm_arena.py). Messages from the server:

  ("init", backend_class, context, arena_path, arena_size, memory_mb)  -> ("ready", per_request)
  ("arena", path, size)                                                -> ("mapped", None)
  ("batch", entries, end) / ("requests", [entries...], end)           -> ("ok", outputs, needed)
  ("stop",)                                                            -> ("unloaded", None)

A failure answers ("error", exception, exiting). A MemoryError (the ``worker_memory_mb`` limit)
ends the worker after that answer (exiting is true): a fresh one starts with the next batch,
with its memory back."""

from __future__ import annotations

import contextlib
import os
import pickle
import resource
import signal
import sys
from multiprocessing.connection import Connection
from typing import Any

from backends.base import Backend, Tensors
from backends.common.errors import ModelExecutionError
from backends.common.tensors import Identified
from schedulers.shm_arena import Arena, Entry


class Worker:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.backend: Backend | None = None
        self.arena: Arena | None = None

    def start(self) -> bool:
        _, backend_class, context, path, size, memory_mb = self.conn.recv()
        if memory_mb:
            limit = memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
        try:
            self.arena = Arena(size, path)
            self.backend = backend_class(context)
            self.backend.load()
        except BaseException as exc:
            self.conn.send(("error", portable(exc)))
            return False
        self.conn.send(("ready", self.backend.per_request))
        return True

    def serve(self) -> None:
        while True:
            message = self.conn.recv()
            kind = message[0]
            if kind == "stop":
                return
            if kind == "arena":
                self._remap(message[1], message[2])
                continue
            try:
                reply: tuple[str, Any, Any] = ("ok", *self._execute(kind, message[1], message[2], message[3]))
            except BaseException as exc:  # sys.exit() in a model fails its batch, not the worker
                if _out_of_memory(exc):
                    text = f"{exc}; the worker ran out of memory (worker_memory_mb) and restarts"
                    self.conn.send(("error", ModelExecutionError(text), True))
                    raise MemoryError from exc  # ends the worker: its memory goes back with it
                reply = ("error", portable(exc), False)
            self.conn.send(reply)

    def _execute(self, kind: str, entries: Any, end: int, identities: Any) -> tuple[Any, int]:
        assert self.backend is not None
        assert self.arena is not None
        if kind == "batch":
            outputs = self.backend.execute(self.arena.read(entries, copy=False))
            placed, needed = self._place([outputs], end)
            return placed[0], needed
        parts = [self.arena.read(e, copy=False) for e in entries]
        if identities is not None:  # a model that reads each request's id and parameters
            parts = [p if i is None else Identified(p, *i) for p, i in zip(parts, identities, strict=True)]
        results = self.backend.execute_requests(parts)
        tensors = [r for r in results if not isinstance(r, BaseException)]
        placed, needed = self._place(tensors, end)
        it = iter(placed)
        return [portable(r) if isinstance(r, BaseException) else next(it) for r in results], needed

    def _place(self, outputs: list[Tensors], start: int) -> tuple[list[list[Entry]], int]:
        """Outputs into the arena after the inputs; pickled instead when they do not fit (the
        server then grows the arena: ``needed`` says to what)."""
        assert self.arena is not None
        placed: list[list[Entry]] = []
        offset = start
        for tensors in outputs:
            if not isinstance(tensors, dict):
                placed.append(tensors)  # not a dict: the server's output check names the problem
                continue
            written = self.arena.write(tensors, offset)
            if written is None:
                needed = offset + sum(a.nbytes + 64 for a in tensors.values())
                return [_inline(t) for t in outputs], needed
            entries, offset = written
            placed.append(entries)
        return placed, 0

    def _remap(self, path: str, size: int) -> None:
        if self.arena is not None:
            self.arena.map.close() if False else None  # views of the last batch are gone by now
            with contextlib.suppress(BufferError):
                self.arena.map.close()
        self.arena = Arena(size, path)
        self.conn.send(("mapped", None))

    def stop(self) -> None:
        if self.backend is not None:
            try:
                self.backend.unload()
            finally:
                with contextlib.suppress(OSError):
                    self.conn.send(("unloaded", None))


def _out_of_memory(exc: BaseException | None) -> bool:
    """A MemoryError, or an error a backend raised because of one."""
    while exc is not None:
        if isinstance(exc, MemoryError):
            return True
        exc = exc.__cause__
    return False


def _inline(tensors: Any) -> Any:
    return [(name, array) for name, array in tensors.items()] if isinstance(tensors, dict) else tensors


def portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a ModelExecutionError with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return ModelExecutionError(f"{type(exc).__name__}: {exc}")


def main() -> int:
    # Ctrl-C reaches the whole process group: the server decides when its workers stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker = Worker(Connection(int(sys.argv[1])))
    try:
        if not worker.start():
            return 1
        worker.serve()
    except (EOFError, OSError):  # the server went away
        worker.stop()
        return 0
    except MemoryError:
        os._exit(3)  # no unload: the memory is gone, and so is this process
    worker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
