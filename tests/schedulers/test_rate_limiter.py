"""The rate limiter's bookkeeping (schedulers/rate_limiter.py), in process: resources per device
or global, the server's count (the most asked, or --rate-limit-resource), Triton's priority
weighting, and the flag's syntax. tests/schedulers/test_rate_limiter_e2e.py runs real servers."""

from __future__ import annotations

import asyncio

import pytest

from backends.common.errors import InvalidArgument
from backends.proto import model_config_pb2 as mc
from schedulers.rate_limiter import RateLimiter, ResourceLimit, Slot, parse_resource


def spec(priority: int = 0, **resources: int) -> mc.ModelRateLimiter:
    limiter = mc.ModelRateLimiter(priority=priority)
    for name, count in resources.items():
        resource = limiter.resources.add(name=name.removeprefix("g_"), count=count)
        setattr(resource, "global", name.startswith("g_"))
    return limiter


def slot(limiter: RateLimiter, owner: str, device: str, limits: mc.ModelRateLimiter) -> Slot:
    registered = limiter.register(owner, device, limits)
    assert registered is not None
    return registered


async def settle() -> None:
    for _ in range(3):  # grants are delivered with call_soon
        await asyncio.sleep(0)


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("R1:10", ResourceLimit("R1", 10)),
        ("R2:5:0", ResourceLimit("R2", 5, "cuda:0")),
        ("R2:8:1", ResourceLimit("R2", 8, "cuda:1")),
        ("R3:2:cpu", ResourceLimit("R3", 2, "cpu")),
    ],
)
def test_the_flag_syntax(text: str, limit: ResourceLimit) -> None:
    assert parse_resource(text) == limit


@pytest.mark.parametrize("text", ["R1", "R1:", ":3", "R1:x", "R1:1:gpu", "R1:1:0:2", "R1:-1", "R1:\u0661"])
def test_a_bad_flag_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="rate-limit-resource"):
        parse_resource(text)


async def test_a_resource_of_one_copy_runs_one_instance_at_a_time() -> None:
    limiter = RateLimiter()
    a = slot(limiter, "a", "cpu", spec(R=1))
    b = slot(limiter, "b", "cpu", spec(R=1))
    granted: list[str] = []
    assert limiter.acquire(a, lambda: granted.append("a"))
    assert not limiter.acquire(b, lambda: granted.append("b"))
    await settle()
    assert granted == []
    limiter.release(a)
    await settle()
    assert granted == ["b"]


async def test_resources_are_per_device_unless_global() -> None:
    limiter = RateLimiter()
    cpu = slot(limiter, "cpu", "cpu", spec(R=1))
    gpu = slot(limiter, "gpu", "cuda:0", spec(R=1))
    assert limiter.acquire(cpu, lambda: None)
    assert limiter.acquire(gpu, lambda: None)  # each device has its own copy
    shared = RateLimiter()
    one = slot(shared, "one", "cpu", spec(g_G=1))
    two = slot(shared, "two", "cuda:0", spec(g_G=1))
    assert shared.acquire(one, lambda: None)
    assert not shared.acquire(two, lambda: None)  # one copy in the whole server


async def test_the_count_is_the_most_asked_unless_given() -> None:
    limiter = RateLimiter()
    a = slot(limiter, "a", "cpu", spec(R=4))
    b = slot(limiter, "b", "cpu", spec(R=2))
    assert limiter.available(("R", "cpu")) == 4
    assert limiter.acquire(b, lambda: None)
    assert not limiter.acquire(a, lambda: None)  # 2 + 4 > 4
    given = RateLimiter([ResourceLimit("R", 6), ResourceLimit("R", 9, "cuda:1")])
    c = slot(given, "c", "cpu", spec(R=4))
    d = slot(given, "d", "cpu", spec(R=2))
    assert given.available(("R", "cpu")) == 6
    assert given.available(("R", "cuda:1")) == 9
    assert given.acquire(c, lambda: None)
    assert given.acquire(d, lambda: None)  # 4 + 2 <= 6


def test_an_instance_asking_more_than_the_server_has_cannot_load() -> None:
    limiter = RateLimiter([ResourceLimit("R", 2)])
    with pytest.raises(InvalidArgument, match="asks for 3 of rate-limiter resource 'R' on cpu, but the server has 2"):
        limiter.register("'m' m_0_0_cpu", "cpu", spec(R=3))


def test_an_instance_without_resources_is_not_held() -> None:
    assert RateLimiter().register("free", "cpu", spec(priority=3)) is None


async def test_priority_weights_the_turns() -> None:
    """Priority 1 gets twice the turns of priority 2 while both wait (Triton's rule); the first
    to ask wins a tie."""
    limiter = RateLimiter()
    holder = slot(limiter, "holder", "cpu", spec(R=1))
    high = slot(limiter, "high", "cpu", spec(priority=1, R=1))
    low = slot(limiter, "low", "cpu", spec(priority=2, R=1))
    order: list[str] = []
    slots = {"high": high, "low": low}

    def ask(name: str) -> None:
        def granted() -> None:
            order.append(name)
            if len(order) >= 9:
                limiter.release(slots[name])
            elif limiter.renew(slots[name], granted):  # more work: back in line at once
                asyncio.get_running_loop().call_soon(granted)

        assert not limiter.acquire(slots[name], granted)

    assert limiter.acquire(holder, lambda: None)
    ask("low")  # asks first, yet waits behind the higher priority
    ask("high")
    limiter.release(holder)
    for _ in range(30):
        await settle()
    assert order[:6] == ["high", "low", "high", "high", "low", "high"]
    assert order[:9].count("high") == 6  # two turns to one


async def test_an_unregistered_instance_stops_waiting() -> None:
    limiter = RateLimiter()
    a = slot(limiter, "a", "cpu", spec(R=1))
    b = slot(limiter, "b", "cpu", spec(R=1))
    granted: list[str] = []
    assert limiter.acquire(a, lambda: None)
    assert not limiter.acquire(b, lambda: granted.append("b"))
    limiter.unregister(b)
    limiter.release(a)
    await settle()
    assert granted == []
