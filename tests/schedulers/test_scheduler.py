"""The per-model queue and batcher (schedulers.scheduler.ModelScheduler) over real instance workers
(schedulers.instance.ModelInstance), in process, with a test backend the test holds on a gate:
no sleeps, every step waits on an event with a bound."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backends.base import CPU, Backend, InstanceContext, Tensors
from backends.common.errors import InvalidArgument, ModelExecutionError, Unavailable
from backends.proto import model_config_pb2 as mc
from schedulers.instance import ModelInstance
from schedulers.scheduler import ModelScheduler
from schedulers.stats import ModelStats, Rejection

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0  # the longest any step may take; a hang fails the test instead of blocking it


# ----------------------------------------------------------------------------------------- the harness


class Gate:
    """Where the test holds the backend: every execute announces itself, then (while holding)
    waits for a permit the test hands out."""

    def __init__(self, hold: bool) -> None:
        self.hold = hold
        self._entered = threading.Semaphore(0)
        self._permits = threading.Semaphore(0)

    def pass_through(self) -> None:
        self._entered.release()
        if self.hold and not self._permits.acquire(timeout=WAIT):
            raise TimeoutError("the test never released this batch")

    async def entered(self) -> None:
        """Returns once one more execute has started (and, while holding, is waiting)."""
        assert await asyncio.to_thread(self._entered.acquire, True, WAIT), "no execute started"

    def release(self, count: int = 1) -> None:
        for _ in range(count):
            self._permits.release()

    def open(self) -> None:
        """Stops holding: the waiting execute and every later one go through."""
        self.hold = False
        self.release(1000)


Behaviour = Callable[[Tensors], Any]


def plus_one(inputs: Tensors) -> Any:
    return {"OUT": (inputs["IN"] + 1).astype(np.float32)}


@dataclass
class Call:
    thread: str
    shape: tuple[int, ...]
    dtype: str
    values: list[float]  # the first column of every row: the tests put a request's id there


@dataclass
class Log:
    calls: list[Call] = field(default_factory=list)
    loads: list[str] = field(default_factory=list)
    unloads: list[str] = field(default_factory=list)
    order: list[str] = field(default_factory=list)  # "load", "execute", "unload" as they happened

    @property
    def batches(self) -> list[int]:
        return [call.shape[0] for call in self.calls]

    @property
    def values(self) -> list[list[float]]:
        return [call.values for call in self.calls]


class GatedBackend(Backend):
    def __init__(self, context: InstanceContext, gate: Gate, behaviour: Behaviour, log: Log) -> None:
        super().__init__(context)
        self.gate, self.behaviour, self.log = gate, behaviour, log

    def load(self) -> None:
        self.log.loads.append(threading.current_thread().name)
        self.log.order.append("load")

    def execute(self, inputs: Tensors) -> Tensors:
        x = inputs["IN"]
        first = x.reshape(x.shape[0], -1)[:, 0] if x.ndim > 1 else x[:1]
        call = Call(threading.current_thread().name, x.shape, x.dtype.str, [float(v) for v in first])
        self.log.calls.append(call)
        self.log.order.append("execute")
        self.gate.pass_through()
        return self.behaviour(inputs)  # type: ignore[no-any-return]

    def unload(self) -> None:
        self.log.unloads.append(threading.current_thread().name)
        self.log.order.append("unload")


def model_config(max_batch_size: int = 8, dynamic: bool = True, dims: tuple[int, ...] = (-1,)) -> mc.ModelConfig:
    config = mc.ModelConfig(name="m", backend="python", max_batch_size=max_batch_size)
    config.input.add(name="IN", data_type=mc.TYPE_FP32, dims=list(dims))
    config.output.add(name="OUT", data_type=mc.TYPE_FP32, dims=list(dims))
    if dynamic:
        config.dynamic_batching.SetInParent()
    return config


@dataclass
class Harness:
    scheduler: ModelScheduler
    gate: Gate
    log: Log
    batched: bool

    async def infer(
        self, value: float, rows: int = 1, width: int = 4, dtype: Any = np.float32, priority: int = 0, queue_us: int = 0
    ) -> Tensors:
        """A request of ``rows`` rows (one row of ``width`` for an unbatched model), each filled with
        ``value``: its id, which the backend records and the result carries (+1)."""
        shape = (rows, width) if self.batched else (width,)
        return await self.scheduler.execute({"IN": np.full(shape, value, dtype=dtype)}, rows, priority, queue_us)

    def start(
        self, value: float, rows: int = 1, width: int = 4, dtype: Any = np.float32, priority: int = 0, queue_us: int = 0
    ) -> asyncio.Task[Tensors]:
        return asyncio.ensure_future(self.infer(value, rows, width, dtype, priority, queue_us))

    async def behind_a_busy_instance(self, waiting: list[float]) -> list[Tensors]:
        """Request 0 executes, held, while the requests ``waiting`` queue behind it; then all run.
        Every result, request 0's first."""
        first = self.start(0)
        await self.gate.entered()
        tasks = [self.start(v) for v in waiting]
        await self.queued(len(tasks) + 1)
        self.gate.open()
        return await asyncio.wait_for(asyncio.gather(first, *tasks), WAIT)

    async def queued(self, count: int) -> None:
        """Waits (a bounded number of loop turns) until ``count`` requests are waiting or running."""
        for _ in range(1000):
            if self.scheduler.in_flight >= count:
                return
            await asyncio.sleep(0)
        raise AssertionError(f"{self.scheduler.in_flight} requests in flight, expected {count}")


Factory = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def harness() -> AsyncIterator[Factory]:
    made: list[Harness] = []

    async def make(
        config: mc.ModelConfig | None = None,
        *,
        on_loop: bool = False,
        hold: bool = False,
        behaviour: Behaviour = plus_one,
        count: int = 1,
        devices: tuple[str, ...] = (),
        inline_ns: int = 0,
    ) -> Harness:
        """``devices[i]``: where instance ``w<i>`` runs (one queue per device); ``count`` then
        defaults to one instance per device."""
        count = len(devices) or count
        config = config or model_config()
        gate, log = Gate(hold), Log()
        workers = []
        for i in range(count):
            context = InstanceContext(config, 1, Path("/nonexistent/m/1"), CPU, f"w{i}")
            workers.append(
                ModelInstance(
                    f"w{i}",
                    functools.partial(GatedBackend, context, gate, behaviour, log),
                    on_loop=on_loop,
                    inline_ns=inline_ns,
                )
            )
        await asyncio.gather(*(w.start() for w in workers))
        scheduler = ModelScheduler(config, workers, ModelStats(), devices)
        made.append(Harness(scheduler, gate, log, config.max_batch_size > 0))
        return made[-1]

    yield make
    for h in made:  # a failed test must not leave instance threads waiting
        h.gate.open()
        with contextlib.suppress(TimeoutError):  # the test has already failed, and said why
            await asyncio.wait_for(h.scheduler.close(), 5)


