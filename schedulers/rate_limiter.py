"""Triton's rate limiter (``--rate-limit execution_count``; off by default, as Triton's): a model
instance whose instance group declares ``rate_limiter { resources [...] priority }`` starts an
execution only when the resources it lists are free, across every model of the server.

- A resource is per device (the instance's: ``cpu``, ``cuda:N``) unless ``global: true``.
- The server has, of each resource, the most any loaded instance asks for, unless
  ``--rate-limit-resource name:count[:device]`` says otherwise (without a device: for every
  device, and for the global resource of that name). An instance asking for more than an
  explicit count cannot run: its load fails.
- Waiting instances are served in order of their virtual finish time, Triton's weighting:
  ``priority`` p (0 counts as 1) advances an instance's clock by p per execution, so an instance
  of priority 2 gets half the turns of one of priority 1 when both wait; ties go to the first
  to ask. A waiter whose resources do not fit yet lets the next one that fits go (nothing idles
  while work could run).
- The resources are taken when a batch is handed to the instance and given back when its
  execution ends (schedulers/device_queue.py). An instance without a rate_limiter is never held.

Everything here runs on the event loop; grants are delivered with ``call_soon`` so that a
queue is never re-entered from inside its own dispatch."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from backends.common.errors import InvalidArgument
from backends.proto import model_config_pb2 as mc

GLOBAL = "global"
MODES = ("execution_count", "off")

Key = tuple[str, str]  # (resource name, device name or GLOBAL)


@dataclass(frozen=True)
class ResourceLimit:
    """One ``--rate-limit-resource``: ``device`` None means every device (and the global one)."""

    name: str
    count: int
    device: str | None = None


def parse_resource(text: str) -> ResourceLimit:
    """``name:count[:device]``; a device is a GPU number (``cuda:N``) or ``cpu``."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1].isascii() or not parts[1].isdigit():
        raise ValueError(f"--rate-limit-resource: expected <name>:<count>[:<device>], got {text[:64]!r}")
    device = None
    if len(parts) == 3:
        where = parts[2]
        if where == "cpu":
            device = "cpu"
        elif where.isascii() and where.isdigit():
            device = f"cuda:{int(where)}"
        else:
            raise ValueError(f"--rate-limit-resource {text[:64]!r}: the device must be a GPU number or 'cpu'")
    return ResourceLimit(parts[0], int(parts[1]), device)


@dataclass(eq=False)
class Slot:
    """One rate-limited instance: what it asks for, its priority, its virtual clock."""

    owner: str  # model and instance name, for messages
    asks: dict[Key, int]
    priority: int
    finish: float = 0.0


@dataclass(order=True)
class _Waiter:
    finish: float
    seq: int
    slot: Slot = field(compare=False)
    granted: Callable[[], None] = field(compare=False)


class RateLimiter:
    """The server's resources and the instances waiting for them."""

    def __init__(self, limits: Iterable[ResourceLimit] = ()) -> None:
        self._limits = {(limit.name, limit.device): limit.count for limit in limits}
        self._slots: set[Slot] = set()
        self._used: dict[Key, int] = {}
        self._waiting: list[_Waiter] = []
        self._clock = 0.0
        self._seq = itertools.count()

    def register(self, owner: str, device: str, spec: mc.ModelRateLimiter) -> Slot | None:
        """The slot of an instance on ``device`` with ``spec``; None when it asks for nothing.
        InvalidArgument when it asks for more than the server has."""
        asks: dict[Key, int] = {}
        for resource in spec.resources:
            key = (resource.name, GLOBAL if getattr(resource, "global") else device)
            asks[key] = asks.get(key, 0) + resource.count
        for key, count in asks.items():
            explicit = self._explicit(key)
            if explicit is not None and count > explicit:
                raise InvalidArgument(
                    f"instance {owner} asks for {count} of rate-limiter resource '{key[0]}' on {key[1]}, "
                    f"but the server has {explicit} (--rate-limit-resource)"
                )
        if not asks:
            return None
        slot = Slot(owner, asks, max(spec.priority, 1), self._clock)
        self._slots.add(slot)
        return slot

    def unregister(self, slot: Slot) -> None:
        self._slots.discard(slot)
        self._waiting = [w for w in self._waiting if w.slot is not slot]

    def acquire(self, slot: Slot, granted: Callable[[], None]) -> bool:
        """Takes the slot's resources now (True) or queues it: ``granted()`` runs, on the loop,
        once they have been taken for it."""
        waiter = _Waiter(max(self._clock, slot.finish) + slot.priority, next(self._seq), slot, granted)
        self._waiting.append(waiter)
        return waiter in self._grant(waiter)

    def release(self, slot: Slot) -> None:
        """An execution ended: its resources go back, and to whoever waits first and fits."""
        for key, count in slot.asks.items():
            self._used[key] -= count
        if self._waiting:
            self._grant(None)

    def renew(self, slot: Slot, granted: Callable[[], None]) -> bool:
        """An execution ended and its instance has more work: its resources go back and it asks
        again in the same step, so that it competes with the waiters by priority (released
        first, the other waiter would always win, whatever the priorities)."""
        for key, count in slot.asks.items():
            self._used[key] -= count
        return self.acquire(slot, granted)

    def cancel(self, slot: Slot) -> None:
        """The slot stops waiting (its queue emptied): nothing will be granted to it."""
        self._waiting = [w for w in self._waiting if w.slot is not slot]

    def _grant(self, quiet: _Waiter | None) -> list[_Waiter]:
        """Grants, in finish order, every waiter that fits; each is told on the loop, except
        ``quiet`` (the caller learns from the result)."""
        granted = []
        self._waiting.sort()
        for waiter in list(self._waiting):
            if not self._fits(waiter.slot):
                continue
            self._waiting.remove(waiter)
            for key, count in waiter.slot.asks.items():
                self._used[key] = self._used.get(key, 0) + count
            waiter.slot.finish = waiter.finish
            self._clock = max(self._clock, waiter.finish - waiter.slot.priority)
            granted.append(waiter)
            if waiter is not quiet:
                asyncio.get_running_loop().call_soon(waiter.granted)
        return granted

    def _fits(self, slot: Slot) -> bool:
        return all(self._used.get(key, 0) + count <= self.available(key) for key, count in slot.asks.items())

    def available(self, key: Key) -> int:
        """Copies of a resource on a device (or global): explicit, else the most any instance asks."""
        explicit = self._explicit(key)
        if explicit is not None:
            return explicit
        name = key[0]
        return max((count for slot in self._slots for (n, _), count in slot.asks.items() if n == name), default=0)

    def _explicit(self, key: Key) -> int | None:
        name, device = key
        if device != GLOBAL and (name, device) in self._limits:
            return self._limits[(name, device)]
        return self._limits.get((name, None))
