"""The queue and dynamic batcher of one model version on one device.

Requests wait in priority, then arrival, order; whenever an instance of the device is idle the
queue hands it the oldest waiting request, joined (when the model has ``dynamic_batching``) by
the waiting requests that can share its batch, up to the device's AIMD cap: what waited while
the instances were busy, and what arrived in the same event-loop iteration (dispatch waits for
the end of the iteration). Batches are executed on the instance threads; the event loop only
queues, merges bookkeeping and wakes the waiters. An instance that runs on the event loop is
never busy when a request arrives, and waiting for the iteration's end would only cost a
suspension: its requests run at once, one by one. A request whose caller went away (its future
cancelled) leaves the queue and is never executed.

Idle inline execution: a request that finds every instance of the device idle and nobody
waiting runs at once on the event loop when the device's recent single-request executions were
short (at most the instances' ``inline_ns``, scaled to the request's rows). The loop would only
wait for the thread, and the two thread switches, with the idle cores waking for each, cost
more than a small model's forward (on a VM: ~100 µs against a 64->256->256->10 MLP's 35-100).
It applies at low load only: the device must have been idle for at least such an execution's
time (a closed loop of several clients brings the next request right after a completion), and
no other device on the event loop may have work queued or executing (its completions need the
loop). Otherwise requests queue and batch on the threads as before: inline executions never
batch, so under load they would trade the batcher's throughput for the switches saved.

An asynchronous instance (a remote model, a model whose batches are coroutines) that is idle,
with nobody waiting and no batching window, takes a request's batch of one in the request's own
task (``run_async_inline``): the same batch a dispatch would form at once, without its task and
future hand-off; completion is the dispatched batch's."""

from __future__ import annotations

import asyncio
import functools
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import Any

from backends.base import Backend, Tensors
from backends.common.errors import ClipperdError, Unavailable
from backends.common.outputs import check_outputs, output_specs
from backends.common.streaming import AnswerStream
from backends.proto import model_config_pb2 as mc
from schedulers.aimd import AimdController, aimd_settings
from schedulers.batch_views import split
from schedulers.instance import ModelInstance
from schedulers.ordering import ResponseOrder
from schedulers.protocol import DeviceStatistics
from schedulers.queue_policy import QueuePolicies
from schedulers.rate_limiter import RateLimiter
from schedulers.stats import ExecutionTimes, ModelStats, Rejection
from schedulers.timeline import Timeline, next_batch_id

_SMOOTHING = 0.2  # weight of the latest batch in a device's moving average of batch time


class _Activity:
    """Per event loop: how many of its devices have requests queued or executing."""

    __slots__ = ("devices",)

    def __init__(self) -> None:
        self.devices = 0


_active: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Activity] = weakref.WeakKeyDictionary()
# set while a model that takes its batch as requests executes: a call it makes to another model
# (BLS) carries it to the loop, where the caller's own device, which only waits for that call,
# does not keep the callee from running inline
_in_execution: ContextVar[int] = ContextVar("clipperd_in_execution", default=0)


class Pending:
    """One request while it waits in a queue."""

    __slots__ = (
        "attempts", "batch_size", "enqueued_ns", "future", "inputs", "key", "level", "stream", "timeline",
        "timeout_ns", "timer",
    )  # fmt: skip

    def __init__(
        self,
        inputs: Tensors,
        batch_size: int,
        future: asyncio.Future[Tensors],
        key: Any,
        level: int = 0,
        timeout_ns: int = 0,
        timeline: Timeline | None = None,
    ) -> None:
        self.inputs = inputs
        self.batch_size = batch_size
        self.future = future
        self.key = key
        self.level = level  # priority level, 1 the highest; 0 when the model has none
        self.timer: asyncio.TimerHandle | None = None  # the queue timeout, while queued
        self.enqueued_ns = time.perf_counter_ns()
        self.timeout_ns = timeout_ns  # the request's own timeout, from its arrival (0: none)
        self.attempts = 0  # executions that failed on an endpoint and were sent to another
        self.stream: AnswerStream | None = None  # a decoupled model's request: where its answers go
        self.timeline = timeline  # a traced request's (schedulers/timeline.py); None: not traced

    def time_left_ns(self, now_ns: int) -> float:
        """How long the request may still take by its timeout (infinite without one)."""
        if not self.timeout_ns:
            return float("inf")
        return self.enqueued_ns + self.timeout_ns - now_ns


