"""backends/common/deadlines.py: many deadlines on one loop timer."""

from __future__ import annotations

import asyncio

from backends.common.deadlines import Deadlines


class Expiries:
    """What expired, and when; ``wait(n)`` returns once ``n`` items have."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.items: list[tuple[str, float]] = []
        self._changed = asyncio.Event()

    def __call__(self, item: str) -> None:
        self.items.append((item, self.loop.time()))
        self._changed.set()

    @property
    def names(self) -> list[str]:
        return [item for item, _ in self.items]

    async def wait(self, n: int) -> None:
        while len(self.items) < n:
            self._changed.clear()
            await asyncio.wait_for(self._changed.wait(), 5)


async def test_items_expire_at_their_own_deadlines_in_any_order() -> None:
    expired = Expiries()
    deadlines: Deadlines[str] = Deadlines(expired.loop, expired)
    start = expired.loop.time()
    deadlines.hold("late", start + 0.3)
    deadlines.hold("early", start + 0.05)  # earlier than the timer: it moves
    deadlines.hold("middle", start + 0.15)
    await expired.wait(3)
    assert expired.names == ["early", "middle", "late"]
    for (_, at), due in zip(expired.items, (0.05, 0.15, 0.3), strict=True):
        assert at >= start + due - 0.002  # never before its deadline (timers round to ms)
    assert len(deadlines) == 0


async def test_a_dropped_item_never_expires_and_the_others_still_do() -> None:
    expired = Expiries()
    deadlines: Deadlines[str] = Deadlines(expired.loop, expired)
    deadlines.hold("answered", expired.loop.time() + 0.05)
    deadlines.hold("slow", expired.loop.time() + 0.1)
    deadlines.drop("answered")
    deadlines.drop("never held")  # no error
    await expired.wait(1)
    await asyncio.sleep(0.05)
    assert expired.names == ["slow"]


async def test_an_expiry_may_hold_new_items_and_close_stops_everything() -> None:
    expired = Expiries()

    def expire(item: str) -> None:
        expired(item)
        if item == "first":
            deadlines.hold("held by the expiry", expired.loop.time() + 0.05)

    deadlines: Deadlines[str] = Deadlines(expired.loop, expire)
    deadlines.hold("first", expired.loop.time() + 0.02)
    await expired.wait(2)
    assert expired.names == ["first", "held by the expiry"]
    deadlines.hold("closed before", expired.loop.time() + 0.02)
    deadlines.close()
    await asyncio.sleep(0.1)
    assert expired.names == ["first", "held by the expiry"]
