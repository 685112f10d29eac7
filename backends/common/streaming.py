"""One request's streamed answers, from a decoupled model to whoever reads them (a transport, a
BLS caller): a bounded channel that a model fills from its instance's thread (``put`` blocks
while the channel is full) or from the event loop (``put_async`` awaits), and that the event
loop drains (``get``). Back-pressure: a slow reader leaves at most ``capacity`` answers here, and
the model's next send waits, which stops the producer. ``cancel`` (the reader went away) drops
what is queued, wakes a waiting producer (its send then returns without queueing), makes
``cancelled`` true (Triton's ``is_cancelled()``) and runs the hooks that stop the producer (a
generator's task cancelled, so the generator is closed)."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from backends.common.errors import ClipperdError, FailedPrecondition
from backends.common.tensors import Tensors

#: answers one request's stream holds before the model's next send waits for the reader
ANSWERS_PER_REQUEST = 4


@dataclass(slots=True)
class Answer:
    """One answer of a decoupled model: outputs (``{}``: none, e.g. the flags-only final
    answer), or the error that answers the request; ``final``: the request's last answer."""

    outputs: Tensors
    error: ClipperdError | None = None
    final: bool = False


class StreamClosed(FailedPrecondition):
    """A send after the final answer (Triton: the response sender is closed)."""


class AnswerStream:
    """The answers of one request (see the module's doc). Made on the event loop."""

    def __init__(self, capacity: int = ANSWERS_PER_REQUEST) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._capacity = max(1, capacity)
        self._items: deque[Answer] = deque()
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # producers on threads wait here
        self._room_waiters: deque[asyncio.Future[None]] = deque()  # producers on the loop
        self._reader: asyncio.Future[None] | None = None  # set while the reader waits
        self._hooks: list[Callable[[], None]] = []
        self.cancelled = False
        self.finished = False  # the final answer was put

    # --- the producer's side ---------------------------------------------------------------

    def put(self, answer: Answer) -> None:
        """Queues ``answer``, blocking while the stream is full (from a thread; on the event
        loop itself it never blocks: the loop is the reader). Dropped once cancelled."""
        on_loop = threading.get_ident() == self._loop_thread
        with self._lock:
            self._check_open()
            while len(self._items) >= self._capacity and not self.cancelled and not on_loop:
                self._room.wait()
            wake = self._append(answer)
        if wake:
            if on_loop:
                self._wake_reader()
            else:
                self._loop.call_soon_threadsafe(self._wake_reader)

    async def put_async(self, answer: Answer) -> None:
        """Queues ``answer`` from the event loop, awaiting room while the stream is full."""
        while True:
            with self._lock:
                self._check_open()
                if len(self._items) < self._capacity or self.cancelled:
                    wake = self._append(answer)
                    break
                room = self._loop.create_future()
                self._room_waiters.append(room)
            await room
        if wake:
            self._wake_reader()

    def fail(self, error: ClipperdError) -> None:
        """Ends the stream with ``error`` (on the loop; beyond the bound: it is the last answer)."""
        with self._lock:
            if self.finished:
                return
            wake = self._append(Answer({}, error, final=True))
        if wake:
            self._wake_reader()

    def spawn(self, make: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Runs ``make()`` as a task on the event loop (from any thread); cancelling the stream
        cancels the task."""

        def start() -> None:
            task = self._loop.create_task(make())
            self.on_cancel(functools.partial(_cancel_task, task))

        if threading.get_ident() == self._loop_thread:
            start()
        else:
            self._loop.call_soon_threadsafe(start)

    def on_cancel(self, hook: Callable[[], None]) -> None:
        """``hook()`` runs on the loop when the reader cancels (at once if it has)."""
        if self.cancelled:
            hook()
        else:
            self._hooks.append(hook)

    def _check_open(self) -> None:
        if self.finished:
            raise StreamClosed("the request's final answer was already sent: its stream is closed")

    def _append(self, answer: Answer) -> bool:
        """Under the lock: queues (unless cancelled); True when the reader must be woken."""
        self.finished = self.finished or answer.final
        if self.cancelled:
            return False
        self._items.append(answer)
        return self._reader is not None

    # --- the reader's side (the event loop) ------------------------------------------------

    async def get(self) -> Answer:
        """The next answer, waiting for one."""
        while True:
            with self._lock:
                if self._items:
                    answer = self._items.popleft()
                    self._make_room()
                    return answer
                reader = self._reader = self._loop.create_future()
            try:
                await reader
            finally:
                self._reader = None

    def cancel(self) -> None:
        """The reader went away: producers stop (see the module's doc)."""
        with self._lock:
            if self.cancelled:
                return
            self.cancelled = True
            self._items.clear()
            self._room.notify_all()
            waiters = list(self._room_waiters)
            self._room_waiters.clear()
        for room in waiters:
            if not room.done():
                room.set_result(None)
        hooks, self._hooks = self._hooks, []
        for hook in hooks:
            hook()

    def _make_room(self) -> None:
        """Under the lock: one answer left, so one waiting producer may go on."""
        self._room.notify()
        while self._room_waiters:
            room = self._room_waiters.popleft()
            if not room.done():
                room.set_result(None)
                return

    def _wake_reader(self) -> None:
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)


def _cancel_task(task: asyncio.Task[None]) -> None:
    task.cancel()
