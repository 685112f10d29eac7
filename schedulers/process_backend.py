"""An instance in a process of its own (``execution_mode: process``).

A model whose execute holds the GIL between its steps (numpy code, most Python models) shares
it with the server's event loop when it runs on a thread: every step of the model waits for the
loop to let go, and the loop for the model. In a child process the model has an interpreter and
a GIL to itself, as Triton's Python backend stubs do. The server side is a proxy backend on the
instance's thread: it gathers the batch as usual, sends the inputs down a pipe, waits (without
the GIL) for the outputs and splits them, so the scheduler, batching and checks are the same
for every execution mode.

The child is started with ``spawn`` (forking a process that runs gRPC and event-loop threads is
unsafe), creates and loads the real backend, then executes batches until told to stop, when it
unloads it. A child that dies (a model calling ``os._exit``, a crash in native code) fails the
batch it was running; the next batch starts a fresh child, so the instance keeps serving."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import pickle
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from backends.base import Backend, InstanceContext, Tensors
from backends.common.errors import ModelExecutionError

log = logging.getLogger(__name__)

Factory = Callable[[], Backend]
_STOP = "stop"
_START_TIMEOUT_S = 300.0  # a child imports its framework and loads the model before answering


class ProcessBackend(Backend):
    """Proxy for a backend that lives in a child process."""

    def __init__(self, context: InstanceContext, factory: Factory) -> None:
        super().__init__(context)
        self._factory = factory
        self._process: Any = None
        self._conn: Connection | None = None

    def load(self) -> None:
        spawn = multiprocessing.get_context("spawn")
        parent, child = spawn.Pipe()
        process = spawn.Process(
            target=_child_main, args=(child, self._factory), name=f"instance-{self.context.instance_name}", daemon=True
        )
        process.start()
        child.close()
        self._process, self._conn = process, parent
        status, payload = self._receive(_START_TIMEOUT_S)
        if status != "ready":
            self.unload()
            raise payload

    def execute(self, inputs: Tensors) -> Tensors:
        if self._process is None or not self._process.is_alive():
            self.unload()
            self.load()  # the last child died: a fresh one serves this batch
        assert self._conn is not None
        try:
            self._conn.send(inputs)
            status, payload = self._receive(None)
        except (OSError, EOFError) as exc:
            raise self._died(exc) from exc
        if status != "ok":
            raise payload
        return payload  # type: ignore[no-any-return]

    def unload(self) -> None:
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if process is None or conn is None:
            return
        try:
            if process.is_alive():
                conn.send(_STOP)
                conn.recv()  # the child's unload is done
        except (OSError, EOFError):
            pass  # it is gone already
        conn.close()
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join()

    def _receive(self, timeout: float | None) -> tuple[str, Any]:
        assert self._conn is not None
        if timeout is not None and not self._conn.poll(timeout):
            raise ModelExecutionError(f"instance {self.context.instance_name}: its process did not start in time")
        message: tuple[str, Any] = self._conn.recv()
        return message

    def _died(self, cause: BaseException) -> ModelExecutionError:
        code = None
        if self._process is not None:
            self._process.join(5)  # its pipe closed as it exited: reap it for the exit code
            code = self._process.exitcode
        log.error("instance %s: its process died (exit code %s)", self.context.instance_name, code)
        return ModelExecutionError(
            f"model '{self.context.model_name}' failed: instance {self.context.instance_name}'s process "
            f"died (exit code {code}); the next batch starts a new one"
        )


def _child_main(conn: Connection, factory: Factory) -> None:
    """The child: load, execute batches, unload when told to."""
    # Ctrl-C reaches the whole process group: the server decides when its instances stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        backend = factory()
        backend.load()
    except BaseException as exc:
        conn.send(("error", _portable(exc)))
        return
    conn.send(("ready", None))
    try:
        while True:
            message = conn.recv()
            if message == _STOP:
                break
            try:
                reply: tuple[str, Any] = ("ok", backend.execute(message))
            except BaseException as exc:  # a model's sys.exit() fails its batch, not the child
                reply = ("error", _portable(exc))
            conn.send(reply)
    except EOFError:  # the server went away
        return
    finally:
        try:
            backend.unload()
        finally:
            with contextlib.suppress(OSError):
                conn.send(("unloaded", None))


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a ModelExecutionError with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return ModelExecutionError(f"{type(exc).__name__}: {exc}")
