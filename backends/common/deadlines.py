"""Many deadlines on one event-loop timer. A timer made and cancelled for every call costs a few
microseconds each (an uvloop TimerHandle and a libuv timer); calls on one connection mostly
share a timeout, so the earliest deadline is mostly the oldest call's and the one timer rarely
moves. When it fires, every item whose deadline has come is expired, and the timer moves on to
the earliest deadline left."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
SLACK_S = 0.001  # the loop's timers round to milliseconds: a deadline this close has come


class Deadlines(Generic[T]):
    """Items with a deadline (loop time); ``expire(item)`` for each whose deadline comes while
    it is still held. Holding and dropping an item are O(1)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, expire: Callable[[T], None]) -> None:
        self._loop = loop
        self._expire = expire
        self._items: dict[T, float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def __len__(self) -> int:
        return len(self._items)

    def hold(self, item: T, deadline: float) -> None:
        self._items[item] = deadline
        if deadline < self._timer_at:
            self._arm(deadline)

    def drop(self, item: T) -> None:
        """No longer timed (answered, failed, cancelled); the timer stays where it is."""
        self._items.pop(item, None)

    def close(self) -> None:
        """Nothing expires any more."""
        self._items.clear()
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, math.inf

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = self._loop.call_at(when, self._fire), when

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        now = self._loop.time() + SLACK_S
        due = [item for item, at in self._items.items() if at <= now]
        for item in due:
            del self._items[item]
        if self._items:
            self._arm(min(self._items.values()))
        for item in due:  # after re-arming: an expiry may hold or drop other items
            self._expire(item)
