"""BLS (Triton's "business logic scripting"): a model calling another model of the repository
while it executes, e.g. ``pb_utils.InferenceRequest(...).exec()`` in a Triton Python model.

Backends never import the server: the server hands each instance a ``BlsLink`` (its
``ModelCaller``, which runs the call through the target's own validation, cache, batcher and
statistics, and the event loop it runs on) in ``InstanceContext.bls``. While a model executes,
its link is the current one (``executing``), so that requests built inside ``execute`` find it.

Where the calling model executes matters:

- on the event loop, as tasks (the default for Triton models that build ``InferenceRequest``,
  backends/python_backend.py): ``async_exec()`` in an ``async def execute`` awaits the call
  without leaving the loop, and a plain ``def execute`` runs in a greenlet whose ``exec()``
  suspends it while the loop runs the call (backends/common/greenlets.py): no thread hand-off
  at all. A synchronous ``exec()`` on the loop outside such a greenlet (a model run as a plain
  callback there) would wait for itself: refused with an error telling the user to set
  ``execution_mode`` thread (or to use ``async_exec``).
- on its own thread (``execution_mode: thread``): ``exec()`` hands the call to the server's
  loop and waits; ``async_exec()`` in an ``async def execute`` awaits it from the instance
  thread's own event loop. For models that compute for long between their calls.
- in a worker process (``execution_mode: process``): no link crosses the process boundary, so
  the call is refused with an error saying so.

Deadlocks (a model calling itself with every instance busy, A -> B -> A): a call waits at most
its deadline (the request's ``timeout``, else the calling model's ``bls_timeout_us`` parameter,
else ``DEFAULT_TIMEOUT_S``) and then answers DEADLINE_EXCEEDED; the abandoned request leaves the
target's queue. A model with one instance that calls itself is refused at once: it would
always wait for itself.

Streamed answers (``exec(decoupled=True)``): the server's caller also has ``stream_model``
(``AnswerStreamer``); ``stream`` wraps it in a ``Streamed``, pulled one answer at a time."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

from backends.common import greenlets
from backends.common.errors import (
    ClipperdError,
    DeadlineExceeded,
    FailedPrecondition,
    ModelExecutionError,
    Unimplemented,
)
from backends.common.streaming import Answer
from backends.common.tensors import Tensors

DEFAULT_TIMEOUT_S = 60.0
TIMEOUT_PARAMETER = "bls_timeout_us"


@dataclass(frozen=True, slots=True)
class ModelCall:
    """One BLS request: the target, its inputs, the outputs wanted (empty: all)."""

    model: str
    version: int  # -1 (or 0): the version the server picks, as for a client
    inputs: Tensors
    outputs: Sequence[str] = ()
    parameters: Mapping[str, Any] = field(default_factory=dict)  # sequence_id/_start/_end included
    request_id: str = ""


class ModelCaller(Protocol):
    """What the server provides: one request to a model of the repository, through the same
    entry point clients' requests take; raises the ClipperdError a client would get."""

    async def call_model(self, call: ModelCall) -> Tensors: ...


@dataclass(frozen=True)
class BlsLink:
    """An instance's way to the other models: its caller, the server's loop, its deadline."""

    caller: ModelCaller
    loop: asyncio.AbstractEventLoop
    model: str  # the calling model
    instances: int  # how many instances the calling model has
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __reduce__(self) -> Any:
        # a worker process gets no link: nothing there can reach the server's loop
        return (_no_link, ())


def _no_link() -> None:
    return None


_CURRENT: ContextVar[BlsLink | None] = ContextVar("clipperd_bls_link", default=None)


@contextlib.contextmanager
def executing(link: BlsLink | None) -> Iterator[None]:
    """Makes ``link`` the current one while a model's ``execute`` runs."""
    token = _CURRENT.set(link)
    opened: list[Streamed] = []
    streams = _OPEN.set(opened)
    try:
        yield
    finally:
        _OPEN.reset(streams)
        _CURRENT.reset(token)
        for stream in opened:  # a streamed call left unfinished: its target stops
            stream.cancel()