def out(result: Tensors | BaseException) -> list[float]:
    """The distinct values of a request's OUT (its id + 1 for a plus-one model)."""
    assert isinstance(result, dict), result
    return sorted({float(v) for v in np.asarray(result["OUT"]).ravel()})


# ----------------------------------------------------------------------------------------- batching


async def test_batches_form_from_the_requests_waiting_while_the_instance_is_busy(harness: Factory) -> None:
    h = await harness(hold=True)
    first = h.start(0)
    await h.gate.entered()  # the instance is busy with request 0
    waiting = [h.start(v) for v in range(1, 11)]
    await h.queued(11)
    assert h.log.batches == [1]
    h.gate.release()  # request 0 finishes; the 10 waiting ones form batches of at most 8
    await h.gate.entered()
    assert h.log.batches == [1, 8]
    h.gate.release()
    await h.gate.entered()
    h.gate.release()
    results = await asyncio.wait_for(asyncio.gather(first, *waiting), WAIT)
    assert h.log.batches == [1, 8, 2]
    assert h.log.values == [[0], [1, 2, 3, 4, 5, 6, 7, 8], [9, 10]]  # oldest first
    assert [out(r) for r in results] == [[v + 1] for v in range(11)]  # each request gets its own rows
    assert all(r["OUT"].shape == (1, 4) for r in results)


async def test_seven_waiting_requests_make_one_batch_of_seven(harness: Factory) -> None:
    h = await harness(hold=True)
    await h.behind_a_busy_instance(list(range(1, 8)))
    assert h.log.batches == [1, 7]


async def test_multi_row_requests_fill_a_batch_without_going_over_max_batch_size(harness: Factory) -> None:
    h = await harness(hold=True)
    first = h.start(0)
    await h.gate.entered()
    sizes = {1: 3, 2: 3, 3: 3, 4: 2, 5: 4}  # request id -> rows; max_batch_size is 8
    waiting = [h.start(v, rows=rows) for v, rows in sizes.items()]
    await h.queued(6)
    h.gate.open()
    results = await asyncio.wait_for(asyncio.gather(*waiting), WAIT)
    await first
    # greedy: 3 + 3 = 6, the third 3 does not fit and keeps its place, the 2 fills the batch to 8
    assert h.log.batches == [1, 8, 7]
    assert [sorted(set(v)) for v in h.log.values] == [[0], [1, 2, 4], [3, 5]]
    assert max(h.log.batches) <= 8
    for (v, rows), result in zip(sizes.items(), results, strict=True):
        assert result["OUT"].shape == (rows, 4)
        assert out(result) == [v + 1]


async def test_a_request_as_large_as_max_batch_size_runs_alone(harness: Factory) -> None:
    h = await harness()
    full = h.start(1, rows=8)
    small = h.start(2, rows=1)
    await asyncio.wait_for(asyncio.gather(full, small), WAIT)
    assert h.log.batches == [8, 1]


async def test_requests_with_different_shapes_or_types_are_never_merged(harness: Factory) -> None:
    def cast(inputs: Tensors) -> Any:
        return {"OUT": (inputs["IN"] + 1).astype(np.float32)}

    h = await harness(hold=True, behaviour=cast)
    first = h.start(0, width=4)
    await h.gate.entered()
    waiting = [
        h.start(1, width=4),
        h.start(2, width=5),
        h.start(3, width=4),
        h.start(4, width=5),
        h.start(5, width=4, dtype=np.float64),
        h.start(6, width=4),
    ]
    await h.queued(7)
    h.gate.open()
    results = await asyncio.wait_for(asyncio.gather(*waiting), WAIT)
    await first
    groups = {(call.shape[1], call.dtype): sorted(set(call.values)) for call in h.log.calls[1:]}
    assert groups == {(4, "<f4"): [1, 3, 6], (5, "<f4"): [2, 4], (4, "<f8"): [5]}
    assert h.log.batches == [1, 3, 2, 1]
    assert [out(r) for r in results] == [[v + 1] for v in range(1, 7)]
    assert [r["OUT"].shape[1] for r in results] == [4, 5, 4, 5, 4, 4]


async def test_without_dynamic_batching_each_request_executes_alone(harness: Factory) -> None:
    h = await harness(model_config(dynamic=False), hold=True)
    results = await h.behind_a_busy_instance([1, 2, 3])
    assert h.log.batches == [1, 1, 1, 1]
    assert h.log.values == [[0], [1], [2], [3]]
    assert [out(r) for r in results] == [[1], [2], [3], [4]]


async def test_max_batch_size_zero_executes_each_request_alone_with_the_dims_as_shape(harness: Factory) -> None:
    h = await harness(model_config(max_batch_size=0, dims=(4,)))
    results = await asyncio.wait_for(asyncio.gather(*(h.start(v) for v in range(3))), WAIT)
    assert [call.shape for call in h.log.calls] == [(4,), (4,), (4,)]
    assert [r["OUT"].shape for r in results] == [(4,), (4,), (4,)]
    assert [out(r) for r in results] == [[1], [2], [3]]


async def test_two_instances_execute_two_batches_at_once(harness: Factory) -> None:
    h = await harness(model_config(dynamic=False), hold=True, count=2)
    a, b = h.start(1), h.start(2)
    await h.gate.entered()
    await h.gate.entered()  # both started while neither was released: two instances in parallel
    assert sorted(call.thread for call in h.log.calls) == ["instance-w0", "instance-w1"]
    h.gate.open()
    assert [out(r) for r in await asyncio.wait_for(asyncio.gather(a, b), WAIT)] == [[2], [3]]


