"""Synchronous model code that waits for coroutines without leaving the event loop.

A Triton Python model with a plain ``def execute`` that calls other models (``exec()``) would
otherwise need a thread of its own: four thread hand-offs per request (loop -> model thread ->
loop -> target -> loop -> model thread -> loop). Run instead inside a greenlet on the loop's
thread (``run``), its ``exec()`` suspends the greenlet (``wait``): the task that hosts it awaits
the call on the loop and switches back with the answer. The model's own code still runs on the
loop, as every Python model does by default, so a model that computes for long should ask for
``execution_mode: thread``.

This is the pattern SQLAlchemy's asyncio extension uses (greenlet is the maintained library for
it); a greenlet carries the context variables of the task that started it."""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import greenlet

T = TypeVar("T")


class _Hosted(greenlet.greenlet):
    """A greenlet whose waits the hosting task serves (``run``)."""


async def run(function: Callable[..., T], *args: Any) -> T:
    """Calls ``function(*args)`` in a greenlet of its own; each ``wait(awaitable)`` inside it
    is awaited here, on the loop, and its result (or exception) handed back."""
    child = _Hosted(function)
    child.gr_context = contextvars.copy_context()  # a new greenlet would start with an empty one
    step = child.switch(*args)
    while not child.dead:
        try:
            value = await step
        except BaseException as error:  # the awaited call's failure, or this task's cancellation
            step = child.throw(error)
        else:
            step = child.switch(value)
    return step  # type: ignore[no-any-return]  # the function's return value


def hosted() -> bool:
    """Whether this code runs inside ``run`` (so that ``wait`` may suspend it)."""
    return isinstance(greenlet.getcurrent(), _Hosted)


def wait(awaitable: Awaitable[T]) -> T:
    """Suspends the hosted code until the hosting task has awaited ``awaitable``."""
    current = greenlet.getcurrent()
    if not isinstance(current, _Hosted):
        if inspect.iscoroutine(awaitable):
            awaitable.close()  # never awaited: closed now, not warned about later
        raise RuntimeError("greenlets.wait outside greenlets.run")
    parent = current.parent
    assert parent is not None  # the hosting task's greenlet
    return parent.switch(awaitable)  # type: ignore[no-any-return]