def current(model: str) -> BlsLink:
    """The executing model's link, or why there is none."""
    link = _CURRENT.get()
    if link is None:
        raise FailedPrecondition(
            f"BLS call to model '{model}': no model of this server is executing here (BLS works "
            "inside execute, and not in execution_mode process: set execution_mode thread)"
        )
    return link


def _check(link: BlsLink, call: ModelCall) -> None:
    if _on_loop(link.loop):
        raise FailedPrecondition(
            f"model '{link.model}' calls model '{call.model}' (BLS) while it executes on the event "
            "loop, which would wait for itself: set the model's parameter execution_mode to "
            '"thread" (parameters { key: "execution_mode" value: { string_value: "thread" } }), '
            "or await async_exec() in an async def execute"
        )
    _check_self(link, call)


def _check_self(link: BlsLink, call: ModelCall) -> None:
    if call.model == link.model and link.instances <= 1:
        raise FailedPrecondition(
            f"model '{link.model}' calls itself (BLS) but has one instance, busy running the "
            "caller: the call could never run (give it more instances)"
        )


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether this thread is the one running ``loop`` (a model executing on the event loop)."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:  # no loop runs on this thread: an instance thread
        return False


def _deadline(link: BlsLink, timeout_us: int) -> float:
    return timeout_us / 1e6 if timeout_us > 0 else link.timeout_s


def _late(link: BlsLink, call: ModelCall, seconds: float) -> DeadlineExceeded:
    return DeadlineExceeded(
        f"BLS call from model '{link.model}' to model '{call.model}' got no answer within "
        f"{seconds:g} s (a model waiting for itself, or a cycle of models calling each other, "
        "never answers; raise bls_timeout_us if the target is just slow)"
    )


def call_sync(call: ModelCall, timeout_us: int = 0) -> Tensors:
    """``exec()``: runs ``call`` on the server's loop and waits: suspended in its greenlet (a
    model executing on the loop, backends/common/greenlets.py), or on the instance's thread."""
    link = current(call.model)
    seconds = _deadline(link, timeout_us)
    if greenlets.hosted() and _on_loop(link.loop):
        _check_self(link, call)
        return greenlets.wait(_bounded(link, call, seconds))
    _check(link, call)
    future = asyncio.run_coroutine_threadsafe(link.caller.call_model(call), link.loop)
    try:
        return future.result(seconds)
    except TimeoutError:
        future.cancel()  # the target's queue drops the request
        raise _late(link, call, seconds) from None


async def _bounded(link: BlsLink, call: ModelCall, seconds: float) -> Tensors:
    """The call on the loop, cancelled at its deadline (asyncio.timeout: no task of its own)."""
    try:
        async with asyncio.timeout(seconds):
            return await link.caller.call_model(call)
    except TimeoutError:
        raise _late(link, call, seconds) from None


async def call_async(call: ModelCall, timeout_us: int = 0) -> Tensors:
    """``async_exec()``: awaits ``call``, on the server's loop itself (a model executing as
    tasks there) or from the instance thread's own loop."""
    link = current(call.model)
    seconds = _deadline(link, timeout_us)
    if _on_loop(link.loop):
        _check_self(link, call)
        return await _bounded(link, call, seconds)
    _check(link, call)
    future = asyncio.run_coroutine_threadsafe(link.caller.call_model(call), link.loop)
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), seconds)
    except TimeoutError:
        raise _late(link, call, seconds) from None


class AnswerStreamer(Protocol):
    """What a server with streamed answers adds to its ``ModelCaller``: the target's answers
    (``Answer``: outputs, or an error, and the final flag), the last one final; closing the
    iterator cancels the target's request."""

    def stream_model(self, call: ModelCall) -> AsyncIterator[Answer]: ...