@pytest.mark.parametrize("on_loop", [False, True], ids=["thread", "event_loop"])
async def test_requests_arriving_together_batch_together(harness: Factory, on_loop: bool) -> None:
    h = await harness(on_loop=on_loop)
    results = await asyncio.wait_for(asyncio.gather(*(h.start(v) for v in range(10))), WAIT)
    # on the event loop an instance is never busy when a request comes: each runs at once
    assert h.log.batches == ([1] * 10 if on_loop else [8, 2])
    assert [out(r) for r in results] == [[v + 1] for v in range(10)]
    where = {call.thread for call in h.log.calls}
    assert where == ({threading.current_thread().name} if on_loop else {"instance-w0"})


# ----------------------------------------------------------------------------------------- failures


@pytest.mark.parametrize("on_loop", [False, True], ids=["thread", "event_loop"])
async def test_an_exception_in_execute_fails_its_batch_and_nothing_else(harness: Factory, on_loop: bool) -> None:
    def fail_on_negative(inputs: Tensors) -> Any:
        if (inputs["IN"] < 0).any():
            raise ValueError("negative input")
        return plus_one(inputs)

    h = await harness(on_loop=on_loop, behaviour=fail_on_negative)
    before = await asyncio.wait_for(h.start(0), WAIT)
    batch = await asyncio.wait_for(asyncio.gather(*(h.start(v) for v in (1, -1, 2)), return_exceptions=True), WAIT)
    after = await asyncio.wait_for(asyncio.gather(h.start(3), h.start(4)), WAIT)
    if on_loop:  # one request per execution: only the bad one fails
        assert h.log.batches == [1, 1, 1, 1, 1, 1]
        assert out(batch[0]) == [2]
        assert isinstance(batch[1], ValueError)
        assert out(batch[2]) == [3]
    else:
        assert h.log.batches == [1, 3, 2]
        assert all(isinstance(r, ValueError) and str(r) == "negative input" for r in batch), batch
    assert out(before) == [1]
    assert [out(r) for r in after] == [[4], [5]]


async def test_an_exception_in_a_held_batch_reaches_only_its_requests(harness: Factory) -> None:
    def fail_on_negative(inputs: Tensors) -> Any:
        if (inputs["IN"] < 0).any():
            raise ValueError("negative input")
        return plus_one(inputs)

    h = await harness(hold=True, behaviour=fail_on_negative)
    first = h.start(0)
    await h.gate.entered()
    bad = [h.start(v) for v in (1, -1, 2)]
    await h.queued(4)
    h.gate.release()  # request 0 ends; 1, -1, 2 run as one batch
    await h.gate.entered()
    later = h.start(3)  # arrives while the failing batch runs
    await h.queued(2)
    h.gate.open()
    results = await asyncio.wait_for(asyncio.gather(*bad, return_exceptions=True), WAIT)
    assert all(isinstance(r, ValueError) for r in results), results
    assert out(await asyncio.wait_for(first, WAIT)) == [1]
    assert out(await asyncio.wait_for(later, WAIT)) == [4]
    assert h.log.batches == [1, 3, 1]


async def test_a_model_raising_system_exit_fails_its_batch_and_the_instance_keeps_serving(harness: Factory) -> None:
    """``sys.exit()`` inside a model is a BaseException, not an Exception: it must still reach
    the batch's requests, and must neither kill the instance thread nor leave requests hanging."""
    calls = {"n": 0}

    def exit_once(inputs: Tensors) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise SystemExit("model called sys.exit")
        return plus_one(inputs)

    h = await harness(behaviour=exit_once)
    done, _ = await asyncio.wait([h.start(1), h.start(2)], timeout=5)
    assert len(done) == 2, "the requests of a batch whose model raised SystemExit never completed"
    assert all(task.exception() is not None for task in done)
    assert out(await asyncio.wait_for(h.start(3), WAIT)) == [4]


BAD_OUTPUTS: list[tuple[str, Behaviour, str]] = [
    (
        "dtype",
        lambda i: {"OUT": (i["IN"] + 1).astype(np.float64)},
        "model 'm' failed: output 'OUT' has dtype float64, config expects FP32",
    ),
    ("missing", lambda i: {}, "model 'm' failed: output 'OUT' is missing"),
    (
        "batch",
        lambda i: {"OUT": (i["IN"] + 1)[:0]},
        "model 'm' failed: output 'OUT' has shape [0, 4], config expects [*",  # [3, -1] or [1, -1]
    ),
    (
        "extra",
        lambda i: {"OUT": i["IN"] + 1, "EXTRA": i["IN"]},
        "model 'm' failed: unexpected output(s) ['EXTRA']",
    ),
    ("list", lambda i: [i["IN"]], "model 'm' failed: returned a list, expected a dict of numpy arrays"),
    ("not-array", lambda i: {"OUT": i["IN"].tolist()}, "model 'm' failed: output 'OUT' is a list, not a numpy array"),
]


@pytest.mark.parametrize("on_loop", [False, True], ids=["thread", "event_loop"])
@pytest.mark.parametrize(("behaviour", "message"), [c[1:] for c in BAD_OUTPUTS], ids=[c[0] for c in BAD_OUTPUTS])
async def test_outputs_the_config_does_not_allow_fail_every_request_of_the_batch(
    harness: Factory, on_loop: bool, behaviour: Behaviour, message: str
) -> None:
    calls = {"n": 0}

    def bad_once(inputs: Tensors) -> Any:
        calls["n"] += 1
        return behaviour(inputs) if calls["n"] == 1 else plus_one(inputs)

    h = await harness(on_loop=on_loop, behaviour=bad_once)
    results = await asyncio.wait_for(asyncio.gather(*(h.start(v) for v in range(3)), return_exceptions=True), WAIT)
    if on_loop:  # each request runs on its own: only the first met the bad result
        assert h.log.batches == [1, 1, 1]
        assert [out(r) for r in results[1:]] == [[2], [3]]
        results = results[:1]
    else:
        assert h.log.batches == [3]
    for result in results:
        assert isinstance(result, ModelExecutionError), result
        if message.endswith("*"):
            assert result.message.startswith(message[:-1]), result.message
        else:
            assert result.message == message
    assert out(await asyncio.wait_for(h.start(7), WAIT)) == [8]  # the next batch is fine


# ----------------------------------------------------------------------------------------- cancellation


