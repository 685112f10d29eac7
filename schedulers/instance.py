"""A model instance on its own execution thread.

The backend is created, loaded, run and unloaded on that thread (frameworks keep per-thread
state: PyTorch's intra-op threads, a CUDA stream). Work is handed over through a SimpleQueue and
results come back to the event loop with one ``call_soon_threadsafe``: two thread switches per
batch, no executor machinery."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from backends.base import Backend

log = logging.getLogger(__name__)

T = TypeVar("T")
Job = Callable[[Backend], Any]
Done = Callable[[Any, BaseException | None], None]
_STOP = object()


class InstanceWorker:
    """Runs one backend instance; ``submit`` jobs one at a time (the scheduler keeps it so)."""

    def __init__(self, name: str, make_backend: Callable[[], Backend]) -> None:
        self.name = name
        self._make_backend = make_backend
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"instance-{name}", daemon=True)
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._stopped: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._backend: Backend | None = None

    async def start(self) -> None:
        """Creates and loads the backend on the instance thread; raises what load raised."""
        self._thread.start()
        await asyncio.wrap_future(self._ready)

    def submit(self, job: Job, loop: asyncio.AbstractEventLoop, done: Done) -> None:
        """Runs ``job(backend)`` on the instance thread; ``done(result, error)`` runs on ``loop``."""
        self._jobs.put((job, loop, done))

    async def stop(self) -> None:
        """Unloads the backend on its thread after the jobs already submitted."""
        if not self._thread.is_alive():
            return
        self._jobs.put(_STOP)
        await asyncio.wrap_future(self._stopped)

    def _run(self) -> None:
        try:
            backend = self._make_backend()
            backend.load()
        except BaseException as exc:  # noqa: BLE001 - reported to the loader, which marks the version
            self._ready.set_exception(exc)
            self._stopped.set_result(None)
            return
        self._backend = backend
        self._ready.set_result(None)
        self._serve(backend)

    def _serve(self, backend: Backend) -> None:
        while True:
            item = self._jobs.get()
            if item is _STOP:
                break
            job, loop, done = item
            try:
                result, error = job(backend), None
            except BaseException as exc:  # noqa: BLE001 - every failure goes back to its requests
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(done, result, error)
            except RuntimeError:  # the loop is closed: the server is gone, nobody waits
                log.debug("instance %s: loop closed before a result was delivered", self.name)
        try:
            backend.unload()
        except Exception:
            log.exception("instance %s: unload failed", self.name)
        finally:
            self._stopped.set_result(None)