class DeviceQueue:
    """Queues requests for the instances of one model version on one device and runs them."""

    def __init__(
        self,
        device: str,
        config: mc.ModelConfig,
        instances: Sequence[ModelInstance],
        stats: ModelStats,
        policies: QueuePolicies,
        order: ResponseOrder,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.device = device
        self.config = config
        self.stats = stats
        self._instances = list(instances)
        self._idle: list[ModelInstance] = list(instances)
        self.queue: deque[Pending] = deque()
        self._batching = config.HasField("dynamic_batching") and config.max_batch_size > 0
        self._max_batch_size = config.max_batch_size
        self._specs = output_specs(config)
        self.aimd = AimdController(aimd_settings(config), max(config.max_batch_size, 1))
        self.executions = 0  # batches executed on this device
        self.batch_ns = 0.0  # moving average of its batches' execution time; 0 until one ran
        self._warm: set[str] = set()  # instances past their first batch
        self.rows = 0  # inferences (rows) they carried
        dynamic = config.dynamic_batching
        self._policies = policies
        self._order = order
        # Triton's batch shaping: wait up to the delay for a batch to fill, prefer these sizes
        self._delay_ns = dynamic.max_queue_delay_microseconds * 1000 if self._batching else 0
        self._preferred = sorted(set(dynamic.preferred_batch_size)) if self._batching else []
        # Clipper's delayed batching: a short wait for more rows right after a batch completes
        self._fill_delay_ns = self.aimd.settings.fill_delay_ns if self._batching else 0
        self._freed_ns: int | None = None  # when a batch last completed; None: none has yet
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._drained = asyncio.Event()
        self._drained.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._activity: _Activity | None = None
        self._dispatching = False
        self._dispatch_scheduled = False
        # an instance on the event loop would only pay a suspension for the wait: it runs at once
        windowless = not (self._delay_ns or self._fill_delay_ns)  # a batching window is honoured
        self._inline = any(w.on_loop for w in self._instances) and windowless
        self._defer = self._batching and not self._inline
        # idle inline execution (see the module's doc): the instances' bound, 0 when not allowed
        self._inline_ns = min(w.inline_ns for w in self._instances) if windowless else 0
        self._solo_ns = 0.0  # moving average of single-request executions, past the warm-up
        self._solo_rows = 0.0  # and of their rows
        self.inline_executions = 0  # requests run at once on the event loop
        self._async = any(w.asynchronous for w in self._instances)
        self._async_inline = self._async and windowless
        # Triton's rate limiter (schedulers/rate_limiter.py): instances with resources run only
        # once granted them; such a device never runs requests inline (that would skip the gate)
        self._limiter = limiter if any(w.slot is not None for w in self._instances) else None
        self._granted: set[ModelInstance] = set()  # idle instances holding their resources
        self._asking: ModelInstance | None = None  # the instance waiting for a grant
        if self._limiter is not None:
            self._inline = self._async_inline = False
            self._inline_ns = 0
            self._defer = self._batching
        self._decoupled = config.model_transaction_policy.decoupled
        # a failed batch's requests: True when the hook took them (to retry them elsewhere)
        self.on_failure: Callable[[DeviceQueue, list[Pending], BaseException], bool] | None = None

    @property
    def pending(self) -> int:
        """Requests waiting for an instance (Triton's pending request count)."""
        return sum(1 for r in self.queue if not r.future.done())

    def waiting(self, level: int) -> int:
        return sum(1 for r in self.queue if r.level == level and not r.future.done())

    @property
    def busy(self) -> int:
        return len(self._instances) - len(self._idle)

    @property
    def in_flight(self) -> int:
        return len(self.queue) + self.busy

    @property
    def depth(self) -> float:
        """Queued and executing requests per instance: where the next request waits least."""
        return self.in_flight / len(self._instances)

    @property
    def expected_ns(self) -> float:
        """When a request queued now would be answered, roughly: the batches ahead of it (the
        running ones, the queued requests at the cap) and its own, at this device's recent batch
        time, shared among its instances: queue depth weighted by the device's speed (0 until
        an instance of the device has executed a batch past its first, which pays the warm-up)."""
        ahead = self.busy + -(-len(self.queue) // self.aimd.cap)
        return (ahead / len(self._instances) + 1) * self.batch_ns

    @property
    def solo_ns(self) -> float:
        """The moving average of this device's single-request executions (0 until measured)."""
        return self._solo_ns

    def statistics(self) -> DeviceStatistics:
        aimd = self.aimd
        return DeviceStatistics(
            self.device,
            aimd.cap,
            aimd.last_latency_ns,
            aimd.over_target,
            aimd.over_target_ns,
            self.executions,
            self.inline_executions,
            self.rows,
            self.depth,
        )

    def runs_now(self, rows: int) -> bool:
        """``run_inline`` applies to a request of ``rows`` rows: nobody waits, and an instance on
        the event loop is idle, or every (thread) instance is idle and the request should take
        at most their ``inline_ns``, by the device's recent single-request executions."""
        if self.queue:
            return False
        if self._inline:
            return bool(self._idle)
        if not self._inline_ns or len(self._idle) < len(self._instances) or not self._solo_ns:
            return False
        expected_ns = self._solo_ns * max(1.0, rows / self._solo_rows)
        if expected_ns > self._inline_ns or self._idle_ns() < expected_ns:
            return False
        return self.activity().devices <= _in_execution.get()

    def _idle_ns(self) -> float:
        """How long since a batch last completed (forever when none has: the monotonic clock's
        zero is the machine's boot, not an event)."""
        if self._freed_ns is None:
            return float("inf")
        return time.perf_counter_ns() - self._freed_ns

    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop it serves (asked once: each asking costs a system call on Python 3.11)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def activity(self) -> _Activity:
        """Its loop's count of busy devices (looked up once: a weak mapping's lookup costs ~1 us)."""
        if self._activity is None:
            self._activity = _active.setdefault(self.loop(), _Activity())
        return self._activity

    def submit(self, pending: Pending, timeout_us: int) -> None:
        """Queues a request; its future gets the outputs or the error."""
        loop = self.loop()
        self._enqueue(pending, timeout_us)
        if self._drained.is_set():
            self._drained.clear()
            self.activity().devices += 1
        if self._defer:
            if not self._dispatch_scheduled:
                # the end of this loop iteration: requests that arrived together batch together
                self._dispatch_scheduled = True
                loop.call_soon(self._dispatch)
        else:
            self._dispatch()

    def take_over(self, pending: Pending) -> None:
        """Queues a request moved here from a device that went away (``take_queued``): its own
        timeout still applies, counted from its arrival."""
        self.submit(pending, pending.timeout_ns // 1000)

    def _enqueue(self, pending: Pending, timeout_us: int) -> None:
        """Behind every request of its priority level or a higher one; the queue timeout armed."""
        queue = self.queue
        if pending.level and queue and queue[-1].level > pending.level:
            index = len(queue)
            while index and queue[index - 1].level > pending.level:
                index -= 1
            queue.insert(index, pending)
        else:
            queue.append(pending)
        if self._batching:
            policy = self._policies.policy(pending.level)
            timeout_ns = self._policies.timeout_ns(policy, timeout_us)
            if timeout_ns:
                assert self._loop is not None
                # counted from the request's arrival: one moved here from another device keeps its clock
                left_ns = max(timeout_ns - (time.perf_counter_ns() - pending.enqueued_ns), 0)
                pending.timer = self._loop.call_later(left_ns / 1e9, self._expire, pending, policy.delay)

    def _expire(self, pending: Pending, delay: bool) -> None:
        """The request waited its queue timeout: rejected, or sent behind the requests still in time."""
        pending.timer = None
        if pending.future.done() or pending not in self.queue:
            return
        self.queue.remove(pending)
        if not delay:
            self.stats.rejections[Rejection.TIMEOUT] += 1
            pending.future.set_exception(
                Unavailable(f"model '{self.config.name}': request timeout expired in the queue")
            )
            return
        self.queue.append(pending)  # behind everything queued now; it keeps its place after that
        pending.level = max((r.level for r in self.queue), default=pending.level)

    def runs_async_now(self) -> bool:
        """``run_async_inline`` applies: an asynchronous instance (a remote model, a model whose
        batches are coroutines) is idle, nobody waits, no batching window, no rate limiter."""
        return self._async_inline and bool(self._idle) and not self.queue and not self._decoupled

    async def run_async_inline(self, pending: Pending) -> Tensors:
        """``runs_async_now``: the request's own task runs its batch of one on the idle instance,
        without the task, the future hand-off and the loop turns of a dispatch; completion
        (statistics, AIMD, a failed endpoint's retry elsewhere, ordering, the next dispatch) is
        the dispatched batch's own."""
        instance = self._idle.pop()
        if self._drained.is_set():
            self._drained.clear()
            self.activity().devices += 1
        now = time.perf_counter_ns()
        self.stats.queue.add(now - pending.enqueued_ns)
        self.inline_executions += 1
        if pending.timeline is not None:
            pending.timeline.enqueued_ns, pending.timeline.dequeued_ns = pending.enqueued_ns, now
        timed = pending.timeline is not None
        done = self._completion(instance, [pending], self._order.ticket(), False, timed, inline=True)
        try:
            await instance.run_async_now(self._job([pending.inputs], [pending.batch_size]), done)
        except asyncio.CancelledError:  # the client went away: done() failed its future, read it here
            if pending.future.done() and not pending.future.cancelled():
                pending.future.exception()
            raise
        return await pending.future  # answered by done, or by another device after a retry

    def run_inline(self, inputs: Tensors, batch_size: int, timeline: Timeline | None = None) -> Tensors:
        """``runs_now``: run on the event loop now, without queue, future or thread switch."""
        self.stats.queue.add(0)
        self.inline_executions += 1
        queued = time.perf_counter_ns()
        result, error = self._idle[-1].run_now(self._job([inputs], [batch_size]))
        self._freed_ns = time.perf_counter_ns()
        if error is not None:
            raise error
        outputs, times = result
        if timeline is not None:
            timeline.enqueued_ns = timeline.dequeued_ns = queued
            timeline.stamp(times, self._freed_ns, next_batch_id(), batch_size, 1)
        self._observe_after_answer(batch_size, 1, times, self._idle[-1])
        if isinstance(outputs[0], BaseException):  # a per-request model failed this request
            raise outputs[0]
        return outputs[0]  # type: ignore[no-any-return]

    async def warm_up(self, inputs: Tensors, batch_size: int) -> None:
        """Runs one warm-up sample on every instance of the device, one after the other, before
        the version serves (so they are idle): no queue, no statistics, no AIMD observation."""
        loop = asyncio.get_running_loop()
        for instance in self._instances:
            future: asyncio.Future[Any] = loop.create_future()

            def done(result: Any, error: BaseException | None, future: asyncio.Future[Any] = future) -> None:
                if not future.done():
                    future.set_result((result, error))

            instance.submit(self._job([inputs], [batch_size]), loop, done)
            result, error = await future
            if error is not None:
                raise error
            if isinstance(result[0][0], BaseException):  # a per-request model failed the sample
                raise result[0][0]

    def take_queued(self) -> list[Pending]:
        """Empties the queue (its requests' queue timeouts disarmed): the requests of a device
        that goes away, for the scheduler to send elsewhere."""
        taken = [r for r in self.queue if not r.future.done()]
        self.queue.clear()
        for request in taken:
            if request.timer is not None:
                request.timer.cancel()
                request.timer = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.busy and not self._drained.is_set():
            self._drained.set()
            assert self._loop is not None
            self.activity().devices -= 1
        return taken

    async def close(self) -> None:
        """Stops taking requests, lets queued and running ones finish, unloads the instances."""
        self._closed = True
        if self.queue:
            self._dispatch()  # a batch waiting for its delay goes now
        await self._drained.wait()
        await asyncio.gather(*(w.stop() for w in self._instances))
        if self._limiter is not None:
            for instance in self._instances:
                if instance.slot is not None:
                    self._limiter.unregister(instance.slot)

    def _dispatch(self) -> None:
        self._dispatch_scheduled = False
        if self._dispatching:  # a completion inside submit(): the loop below goes on by itself
            return
        self._dispatching = True
        try:
            while self._idle:
                instance = self._idle[-1] if self._limiter is None else self._ready_instance()
                if instance is None:  # the idle instances wait for their rate-limiter resources
                    break
                formed = self._next_batch()
                if formed is None:
                    break
                batch, cap_bound, timed = formed
                self._idle.remove(instance)
                self._granted.discard(instance)
                assert self._loop is not None
                if self._decoupled:
                    streams = [r.stream for r in batch if r.stream is not None]
                    job = functools.partial(_run_decoupled, [r.inputs for r in batch], streams)
                else:
                    job = self._job([r.inputs for r in batch], [r.batch_size for r in batch])
                done = self._completion(instance, batch, self._order.ticket(), cap_bound, timed)
                instance.submit(job, self._loop, done)
        finally:
            self._dispatching = False
        if self._granted:  # nothing (more) to run now: holding resources would starve others
            self._give_back()
        if not self.queue and not self.busy and not self._drained.is_set():
            self._drained.set()
            assert self._loop is not None
            self.activity().devices -= 1

    def _ready_instance(self) -> ModelInstance | None:
        """An idle instance that may execute now (no resources, or granted them), asking the
        rate limiter for one when none may; None while the ask is pending or nothing waits."""
        assert self._limiter is not None
        for instance in reversed(self._idle):
            if instance.slot is None or instance in self._granted:
                return instance
        if self._asking is not None or not any(not r.future.done() for r in self.queue):
            return None
        instance = self._idle[-1]
        assert instance.slot is not None
        if self._limiter.acquire(instance.slot, functools.partial(self._on_grant, instance)):
            self._granted.add(instance)
            return instance
        self._asking = instance
        return None

    def _on_grant(self, instance: ModelInstance) -> None:
        self._asking = None
        self._granted.add(instance)
        self._dispatch()

    def _return(self, instance: ModelInstance) -> None:
        """An execution ended: the instance's resources go back, and with work waiting it asks
        again in the same step, competing with the other waiters by priority."""
        assert self._limiter is not None
        assert instance.slot is not None
        if self._asking is not None or not any(not r.future.done() for r in self.queue):
            self._limiter.release(instance.slot)
        elif self._limiter.renew(instance.slot, functools.partial(self._on_grant, instance)):
            self._granted.add(instance)
        else:
            self._asking = instance

    def _give_back(self) -> None:
        """Resources granted to instances that found no batch to run go back at once."""
        assert self._limiter is not None
        for instance in self._granted:
            assert instance.slot is not None
            self._limiter.release(instance.slot)
        self._granted.clear()

    def _next_batch(self) -> tuple[list[Pending], bool, bool] | None:
        """The next batch, whether the AIMD cap cut it to size and whether a request of it is
        traced; None to wait for more."""
        queue = self.queue
        while queue and queue[0].future.done():  # cancelled while waiting: never executed
            queue.popleft()
        if not queue:
            return None
        bounded = self._batch_limit(queue[0])
        if bounded is None:
            return None
        limit, cap_bound = bounded
        first = queue.popleft()
        batch = [first]
        if self._batching:
            self._fill(batch, first, limit)
        now = time.perf_counter_ns()
        timed = False
        for request in batch:
            self.stats.queue.add(now - request.enqueued_ns)
            if request.timer is not None:
                request.timer.cancel()
                request.timer = None
            if request.timeline is not None:
                request.timeline.enqueued_ns, request.timeline.dequeued_ns = request.enqueued_ns, now
                timed = True
        return batch, cap_bound, timed

    def _batch_limit(self, first: Pending) -> tuple[int, bool] | None:
        """How many rows the next batch may take and whether the cap bounds it, or None to wait
        for more requests: a full batch (the AIMD cap) goes at once, else the largest preferred
        size that the waiting requests reach, else what there is once the oldest has waited the
        max queue delay."""
        cap = self.aimd.cap
        if not self._batching:
            return cap, False
        rows = self._rows_waiting(first, 2 * cap if self.aimd.adaptive else cap)
        if cap < rows < 2 * cap:
            return _halves(rows), True
        if rows >= cap:
            return cap, False
        reachable = [size for size in self._preferred if size <= rows]
        if reachable:
            return reachable[-1], False
        now = time.perf_counter_ns()
        wait_ns = self._delay_ns - (now - first.enqueued_ns)
        if self._freed_ns is not None:  # no batch completed yet: nobody's callers to wait for
            wait_ns = max(wait_ns, self._fill_delay_ns - (now - self._freed_ns))
        if wait_ns > 0 and not self._closed:
            self._wake_in(wait_ns)
            return None
        return cap, False

    def _rows_waiting(self, first: Pending, cap: int) -> int:
        """Rows that could join ``first``'s batch now, counting up to ``cap``."""
        rows = 0
        for request in self.queue:  # as _fill will take them: same shape, skipping what does not fit
            if rows >= cap:
                break
            if request.key == first.key and not request.future.done() and rows + request.batch_size <= cap:
                rows += request.batch_size
        return rows

    def _wake_in(self, ns: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        assert self._loop is not None
        self._timer = self._loop.call_later(ns / 1e9, self._dispatch)

    def _fill(self, batch: list[Pending], first: Pending, limit: int) -> None:
        """Adds later requests of the same shape while they fit; others keep their place."""
        rows = first.batch_size
        skipped: list[Pending] = []
        queue = self.queue
        while queue and rows < limit:
            request = queue.popleft()
            if request.future.done():
                continue
            if request.key == first.key and rows + request.batch_size <= limit:
                batch.append(request)
                rows += request.batch_size
            else:
                skipped.append(request)
        queue.extendleft(reversed(skipped))

    def _job(self, parts: list[Tensors], sizes: list[int]) -> Any:
        batch = sum(sizes) if self._max_batch_size > 0 else None
        run = _run_batch_async if self._async else _run_batch
        return functools.partial(run, parts, sizes, batch, self.config.name, self._specs)

    def _completion(
        self,
        instance: ModelInstance,
        batch: list[Pending],
        ticket: int,
        cap_bound: bool,
        timed: bool = False,
        inline: bool = False,
    ) -> Any:
        """The batch's ``done``. ``inline``: the request's own task runs on to its answer after
        it, so the statistics and AIMD wait for the loop's next turn, after the answer is sent."""

        def done(result: tuple[list[Tensors], ExecutionTimes] | None, error: BaseException | None) -> None:
            self._idle.append(instance)
            if self._limiter is not None and instance.slot is not None:
                self._return(instance)
            self._freed_ns = time.perf_counter_ns()
            if error is None and result is not None:
                rows = sum(r.batch_size for r in batch)
                observe = self._observe_after_answer if inline else self._observe
                observe(rows, len(batch), result[1], instance, cap_bound)
                if timed:
                    _stamp(batch, result[1], self._freed_ns, rows)
            answered = batch
            if error is not None and self.on_failure is not None and self.on_failure(self, batch, error):
                answered = []  # the hook answers them (or sends them to another device)
            self._order.release(ticket, functools.partial(_deliver, answered, result, error))
            self._dispatch()

        return done

    def _observe_after_answer(
        self, rows: int, requests: int, times: ExecutionTimes, instance: ModelInstance, cap_bound: bool = False
    ) -> None:
        """``_observe`` at the loop's next turn: an inline execution's caller sends its answer first."""
        self.loop().call_soon(self._observe, rows, requests, times, instance, cap_bound)

    def _observe(
        self, rows: int, requests: int, times: ExecutionTimes, instance: ModelInstance, cap_bound: bool = False
    ) -> None:
        self.stats.record_execution(rows, requests, times)
        self.aimd.observe(rows, sum(times), cap_bound)
        self.executions += 1
        self.rows += rows
        if instance.name not in self._warm:  # a first batch pays the warm-up (CUDA context, kernels)
            self._warm.add(instance.name)
            return
        elapsed = sum(times)
        self.batch_ns = _average(self.batch_ns, elapsed)
        if requests == 1:
            self._solo_ns = _average(self._solo_ns, elapsed)
            self._solo_rows = _average(self._solo_rows, rows)


def _stamp(batch: list[Pending], times: ExecutionTimes, finished_ns: int, rows: int) -> None:
    """The traced requests of an executed batch learn its times and its id."""
    batch_id = next_batch_id()
    for request in batch:
        if request.timeline is not None:
            request.timeline.stamp(times, finished_ns, batch_id, rows, len(batch))


def _halves(rows: int) -> int:
    """Under an AIMD cap, more than one batch but less than two wait: two equal batches. When the
    cap falls a little under the load, 64 rows under a cap of 57 go as 32 and 32, not 57 and a
    straggling 7 that waits a whole batch more. Such a batch is as full as the cap allows: it
    counts as full for AIMD."""
    return -(-rows // 2)


def _average(average: float, value: float) -> float:
    """An exponential moving average: ``value`` itself when there is none yet."""
    return value if not average else average + _SMOOTHING * (value - average)


def _deliver(
    requests: list[Pending], result: tuple[list[Tensors], ExecutionTimes] | None, error: BaseException | None
) -> None:
    """Each request of an executed batch gets its rows, or the batch's error."""
    if error is not None or result is None:
        for request in requests:
            if not request.future.done():
                request.future.set_exception(error or RuntimeError("no result"))
        return
    for request, output in zip(requests, result[0], strict=True):
        if request.future.done():
            continue
        if isinstance(output, BaseException):  # a per-request model failed this request alone
            request.future.set_exception(output)
        else:
            request.future.set_result(output)


def _run_batch(
    parts: list[Tensors], sizes: list[int], batch: int | None, model: str, specs: Any, backend: Backend
) -> tuple[list[Tensors], ExecutionTimes]:
    """One execution, on the instance's thread: gather, run, check against the config, split."""
    if backend.per_request:
        return _run_requests(parts, sizes, batch is not None, model, specs, backend)
    t0 = time.perf_counter_ns()
    inputs = backend.stage(parts)
    t1 = time.perf_counter_ns()
    outputs = check_outputs(model, specs, backend.execute(inputs), batch)
    t2 = time.perf_counter_ns()
    result = split(outputs, sizes)
    return result, ExecutionTimes(t1 - t0, t2 - t1, time.perf_counter_ns() - t2)


async def _run_batch_async(
    parts: list[Tensors], sizes: list[int], batch: int | None, model: str, specs: Any, backend: Backend
) -> tuple[list[Any], ExecutionTimes]:
    """One execution of an asynchronous backend (a remote call, a model whose batches are
    coroutines), as a task on the event loop."""
    t0 = time.perf_counter_ns()
    if backend.per_request:
        token = _in_execution.set(1)  # reset after: the task may be a request's own (run_async_inline)
        try:
            results: list[Any] = await backend.execute_requests_async(parts)
        finally:
            _in_execution.reset(token)
        t1 = time.perf_counter_ns()
        _check_each(results, sizes, batch is not None, model, specs)
        return results, ExecutionTimes(0, t1 - t0, time.perf_counter_ns() - t1)
    inputs = backend.stage(parts)
    t1 = time.perf_counter_ns()
    outputs = check_outputs(model, specs, await backend.execute_async(inputs), batch)
    t2 = time.perf_counter_ns()
    result = split(outputs, sizes)
    return result, ExecutionTimes(t1 - t0, t2 - t1, time.perf_counter_ns() - t2)


def _run_decoupled(
    parts: list[Tensors], streams: list[AnswerStream], backend: Backend
) -> tuple[list[None], ExecutionTimes]:
    """One execution of a decoupled model: its answers go to each request's stream (checked
    against the config by their reader); the batch is done when ``execute_decoupled`` returns."""
    t0 = time.perf_counter_ns()
    backend.execute_decoupled(parts, streams)
    return [None] * len(parts), ExecutionTimes(0, time.perf_counter_ns() - t0, 0)


def _run_requests(
    parts: list[Tensors], sizes: list[int], batched: bool, model: str, specs: Any, backend: Backend
) -> tuple[list[Any], ExecutionTimes]:
    """One execution of a model that takes the batch as its requests: each request's outputs
    are checked on their own, and a bad one fails only its request."""
    t0 = time.perf_counter_ns()
    token = _in_execution.set(1)
    try:
        results: list[Any] = backend.execute_requests(parts)
    finally:
        _in_execution.reset(token)
    t1 = time.perf_counter_ns()
    _check_each(results, sizes, batched, model, specs)
    return results, ExecutionTimes(0, t1 - t0, time.perf_counter_ns() - t1)


def _check_each(results: list[Any], sizes: list[int], batched: bool, model: str, specs: Any) -> None:
    """Each request's outputs against the config, in place: a bad one fails only its request."""
    for i, (output, size) in enumerate(zip(results, sizes, strict=True)):
        if not isinstance(output, BaseException):
            try:
                results[i] = check_outputs(model, specs, output, size if batched else None)
            except ClipperdError as error:
                results[i] = error