async def test_a_request_cancelled_while_queued_is_never_executed(harness: Factory) -> None:
    h = await harness(hold=True)
    first = h.start(0)
    await h.gate.entered()
    mates = [h.start(1), h.start(2), h.start(3)]
    await h.queued(4)
    mates[1].cancel()
    h.gate.open()
    results = await asyncio.wait_for(asyncio.gather(first, *mates, return_exceptions=True), WAIT)
    assert isinstance(results[2], asyncio.CancelledError)
    assert [out(results[i]) for i in (0, 1, 3)] == [[1], [2], [4]]
    assert h.log.values == [[0], [1, 3]]  # request 2's rows never reached the backend
    assert out(await asyncio.wait_for(h.start(5), WAIT)) == [6]


async def test_cancelling_every_queued_request_leaves_the_scheduler_working(harness: Factory) -> None:
    h = await harness(hold=True)
    first = h.start(0)
    await h.gate.entered()
    queued = [h.start(v) for v in (1, 2)]
    await h.queued(3)
    for task in queued:
        task.cancel()
    h.gate.open()
    assert out(await asyncio.wait_for(first, WAIT)) == [1]
    assert out(await asyncio.wait_for(h.start(3), WAIT)) == [4]
    assert h.log.values == [[0], [3]]
    await asyncio.gather(*queued, return_exceptions=True)


async def test_event_loop_instances_run_each_request_at_once(harness: Factory) -> None:
    h = await harness(on_loop=True)
    tasks = [h.start(v) for v in (1, 2, 3)]
    await asyncio.sleep(0)  # one loop turn: each request has run as it came, nothing waits
    assert h.scheduler.in_flight == 0
    assert h.log.values == [[1], [2], [3]]
    results = await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
    assert [out(r) for r in results] == [[2], [3], [4]]


# ----------------------------------------------------------------------------------------- idle inline

LOOP_BOUND_NS = 10**9  # far above what the test backend takes: idleness decides


async def idle_pause(h: Harness) -> None:
    """Longer than an execution, as a lone client's requests are apart."""
    await asyncio.sleep(max(3 * h.scheduler.queues[0].solo_ns / 1e9, 0.002))


async def alone(h: Harness, value: float, rows: int = 1) -> Tensors:
    """A request after an idle pause."""
    await idle_pause(h)
    return await asyncio.wait_for(h.infer(value, rows), WAIT)


def sleeps_then_plus_one(inputs: Tensors) -> Any:
    time.sleep(0.01)  # a known execution time: a request 1 ms after a completion is back to back
    return plus_one(inputs)


async def test_an_idle_device_runs_short_requests_on_the_event_loop_after_the_warm_up(harness: Factory) -> None:
    h = await harness(inline_ns=LOOP_BOUND_NS)
    loop_thread = threading.current_thread().name
    for value in range(4):
        assert out(await alone(h, value)) == [value + 1]
    # the first execution warms the instance up and the second is the first measured: both on
    # the instance's thread; from then on the device is idle at each arrival and known to be fast
    assert [c.thread for c in h.log.calls] == ["instance-w0", "instance-w0", loop_thread, loop_thread]
    assert h.scheduler.queues[0].inline_executions == 2
    assert h.scheduler.queues[0].executions == 4
    assert h.scheduler.stats.execution_count == 4


async def test_no_idle_inline_without_its_bound_or_with_a_batching_window(harness: Factory) -> None:
    windowed = model_config()
    windowed.dynamic_batching.max_queue_delay_microseconds = 100
    for h in (await harness(), await harness(windowed, inline_ns=LOOP_BOUND_NS)):
        for value in range(4):
            assert out(await alone(h, value)) == [value + 1]
        assert {c.thread for c in h.log.calls} == {"instance-w0"}
        assert h.scheduler.queues[0].inline_executions == 0


async def test_a_request_longer_than_the_bound_goes_to_the_thread(harness: Factory) -> None:
    h = await harness(behaviour=sleeps_then_plus_one, inline_ns=5_000_000)  # 5 ms; executions take 10
    for value in range(4):
        await alone(h, value)
    assert {c.thread for c in h.log.calls} == {"instance-w0"}
    fast = await harness(inline_ns=LOOP_BOUND_NS)
    for value in range(3):
        await alone(fast, value)
    assert fast.log.calls[-1].thread != "instance-w0"  # now inline, for one-row requests
    queue = fast.scheduler.queues[0]
    queue._inline_ns = int(queue.solo_ns * 4 / queue._solo_rows) + 1  # just over four rows' time
    await idle_pause(fast)
    assert queue.runs_now(4)
    assert not queue.runs_now(5)  # scaled by rows: five would take longer than the bound


async def test_a_request_right_after_a_completion_goes_to_the_thread(harness: Factory) -> None:
    """Back to back (a closed loop of several clients) is load: requests then queue and batch."""
    h = await harness(behaviour=sleeps_then_plus_one, inline_ns=LOOP_BOUND_NS)
    for value in range(3):
        await alone(h, value)
    assert h.log.calls[-1].thread != "instance-w0"
    await asyncio.wait_for(h.infer(3), WAIT)  # at once: the device finished 10 ms ago at most
    assert h.log.calls[-1].thread == "instance-w0"
    await alone(h, 4)
    assert h.log.calls[-1].thread != "instance-w0"


async def test_no_idle_inline_while_another_device_on_the_loop_has_work(harness: Factory) -> None:
    busy = await harness(hold=True)
    other = await harness(inline_ns=LOOP_BOUND_NS)
    for value in range(3):
        await alone(other, value)
    assert other.log.calls[-1].thread != "instance-w0"
    held = busy.start(0)
    await busy.gate.entered()  # busy's instance executes: its completion will need the loop
    await alone(other, 3)
    assert other.log.calls[-1].thread == "instance-w0"
    busy.gate.open()
    assert out(await asyncio.wait_for(held, WAIT)) == [1]
    await alone(other, 4)
    assert other.log.calls[-1].thread != "instance-w0"


async def test_requests_arriving_while_the_instance_is_busy_queue_and_batch(harness: Factory) -> None:
    h = await harness(hold=True, inline_ns=LOOP_BOUND_NS)
    results = await h.behind_a_busy_instance([1, 2, 3])  # request 0 (the warm-up) holds the thread
    assert [out(r) for r in results] == [[1], [2], [3], [4]]
    assert h.log.values == [[0], [1, 2, 3]]
    assert {c.thread for c in h.log.calls} == {"instance-w0"}
    assert h.scheduler.queues[0].inline_executions == 0


