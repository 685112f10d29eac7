"""preserve_ordering: answers leave in dispatch order, across every instance and device of a
model version, even when a later batch finishes first."""

from __future__ import annotations

from collections.abc import Callable


class ResponseOrder:
    """Hands out a ticket per dispatched batch and releases deliveries in ticket order (or at
    once, when the model does not preserve ordering)."""

    def __init__(self, ordered: bool) -> None:
        self.ordered = ordered
        self._issued = 0
        self._released = 0
        self._finished: dict[int, Callable[[], None]] = {}

    def ticket(self) -> int:
        self._issued += 1
        return self._issued - 1

    def release(self, ticket: int, deliver: Callable[[], None]) -> None:
        """``deliver`` runs once every batch with an earlier ticket has been delivered."""
        if not self.ordered:
            deliver()
            return
        self._finished[ticket] = deliver
        while self._released in self._finished:
            self._finished.pop(self._released)()
            self._released += 1
