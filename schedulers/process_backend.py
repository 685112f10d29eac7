"""An instance in a worker process of its own (``execution_mode: process``): Clipper's model
containers, Triton's Python-backend stubs.

A model whose execute holds the GIL between its steps (numpy code, most Python models) shares
it with the server's event loop when it runs on a thread; a model with conflicting dependencies
cannot share the server's interpreter at all; a model that crashes, hangs or leaks must not take
the server with it. A worker has an interpreter to itself (``worker_python`` picks another one,
e.g. a virtual environment's), gets its batches' tensors through shared memory
(schedulers/shm_arena.py) and its orders over a socket (schedulers/worker_main.py).

The server side is a proxy backend on the instance's thread, so the scheduler, batching and
output checks are the same for every execution mode. A worker that dies (``kill -9``, a crash in
native code, ``os._exit``), runs out of its ``worker_memory_mb`` or takes longer than
``worker_timeout_s`` over a batch fails that batch alone with an error that says so; the next
batch starts a fresh worker."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from backends.base import Backend, InstanceContext, Tensors
from backends.common.errors import ClipperdError, ModelExecutionError
from backends.common.parameters import Parameters
from backends.common.tensors import Identified
from schedulers.shm_arena import Arena, arena_size_for, size_of

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent  # the worker imports clipperd's modules from here
_START_TIMEOUT_S = 300.0  # a worker imports its framework and loads the model before answering
_STOP_TIMEOUT_S = 10.0
_MAX_MEMORY_MB = 2**40  # 1 EiB: the limit in bytes stays within setrlimit's range
_MAX_TIMEOUT_S = 1e6  # 11 days: within what a poll() timeout takes


@dataclass(frozen=True)
class WorkerSettings:
    """The config ``parameters`` of worker processes (see docs/workers.md)."""

    python: str = sys.executable  # worker_python: the interpreter that runs the worker
    timeout_s: float = 0.0  # worker_timeout_s: longest batch before the worker is killed (0: none)
    memory_mb: int = 0  # worker_memory_mb: the worker's data-segment limit (0: none)

    @classmethod
    def parse(cls, params: Parameters, model_dir: Path) -> WorkerSettings:
        timeout = params.number("worker_timeout_s", 0.0, low=0, high=_MAX_TIMEOUT_S)
        memory = params.integer("worker_memory_mb", 0, high=_MAX_MEMORY_MB)
        python = params.text("worker_python")
        if python:
            path = Path(python) if Path(python).is_absolute() else model_dir / python
            if not os.access(path, os.X_OK):
                raise params.fail("worker_python", "must name an executable file")
            python = str(path)
        return cls(python or sys.executable, timeout, memory)


class ProcessBackend(Backend):
    """Proxy for a backend of class ``backend_class`` that lives in a worker process."""

    def __init__(self, context: InstanceContext, backend_class: type[Backend], settings: WorkerSettings) -> None:
        super().__init__(context)
        self._backend_class = backend_class
        self._settings = settings
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._arena: Arena | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def load(self) -> None:
        ours, theirs = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        command = [self._settings.python, "-m", "schedulers.worker_main", str(theirs.fileno())]
        try:
            self._process = subprocess.Popen(command, pass_fds=(theirs.fileno(),), cwd=ROOT, env=env)
        finally:
            theirs.close()
        self._conn = Connection(ours.detach())
        arena = self._arena = Arena(arena_size_for(0, 0))
        init = ("init", self._backend_class, self.context, arena.path, arena.size, self._settings.memory_mb)
        try:
            self._conn.send(init)
            status, payload = self._receive(_START_TIMEOUT_S, "start")
        except (OSError, EOFError) as exc:
            raise self._died(exc) from exc
        finally:
            arena.unlink()  # mapped by both now (or never will be): no name left in /dev/shm
        if status != "ready":
            self.unload()
            raise payload
        self.per_request = bool(payload)

    def unload(self) -> None:
        process, conn, arena = self._process, self._conn, self._arena
        self._process = self._conn = self._arena = None
        if conn is not None:
            with contextlib.suppress(OSError, EOFError):
                if process is not None and process.poll() is None:
                    conn.send(("stop",))
                    if conn.poll(_STOP_TIMEOUT_S):
                        conn.recv()  # the worker's unload is done
            conn.close()
        if process is not None:
            _reap(process)
        if arena is not None:
            arena.close()

    # --- batches --------------------------------------------------------------------------------

    def execute(self, inputs: Tensors) -> Tensors:
        outputs: Tensors = self._round_trip("batch", [inputs])
        return outputs

    def execute_requests(self, parts: Sequence[Tensors]) -> list[Tensors | ClipperdError]:
        # each request's id and parameters (Identified) travel beside its tensors in the arena
        identities = [(p.request_id, dict(p.parameters)) if isinstance(p, Identified) else None for p in parts]
        results: list[Tensors | ClipperdError] = self._round_trip("requests", list(parts), identities)
        return results

    def _round_trip(self, kind: str, parts: list[Tensors], identities: list[Any] | None = None) -> Any:
        if self._process is None or self._process.poll() is not None:
            self.unload()
            self.load()  # the last worker is gone: a fresh one serves this batch
        assert self._conn is not None
        assert self._arena is not None
        try:
            self._fit(sum(size_of(p) for p in parts))
            entries, end = self._place(parts)
            self._conn.send((kind, entries[0] if kind == "batch" else entries, end, identities))
            status, payload, extra = self._receive(self._settings.timeout_s or None, "batch")
        except (OSError, EOFError) as exc:
            raise self._died(exc) from exc
        if status != "ok":
            if extra:  # the worker is ending (out of memory): the next batch gets a new one
                self.unload()
            raise payload
        if extra:
            self._fit(extra // 2 + 1)  # outputs came pickled: room for them next time
        if kind == "batch":
            return self._arena.read(payload, copy=True)
        return [r if isinstance(r, BaseException) else self._arena.read(r, copy=True) for r in payload]

    def _place(self, parts: list[Tensors]) -> tuple[list[Any], int]:
        assert self._arena is not None
        entries, end = [], 0
        for part in parts:
            written = self._arena.write(part, end)
            assert written is not None, "the arena was sized for the batch"
            entries.append(written[0])
            end = written[1]
        return entries, end

    def _fit(self, needed: int) -> None:
        """A bigger arena when the batch (and as much again of outputs) would not fit."""
        assert self._arena is not None
        assert self._conn is not None
        size = arena_size_for(needed, self._arena.size)
        if size == self._arena.size:
            return
        arena = Arena(size)
        try:
            self._conn.send(("arena", arena.path, arena.size))
            self._receive(_START_TIMEOUT_S, "arena")
        finally:
            arena.unlink()
        self._arena.close()
        self._arena = arena

    def _receive(self, timeout: float | None, what: str) -> Any:
        assert self._conn is not None
        if timeout is not None and not self._conn.poll(timeout):
            raise self._hung(timeout, what)
        return self._conn.recv()

    def _hung(self, timeout: float, what: str) -> ModelExecutionError:
        log.error("instance %s: no answer to its %s in %.1fs: worker killed", self.context.instance_name, what, timeout)
        self._kill()
        return ModelExecutionError(
            f"model '{self.context.model_name}' failed: instance {self.context.instance_name} did not finish its "
            f"{what} within {timeout:g}s (worker_timeout_s); its worker was stopped and the next batch starts a new one"
        )

    def _died(self, cause: BaseException) -> ModelExecutionError:
        code = None
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self._process.wait(5)  # its socket closed as it exited: reap it for the code
        log.error("instance %s: its worker died (exit code %s)", self.context.instance_name, code)
        self._kill()
        return ModelExecutionError(
            f"model '{self.context.model_name}' failed: instance {self.context.instance_name}'s worker "
            f"died (exit code {code}); the next batch starts a new one"
        )

    def _kill(self) -> None:
        """Ends the worker at once (it is hung or dead: no unload), so the next batch starts anew."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
        self.unload()


def _reap(process: subprocess.Popen[bytes]) -> None:
    try:
        process.wait(_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