async def test_a_failure_inline_fails_its_request_and_the_device_goes_on(harness: Factory) -> None:
    def fails_on_seven(inputs: Tensors) -> Any:
        if float(inputs["IN"].ravel()[0]) == 7:
            raise ValueError("seven")
        return plus_one(inputs)

    h = await harness(behaviour=fails_on_seven, inline_ns=LOOP_BOUND_NS)
    for value in range(2):
        await alone(h, value)
    with pytest.raises(ValueError, match="seven"):
        await alone(h, 7)
    assert h.log.calls[-1].thread == threading.current_thread().name
    assert out(await alone(h, 8)) == [9]
    assert h.log.calls[-1].thread == threading.current_thread().name


async def test_a_request_cancelled_while_executing_does_not_break_the_others(harness: Factory) -> None:
    h = await harness(hold=True)
    first = h.start(0)
    await h.gate.entered()
    mates = [h.start(1), h.start(2), h.start(3)]
    await h.queued(4)
    h.gate.release()
    await h.gate.entered()  # 1, 2, 3 are executing together
    mates[1].cancel()
    h.gate.open()
    results = await asyncio.wait_for(asyncio.gather(first, *mates, return_exceptions=True), WAIT)
    assert isinstance(results[2], asyncio.CancelledError)
    assert [out(results[i]) for i in (0, 1, 3)] == [[1], [2], [4]]
    assert h.log.values == [[0], [1, 2, 3]]
    assert out(await asyncio.wait_for(h.start(4), WAIT)) == [5]  # the instance came back
    assert h.scheduler.in_flight == 0


# ----------------------------------------------------------------------------------------- close


async def test_close_waits_for_in_flight_work_then_unloads_on_the_instance_thread(harness: Factory) -> None:
    h = await harness(hold=True)
    running = h.start(0)
    await h.gate.entered()
    queued = h.start(1)
    await h.queued(2)
    closing = asyncio.ensure_future(h.scheduler.close())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not closing.done()
    assert h.log.unloads == []
    with pytest.raises(Unavailable, match=r"^model 'm' is unloading$"):
        await h.infer(2)
    h.gate.release()  # request 0 ends; the queued request 1 still runs before the unload
    await h.gate.entered()
    assert not closing.done()
    assert h.log.unloads == []
    h.gate.release()
    await asyncio.wait_for(closing, WAIT)
    assert [out(await running), out(await queued)] == [[1], [2]]
    assert h.log.order == ["load", "execute", "execute", "unload"]
    assert h.log.loads == h.log.unloads == ["instance-w0"]
    assert {call.thread for call in h.log.calls} == {"instance-w0"}


@pytest.mark.parametrize("on_loop", [False, True], ids=["thread", "event_loop"])
async def test_close_of_an_idle_scheduler_unloads_every_instance_once(harness: Factory, on_loop: bool) -> None:
    h = await harness(on_loop=on_loop, count=2)
    assert out(await asyncio.wait_for(h.start(1), WAIT)) == [2]
    await asyncio.wait_for(h.scheduler.close(), WAIT)
    assert len(h.log.unloads) == 2
    assert h.log.order[-2:] == ["unload", "unload"]
    if on_loop:  # loads and unloads on a helper thread, never on the event loop
        assert threading.current_thread().name not in h.log.loads + h.log.unloads
    await asyncio.wait_for(h.scheduler.close(), WAIT)  # a second close is harmless
    assert len(h.log.unloads) == 2


# ------------------------------------------------------------------------ AIMD cap, queue bound


def aimd_config(target_us: str, max_batch_size: int = 16, **extra: str) -> mc.ModelConfig:
    config = model_config(max_batch_size)
    config.parameters["batch_latency_target_us"].string_value = target_us
    for key, value in extra.items():
        config.parameters[key].string_value = value
    return config


async def test_batches_never_exceed_the_aimd_cap_which_grows_with_each_full_fast_batch(harness: Factory) -> None:
    h = await harness(aimd_config("60000000"), hold=True)  # a minute: every batch is fast enough
    first = h.start(0)
    await h.gate.entered()
    waiting = [h.start(v) for v in range(1, 15)]
    await h.queued(15)
    assert h.scheduler.aimd.cap == 1
    h.gate.open()
    await asyncio.wait_for(asyncio.gather(first, *waiting), WAIT)
    assert h.log.batches == [1, 2, 3, 4, 5]  # the cap starts at 1 and grows by one per full batch
    assert h.scheduler.aimd.cap == 6


async def test_a_slow_batch_cuts_the_cap(harness: Factory) -> None:
    h = await harness(aimd_config("1", batch_size_initial="10"), hold=True)  # 1 µs: every batch is too slow
    await h.behind_a_busy_instance(list(range(1, 12)))
    # after the first batch, 10 -> 9; eleven waiting under a cap of 9 go as two equal halves, each cut
    assert h.log.batches == [1, 6, 5]
    assert h.scheduler.aimd.cap == 7
    assert h.scheduler.aimd.over_target == 3


async def test_after_a_batch_completes_the_fill_delay_holds_a_short_batch_for_its_callers(harness: Factory) -> None:
    # Clipper's delayed batching: the callers of a finished batch come back; wait for them
    config = aimd_config("60000000", max_batch_size=4, batch_size_initial="4", batch_fill_delay_us="3600000000")
    h = await harness(config, hold=True)
    first = h.start(0)
    await h.gate.entered()
    waiting = [h.start(1), h.start(2)]
    await h.queued(3)
    h.gate.open()
    assert out(await asyncio.wait_for(first, WAIT)) == [1.0]
    for _ in range(50):
        await asyncio.sleep(0)
    assert h.log.batches == [1]  # two rows under a cap of four: held for the fill delay
    later = [h.start(3), h.start(4)]
    results = await asyncio.wait_for(asyncio.gather(*waiting, *later), WAIT)
    assert h.log.batches == [1, 4]
    assert [out(r) for r in results] == [[2.0], [3.0], [4.0], [5.0]]


async def test_the_fill_delay_does_not_hold_a_request_that_finds_the_queue_idle(harness: Factory) -> None:
    config = aimd_config("60000000", max_batch_size=4, batch_size_initial="4", batch_fill_delay_us="3600000000")
    h = await harness(config)
    assert out(await asyncio.wait_for(h.infer(0), WAIT)) == [1.0]  # no batch completed before it
    assert h.log.batches == [1]