class Streamed:
    """``exec(decoupled=True)`` / ``await async_exec(decoupled=True)``: the target's answers,
    pulled one at a time from the server's loop (nothing is fetched ahead: a model that reads
    slowly slows the target down through its own bounded answer queue). ``next`` (on the
    instance's thread) or ``anext`` (in an ``async def execute``) waits at most the call's
    deadline for each answer; a failure (unknown model, a deadline) is a final error answer.
    ``cancel`` (also on ``close``, on leaving the ``execute`` that made it, and when the object
    is dropped) closes the target's stream, which cancels its request."""

    def __init__(self, link: BlsLink, call: ModelCall, answers: AsyncIterator[Answer], seconds: float) -> None:
        self._link, self._call, self._seconds = link, call, seconds
        self._answers: Any = answers  # an async generator: has aclose
        self._pending: asyncio.Future[Answer] | concurrent.futures.Future[Answer] | None = None
        self.done = False
        opened = _OPEN.get()
        if opened is not None:
            opened.append(self)

    def next_sync(self) -> Answer | None:
        """The next answer, waited for on the instance's thread; None once the final came."""
        if self.done:
            return None
        if greenlets.hosted() and _on_loop(self._link.loop):
            return greenlets.wait(self.next_async())
        if _on_loop(self._link.loop):
            raise FailedPrecondition(
                f"model '{self._link.model}' iterates a streamed BLS call with a plain for on the event loop, "
                "which would wait for itself: use async for"
            )
        future = asyncio.run_coroutine_threadsafe(self._answers.__anext__(), self._link.loop)
        self._pending = future
        try:
            return self._taken(future.result(self._seconds))
        except BaseException as error:
            return self._failed(error)
        finally:
            self._pending = None

    async def next_async(self) -> Answer | None:
        """The next answer, awaited (on the server's loop, or from the instance thread's loop)."""
        if self.done:
            return None
        try:
            if _on_loop(self._link.loop):
                task = asyncio.ensure_future(self._answers.__anext__())
                self._pending = task
                answer = await asyncio.wait_for(task, self._seconds)
            else:
                future = asyncio.run_coroutine_threadsafe(self._answers.__anext__(), self._link.loop)
                self._pending = future
                answer = await asyncio.wait_for(asyncio.wrap_future(future), self._seconds)
            return self._taken(answer)
        except Exception as error:
            return self._failed(error)
        finally:
            self._pending = None

    def _taken(self, answer: Answer) -> Answer:
        if answer.final:
            self.done = True
        return answer

    def _failed(self, error: BaseException) -> Answer:
        self.cancel()
        if isinstance(error, StopAsyncIteration):  # the stream ended without a final flag
            return Answer({}, None, final=True)
        if isinstance(error, TimeoutError | concurrent.futures.TimeoutError):
            error = _late(self._link, self._call, self._seconds)
        if not isinstance(error, Exception):
            raise error  # KeyboardInterrupt, the caller's own cancellation
        return Answer({}, error if isinstance(error, ClipperdError) else _wrapped(error), final=True)

    def cancel(self) -> None:
        """Stops the stream: the target's request is cancelled (its ``is_cancelled()`` turns
        true), from any thread, without waiting."""
        if self.done and self._answers is None:
            return
        self.done = True
        answers, self._answers = self._answers, None
        pending = self._pending
        if answers is None:
            return
        loop = self._link.loop
        if loop.is_closed():
            return
        if pending is not None and not pending.done():
            # the pending step owns the generator: cancelling it closes the generator
            loop.call_soon_threadsafe(pending.cancel)
        else:
            loop.call_soon_threadsafe(lambda: loop.create_task(answers.aclose()))

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.cancel()


_OPEN: ContextVar[list[Streamed] | None] = ContextVar("clipperd_bls_streams", default=None)


def _wrapped(error: Exception) -> ClipperdError:
    return ModelExecutionError(f"{type(error).__name__}: {error}")


def stream(call: ModelCall, timeout_us: int = 0) -> Streamed:
    """``exec(decoupled=True)``: the answers of ``call``'s target, one by one (``Streamed``)."""
    link = current(call.model)
    _check_self(link, call)
    streamer = getattr(link.caller, "stream_model", None)
    if streamer is None:
        raise Unimplemented(f"BLS call to model '{call.model}' with decoupled=True: this server cannot stream answers")
    # the generator is made here and first runs on the server's loop, in next_sync/next_async
    return Streamed(link, call, streamer(call), _deadline(link, timeout_us))


def error_text(error: BaseException) -> str:
    """A ClipperdError's message as a client would read it; anything else with its type."""
    if isinstance(error, ClipperdError):
        return str(error)
    return f"{type(error).__name__}: {error}"
