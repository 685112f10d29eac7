"""A model instance and where it executes.

By default an instance has its own execution thread: the backend is created, loaded, run and
unloaded on it (frameworks keep per-thread state: PyTorch's intra-op threads, a CUDA stream).
Work is handed over through a SimpleQueue and results come back with one
``call_soon_threadsafe``: two thread switches per batch, no executor machinery.

A backend that holds the GIL throughout (pure Python) gains nothing from a thread and pays
those switches, plus GIL hand-offs with the event loop under load; such an instance executes on
the event loop itself (it still loads and unloads on a helper thread, so a slow import does not
stall serving).

A backend whose capabilities say ``asynchronous`` (a remote model) executes each job as a task
on the event loop: the job returns a coroutine, and several jobs (batches in flight to a remote
server) may run at once, one per instance.

A thread instance with ``inline_ns`` set may also run a job on the event loop (``run_now``)
while its thread waits for work: the scheduler does so for short requests on an idle device,
where the two switches (and the idle cores waking for them) cost more than the model."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from backends.base import Backend
from backends.common.errors import ModelExecutionError, Unavailable
from schedulers.rate_limiter import Slot

log = logging.getLogger(__name__)

Job = Callable[[Backend], Any]
Done = Callable[[Any, BaseException | None], None]
_STOP = object()


class ModelInstance:
    """Runs one backend instance, one job at a time (the scheduler keeps it so)."""

    def __init__(
        self,
        name: str,
        make_backend: Callable[[], Backend],
        *,
        on_loop: bool = False,
        inline_ns: int = 0,
        asynchronous: bool = False,
        remote: bool = False,
    ) -> None:
        """``inline_ns``: for a thread instance, the longest execution the scheduler may run on
        the event loop instead when the device is idle (0: never). ``asynchronous``: jobs are
        coroutines, run as tasks on the event loop; ``remote``: one loaded on the event loop
        itself (its client binds to the loop)."""
        self.name = name
        self.asynchronous = asynchronous
        self.remote = remote
        self.on_loop = on_loop and not asynchronous
        self.inline_ns = 0 if on_loop else inline_ns
        self._make_backend = make_backend
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"instance-{name}", daemon=True)
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._stopped: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._backend: Backend | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.slot: Slot | None = None  # its rate-limiter resources, when it has any

    async def start(self) -> None:
        """Creates and loads the backend; raises what load raised."""
        if self.asynchronous:
            # a remote backend connects on its own (on this loop); a model file is imported off it
            self._backend = self._load() if self.remote else await asyncio.to_thread(self._load)
            return
        if self.on_loop:
            self._backend = await asyncio.to_thread(self._load)
            return
        self._thread.start()
        await asyncio.wrap_future(self._ready)

    def submit(self, job: Job, loop: asyncio.AbstractEventLoop, done: Done) -> None:
        """Runs ``job(backend)``; ``done(result, error)`` then runs on ``loop`` (at once, before
        returning, for an instance on the loop)."""
        if self.asynchronous:
            assert self._backend is not None
            # done() at the end of the task itself: a done-callback would cost one more turn
            task = loop.create_task(_run_async(job, self._backend, done))
            self._tasks.add(task)  # the loop holds tasks weakly
            task.add_done_callback(self._tasks.discard)
        elif self.on_loop:
            assert self._backend is not None
            done(*_call(job, self._backend))
        else:
            self._jobs.put((job, loop, done))

    async def run_async_now(self, job: Job, done: Done) -> None:
        """An asynchronous instance's job awaited in the caller's task (not a task of its own);
        ``done(result, error)`` as ``submit`` would call it."""
        assert self.asynchronous
        assert self._backend is not None
        await _run_async(job, self._backend, done)

    def run_now(self, job: Job) -> tuple[Any, BaseException | None]:
        """Runs ``job`` at once on the calling thread (the event loop): for an instance on the
        loop, or an idle thread instance with ``inline_ns`` (its thread is waiting for a job, and
        only the loop submits one, so the backend is never used by both at once)."""
        assert self._backend is not None, "run_now is for loaded instances on the loop or with inline_ns"
        return _call(job, self._backend)

    async def stop(self) -> None:
        """Unloads the backend after the jobs already submitted."""
        if self.asynchronous:
            backend, self._backend = self._backend, None
            if backend is not None:
                _unload(backend, self.name)
            return
        if self.on_loop:
            backend, self._backend = self._backend, None
            if backend is not None:
                await asyncio.to_thread(_unload, backend, self.name)
            return
        if not self._thread.is_alive():
            return
        self._jobs.put(_STOP)
        await asyncio.wrap_future(self._stopped)

    def _load(self) -> Backend:
        backend = self._make_backend()
        backend.load()
        return backend

    def _run(self) -> None:
        try:
            backend = self._load()
        except BaseException as exc:  # reported to the loader, which marks the version
            self._ready.set_exception(exc)
            self._stopped.set_result(None)
            return
        if self.inline_ns:
            self._backend = backend
        self._ready.set_result(None)
        try:
            self._serve(backend)
        finally:
            self._backend = None
            _unload(backend, self.name)
            self._stopped.set_result(None)

    def _serve(self, backend: Backend) -> None:
        while True:
            item = self._jobs.get()
            if item is _STOP:
                return
            job, loop, done = item
            result, error = _call(job, backend)
            try:
                loop.call_soon_threadsafe(done, result, error)
            except RuntimeError:  # the loop is closed: the server is gone, nobody waits
                log.debug("instance %s: loop closed before a result was delivered", self.name)


def _call(job: Job, backend: Backend) -> tuple[Any, BaseException | None]:
    try:
        return job(backend), None
    except Exception as exc:  # every failure goes back to the batch's requests
        return None, exc
    except BaseException as exc:  # a model's sys.exit() must end neither its instance nor the server
        if isinstance(exc, KeyboardInterrupt):
            raise
        return None, ModelExecutionError(f"model instance {backend.context.instance_name} failed: {exc!r}")


async def _run_async(job: Job, backend: Backend, done: Done) -> None:
    """An asynchronous job, its result (or error) to its ``done`` as a thread's would be. Only
    the loop's own shutdown cancels these tasks (nobody is left to answer then)."""
    try:
        result = await job(backend)
    except asyncio.CancelledError:
        done(None, Unavailable("the execution was cancelled"))
        raise
    except Exception as exc:  # every failure goes back to the batch's requests
        done(None, exc)
    except BaseException as exc:
        done(None, ModelExecutionError(f"execution failed: {exc!r}"))
        if isinstance(exc, KeyboardInterrupt):
            raise
    else:
        done(result, None)


def _unload(backend: Backend, name: str) -> None:
    try:
        backend.unload()
    except Exception:
        log.exception("instance %s: unload failed", name)