async def test_on_a_machine_booted_seconds_ago_the_first_request_does_not_wait_for_the_fill_delay(
    harness: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the monotonic clock starts near zero at boot: "no batch completed yet" must not read as
    # "a batch completed at time 0", which would hold the first request for the fill delay
    real = time.perf_counter_ns
    offset = real() - 3_000_000_000  # the clock now reads 3 s
    monkeypatch.setattr(time, "perf_counter_ns", lambda: real() - offset)
    config = aimd_config("60000000", max_batch_size=4, batch_size_initial="4", batch_fill_delay_us="3600000000")
    h = await harness(config)
    assert out(await asyncio.wait_for(h.infer(0), WAIT)) == [1.0]
    assert h.log.batches == [1]


async def test_a_batch_held_by_the_fill_delay_goes_when_the_delay_ends(harness: Factory) -> None:
    config = aimd_config("60000000", max_batch_size=4, batch_size_initial="4", batch_fill_delay_us="20000")
    h = await harness(config, hold=True)
    results = await h.behind_a_busy_instance([1.0, 2.0])  # nobody else comes
    assert h.log.batches == [1, 2]
    assert [out(r) for r in results] == [[1.0], [2.0], [3.0]]


async def test_between_one_and_two_caps_waiting_go_as_two_equal_batches_that_count_as_full(harness: Factory) -> None:
    h = await harness(aimd_config("60000000", batch_size_initial="4"), hold=True)
    results = await h.behind_a_busy_instance([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # six under a cap of four
    assert h.log.batches == [1, 3, 3]  # not 4 and a straggling 2
    assert [out(r) for r in results] == [[float(v + 1)] for v in range(7)]
    assert h.scheduler.aimd.cap == 5  # the first half was limited by the cap: it grew


async def test_a_full_queue_rejects_at_once(harness: Factory) -> None:
    config = model_config()
    config.dynamic_batching.default_queue_policy.max_queue_size = 2
    h = await harness(config, hold=True)
    first = h.start(0)
    await h.gate.entered()
    waiting = [h.start(1), h.start(2)]
    await h.queued(3)
    with pytest.raises(Unavailable, match="the queue is full"):
        await h.infer(3)
    waiting[0].cancel()  # a cancelled request no longer counts
    await asyncio.sleep(0)
    later = h.start(4)
    await h.queued(3)
    h.gate.open()
    results = await asyncio.wait_for(asyncio.gather(first, waiting[1], later), WAIT)
    assert [out(r) for r in results] == [[1.0], [3.0], [5.0]]


# ---------------------------------------------------------- preferred sizes, max queue delay


def shaped_config(preferred: tuple[int, ...] = (), delay_us: int = 0, max_batch_size: int = 8) -> mc.ModelConfig:
    config = model_config(max_batch_size)
    config.dynamic_batching.preferred_batch_size.extend(preferred)
    config.dynamic_batching.max_queue_delay_microseconds = delay_us
    return config


async def test_the_largest_preferred_size_the_waiting_requests_reach_goes_first(harness: Factory) -> None:
    h = await harness(shaped_config(preferred=(2, 4)), hold=True)
    await h.behind_a_busy_instance(list(range(1, 8)))  # 7 waiting, the cap is 8
    assert h.log.batches == [1, 4, 2, 1]  # 7 -> 4 (preferred), 3 -> 2 (preferred), then what is left
    assert h.log.values == [[0], [1, 2, 3, 4], [5, 6], [7]]


async def test_max_queue_delay_holds_a_batch_until_it_is_full(harness: Factory) -> None:
    h = await harness(shaped_config(delay_us=3_600_000_000, max_batch_size=4))  # an hour
    early = [h.start(v) for v in range(3)]
    await h.queued(3)
    for _ in range(50):
        await asyncio.sleep(0)
    assert h.log.batches == []  # three rows of four: waiting for the fourth
    last = h.start(3)
    results = await asyncio.wait_for(asyncio.gather(*early, last), WAIT)
    assert h.log.batches == [4]
    assert [out(r) for r in results] == [[1.0], [2.0], [3.0], [4.0]]


async def test_max_queue_delay_sends_what_there_is_when_it_expires(harness: Factory) -> None:
    h = await harness(shaped_config(delay_us=20_000, max_batch_size=8))  # 20 ms
    requests = [h.start(v) for v in range(3)]
    results = await asyncio.wait_for(asyncio.gather(*requests), WAIT)  # no one else comes
    assert h.log.batches == [3]
    assert [out(r) for r in results] == [[1.0], [2.0], [3.0]]
    assert h.scheduler.stats.queue.ns >= 3 * 20_000_000 * 0.9  # each waited about the delay


async def test_closing_sends_a_batch_that_waits_for_its_delay(harness: Factory) -> None:
    h = await harness(shaped_config(delay_us=3_600_000_000, max_batch_size=4))
    pending = h.start(0)
    await h.queued(1)
    await asyncio.wait_for(h.scheduler.close(), WAIT)
    assert out(await pending) == [1.0]


# ------------------------------------------------------------------ priorities, queue timeouts


def policy_config(max_batch_size: int = 2, levels: int = 2, default_level: int = 2) -> mc.ModelConfig:
    config = model_config(max_batch_size)
    config.dynamic_batching.priority_levels = levels
    config.dynamic_batching.default_priority_level = default_level
    return config


async def test_higher_priority_requests_are_batched_first(harness: Factory) -> None:
    h = await harness(policy_config(), hold=True)
    first = h.start(0)
    await h.gate.entered()
    low = [h.start(v) for v in (1, 2, 3)]  # the default level, 2
    high = [h.start(v, priority=1) for v in (4, 5)]
    await h.queued(6)
    h.gate.open()
    await asyncio.wait_for(asyncio.gather(first, *low, *high), WAIT)
    assert h.log.values == [[0], [4, 5], [1, 2], [3]]  # level 1 first, then level 2 in arrival order


async def test_a_priority_above_the_levels_is_refused(harness: Factory) -> None:
    h = await harness(policy_config())
    with pytest.raises(InvalidArgument, match="priority 3 is not a priority level"):
        await h.infer(0, priority=3)


async def test_queue_timeout_reject_fails_the_request_and_never_executes_it(harness: Factory) -> None:
    config = policy_config(levels=0, default_level=0)
    config.dynamic_batching.default_queue_policy.default_timeout_microseconds = 5_000  # 5 ms
    h = await harness(config, hold=True)
    first = h.start(0)
    await h.gate.entered()
    waiting = h.start(1)
    with pytest.raises(Unavailable, match="request timeout expired"):
        await asyncio.wait_for(waiting, WAIT)
    assert h.scheduler.stats.rejections[Rejection.TIMEOUT] == 1
    h.gate.open()
    await first
    assert h.log.values == [[0]]


async def test_a_request_may_shorten_its_timeout_where_allowed_and_delay_sends_it_last(harness: Factory) -> None:
    config = policy_config(max_batch_size=1, levels=0, default_level=0)
    policy = config.dynamic_batching.default_queue_policy
    policy.allow_timeout_override = True
    policy.timeout_action = mc.ModelQueuePolicy.DELAY
    h = await harness(config, hold=True)
    first = h.start(0)
    await h.gate.entered()
    late = h.start(1, queue_us=1_000)  # 1 ms, then it goes behind the others
    others = [h.start(v) for v in (2, 3)]
    await h.queued(4)
    await asyncio.sleep(0.02)  # past the 1 ms timeout; the instance is still held
    h.gate.open()
    await asyncio.wait_for(asyncio.gather(first, late, *others), WAIT)
    assert h.log.values == [[0], [2], [3], [1]]


@pytest.mark.parametrize("preserve", [True, False])
async def test_preserve_ordering_holds_a_later_answer_until_the_earlier_ones(harness: Factory, preserve: bool) -> None:
    go = {0: threading.Event(), 1: threading.Event()}
    finished = {0: threading.Event(), 1: threading.Event()}

    def held(inputs: Tensors) -> Any:
        value = int(inputs["IN"][0, 0])
        assert go[value].wait(WAIT)
        finished[value].set()
        return plus_one(inputs)

    config = model_config(max_batch_size=1)
    config.dynamic_batching.preserve_ordering = preserve
    h = await harness(config, behaviour=held, count=2)
    first, second = h.start(0), h.start(1)
    await h.queued(2)  # one on each instance
    go[1].set()  # the later request ends first
    assert await asyncio.to_thread(finished[1].wait, WAIT)
    for _ in range(100):  # let the completion reach the event loop
        await asyncio.sleep(0)
    assert second.done() is not preserve
    go[0].set()
    results = await asyncio.wait_for(asyncio.gather(first, second), WAIT)
    assert [out(r) for r in results] == [[1.0], [2.0]]


async def test_each_priority_level_has_its_own_queue_bound(harness: Factory) -> None:
    config = policy_config(max_batch_size=1)
    config.dynamic_batching.priority_queue_policy[2].max_queue_size = 1  # the default level: one waiting
    h = await harness(config, hold=True)
    first = h.start(0)
    await h.gate.entered()
    low = h.start(1)
    await h.queued(2)
    with pytest.raises(Unavailable, match="the queue is full"):
        await h.infer(2)  # level 2 is full
    high = [h.start(v, priority=1) for v in (3, 4)]  # level 1 is not bounded
    await h.queued(4)
    h.gate.open()
    results = await asyncio.wait_for(asyncio.gather(first, low, *high), WAIT)
    assert [out(r) for r in results] == [[1.0], [2.0], [4.0], [5.0]]


# ----------------------------------------------------------------------------------------- per-device queues


def threads(h: Harness) -> list[str]:
    return [call.thread.removeprefix("instance-") for call in h.log.calls]


async def test_each_device_has_its_own_queue_and_requests_go_to_the_shortest(harness: Factory) -> None:
    h = await harness(hold=True, devices=("cpu", "cuda:0"))
    assert [q.device for q in h.scheduler.queues] == ["cpu", "cuda:0"]
    first, second = h.start(0), h.start(1)  # one per device: each found the other busy
    await h.gate.entered()
    await h.gate.entered()
    assert sorted(threads(h)) == ["w0", "w1"]
    waiting = [h.start(v) for v in range(2, 8)]  # alternate between the two equal queues
    await h.queued(8)
    assert [len(q.queue) for q in h.scheduler.queues] == [3, 3]
    h.gate.open()
    results = await asyncio.wait_for(asyncio.gather(first, second, *waiting), WAIT)
    assert [out(r) for r in results] == [[v + 1] for v in range(8)]
    assert sorted(h.log.batches) == [1, 1, 3, 3]  # each device batched its own three
    assert [q.executions for q in h.scheduler.queues] == [2, 2]
    assert [q.rows for q in h.scheduler.queues] == [4, 4]


async def test_a_device_with_more_instances_takes_more_requests(harness: Factory) -> None:
    h = await harness(model_config(dynamic=False), hold=True, devices=("cuda:0", "cuda:0", "cuda:1"))
    assert [(q.device, len(q.queue)) for q in h.scheduler.queues] == [("cuda:0", 0), ("cuda:1", 0)]
    started = [h.start(v) for v in range(6)]
    await h.queued(6)
    # depth per instance: cuda:0 (two instances) takes four, cuda:1 two
    assert [q.in_flight for q in h.scheduler.queues] == [4, 2]
    h.gate.open()
    await asyncio.wait_for(asyncio.gather(*started), WAIT)
    assert [q.rows for q in h.scheduler.queues] == [4, 2]


async def test_a_faster_device_drains_sooner_and_gets_the_next_requests(harness: Factory) -> None:
    h = await harness(model_config(dynamic=False), hold=True, devices=("cpu", "cuda:0"))
    slow, fast = h.start(0), h.start(1)
    await h.gate.entered()
    await h.gate.entered()
    h.gate.release()  # one of the two finishes: the other device stays busy
    done, _ = await asyncio.wait([slow, fast], timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
    finished = 0 if slow in done else 1
    queues = h.scheduler.queues
    assert [q.in_flight for q in queues] == ([0, 1] if finished == 0 else [1, 0])
    nxt = h.start(2)
    await h.gate.entered()  # it runs at once, on the idle device
    assert threads(h)[-1] == f"w{finished}"
    h.gate.open()
    await asyncio.wait_for(asyncio.gather(slow, fast, nxt), WAIT)


async def test_once_measured_a_faster_device_takes_more_than_its_share(harness: Factory) -> None:
    h = await harness(hold=True, devices=("cpu", "cuda:0"))
    cpu, gpu = h.scheduler.queues
    first, second = h.start(0), h.start(1)  # both devices busy
    await h.gate.entered()
    await h.gate.entered()
    cpu.batch_ns, gpu.batch_ns = 8e6, 1e6  # as their batches measured: 8 ms and 1 ms
    waiting = [h.start(v) for v in range(2, 10)]
    await h.queued(10)
    # the cpu answers a request queued now in 2 x 8 ms; the gpu in (1 + 1 + queued/8) x 1 ms
    assert (len(cpu.queue), len(gpu.queue)) == (0, 8)
    h.gate.open()
    results = await asyncio.wait_for(asyncio.gather(first, second, *waiting), WAIT)
    assert [out(r) for r in results] == [[v + 1] for v in range(10)]


async def test_a_slow_estimate_is_checked_again_now_and_then(harness: Factory) -> None:
    h = await harness(model_config(max_batch_size=64), hold=True, devices=("cpu", "cuda:0"))
    cpu, gpu = h.scheduler.queues
    running = [h.start(0), h.start(1)]
    await h.gate.entered()
    await h.gate.entered()
    cpu.batch_ns, gpu.batch_ns = 1e9, 1e6  # the cpu looks a thousand times slower
    waiting = [h.start(v) for v in range(2, 66)]
    await h.queued(66)
    assert len(cpu.queue) == 2  # one decision in 32 goes by queue depth alone: 2 of 64
    h.gate.open()
    await asyncio.wait_for(asyncio.gather(*running, *waiting), WAIT)


async def test_an_instance_first_batch_is_left_out_of_the_device_estimate(harness: Factory) -> None:
    h = await harness(model_config(dynamic=False))
    queue = h.scheduler.queues[0]
    await h.infer(0)
    assert queue.batch_ns == 0  # the warm-up batch
    await h.infer(1)
    assert queue.batch_ns > 0


async def test_each_device_has_its_own_aimd_cap(harness: Factory) -> None:
    h = await harness(aimd_config("60000000", max_batch_size=8), devices=("cpu", "cuda:0"))
    cpu, gpu = (q.aimd for q in h.scheduler.queues)
    assert (cpu.cap, gpu.cap) == (1, 1)
    cpu.observe(1, 1_000)  # a full fast batch on cpu only
    assert (cpu.cap, gpu.cap) == (2, 1)


async def test_preserve_ordering_holds_across_devices(harness: Factory) -> None:
    go = threading.Event()

    def first_waits(inputs: Tensors) -> Any:
        if inputs["IN"][0, 0] == 0:
            assert go.wait(WAIT)
        return plus_one(inputs)

    config = model_config(max_batch_size=1)
    config.dynamic_batching.preserve_ordering = True
    h = await harness(config, behaviour=first_waits, devices=("cpu", "cuda:0"))
    first, second = h.start(0), h.start(1)
    for _ in range(1000):  # the second device finishes the second request...
        if sum(q.executions for q in h.scheduler.queues):
            break
        await asyncio.sleep(0.001)
    assert sum(q.executions for q in h.scheduler.queues) == 1
    assert not second.done()  # ...whose answer waits for the first one's
    go.set()
    results = await asyncio.wait_for(asyncio.gather(first, second), WAIT)
    assert [out(r) for r in results] == [[1.0], [2.0]]


async def test_max_queue_size_counts_the_queues_of_every_device(harness: Factory) -> None:
    config = model_config()
    config.dynamic_batching.default_queue_policy.max_queue_size = 2
    h = await harness(config, hold=True, devices=("cpu", "cuda:0"))
    running = [h.start(0), h.start(1)]
    await h.gate.entered()
    await h.gate.entered()
    waiting = [h.start(2), h.start(3)]  # one in each device's queue
    await h.queued(4)
    assert [len(q.queue) for q in h.scheduler.queues] == [1, 1]
    with pytest.raises(Unavailable, match="the queue is full"):
        await h.infer(4)
    assert h.scheduler.stats.rejections[Rejection.QUEUE_FULL] == 1
    h.gate.open()
    results = await asyncio.wait_for(asyncio.gather(*running, *waiting), WAIT)
    assert [out(r) for r in results] == [[1.0], [2.0], [3.0], [4.0]]


async def test_closing_drains_every_device(harness: Factory) -> None:
    h = await harness(hold=True, devices=("cpu", "cuda:0"))
    started = [h.start(v) for v in range(4)]
    await h.queued(4)
    closing = asyncio.ensure_future(h.scheduler.close())
    await asyncio.sleep(0)  # close() has begun
    with pytest.raises(Unavailable, match="unloading"):
        await h.infer(9)
    assert h.scheduler.stats.rejections[Rejection.UNLOADING] == 1
    h.gate.open()
    await asyncio.wait_for(closing, WAIT)
    assert [out(r) for r in await asyncio.gather(*started)] == [[v + 1] for v in range(4)]
    assert sorted(h.log.unloads) == ["instance-w0", "instance-w1"]


async def test_a_request_moved_to_another_device_keeps_its_timeout_from_its_arrival(harness: Factory) -> None:
    """What the remote scheduler does with the requests queued for an ejected endpoint: taken
    from one device, queued on another. A request that arrived 10 s ago with a timeout of
    10.2 s expires on its new device within 0.2 s, not 10.2 s after the move."""
    config = policy_config(max_batch_size=1, levels=0, default_level=0)
    config.dynamic_batching.default_queue_policy.allow_timeout_override = True
    h = await harness(config, hold=True, devices=("a", "b"))
    busy = [h.start(0), h.start(1)]  # one held batch on each device
    await h.gate.entered()
    await h.gate.entered()
    moved = h.start(2, queue_us=10_200_000)
    await h.queued(3)
    source = next(q for q in h.scheduler.queues if q.queue)
    target = next(q for q in h.scheduler.queues if q is not source)
    [pending] = source.take_queued()
    pending.enqueued_ns -= 10_000_000_000  # as if it had waited 10 s there
    target.take_over(pending)
    with pytest.raises(Unavailable, match="request timeout expired"):
        await asyncio.wait_for(moved, WAIT / 2)
    assert h.scheduler.stats.rejections[Rejection.TIMEOUT] == 1
    h.gate.open()
    await asyncio.wait_for(asyncio.gather(*busy), WAIT)
    assert sorted(v for call in h.log.values for v in call) == [0, 1]
