"""The queue in front of one model version's instances.

Requests wait in arrival order; whenever an instance is idle the scheduler hands it the oldest
waiting request, joined (when the model has ``dynamic_batching``) by the waiting requests that
can share its batch, up to max_batch_size: what waited while the instances were busy, and what
arrived in the same event-loop iteration (dispatch waits for the end of the iteration). Batches
are executed on the instance threads; the event loop only queues, merges bookkeeping and wakes
the waiters. An instance that runs on the event loop is never busy when a request arrives, and
waiting for the iteration's end would only cost a suspension: its requests run at once, one by
one. A request whose caller went away (its future cancelled) leaves the queue and is never
executed."""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from backends.base import Backend, Tensors
from backends.common.errors import Unavailable
from backends.common.outputs import check_outputs, output_specs
from backends.proto import model_config_pb2 as mc
from schedulers.aimd import AimdController, aimd_settings
from schedulers.batching import batch_key, merge, split
from schedulers.instance import InstanceWorker
from schedulers.queue_policy import QueuePolicies
from schedulers.stats import ExecutionTimes, ModelStats


class _Pending:
    __slots__ = ("batch_size", "enqueued_ns", "future", "inputs", "key", "level", "timer")

    def __init__(
        self, inputs: Tensors, batch_size: int, future: asyncio.Future[Tensors], key: Any, level: int = 0
    ) -> None:
        self.inputs = inputs
        self.batch_size = batch_size
        self.future = future
        self.key = key
        self.level = level  # priority level, 1 the highest; 0 when the model has none
        self.timer: asyncio.TimerHandle | None = None  # the queue timeout, while queued
        self.enqueued_ns = time.perf_counter_ns()


@dataclass
class _Batch:
    requests: list[_Pending]
    seq: int = 0  # dispatch order, for preserve_ordering

    @property
    def sizes(self) -> list[int]:
        return [r.batch_size for r in self.requests]


class ModelScheduler:
    """Queues requests for one model version and runs them on its instances."""

    def __init__(self, config: mc.ModelConfig, workers: Sequence[InstanceWorker], stats: ModelStats) -> None:
        self.config = config
        self.stats = stats
        self._workers = list(workers)
        self._idle: list[InstanceWorker] = list(workers)
        self._queue: deque[_Pending] = deque()
        self._batching = config.HasField("dynamic_batching") and config.max_batch_size > 0
        self._max_batch_size = config.max_batch_size
        self._max_batch = max(config.max_batch_size, 1)
        self._specs = output_specs(config)
        self.aimd = AimdController(aimd_settings(config), self._max_batch)  # the cap batches are formed under
        dynamic = config.dynamic_batching
        self._policies = QueuePolicies(config)
        # Triton's batch shaping: wait up to the delay for a batch to fill, prefer these sizes
        self._delay_ns = dynamic.max_queue_delay_microseconds * 1000 if self._batching else 0
        self._preferred = sorted(set(dynamic.preferred_batch_size)) if self._batching else []
        self._timer: asyncio.TimerHandle | None = None
        # preserve_ordering: answers leave in dispatch order even when a later batch ends first
        self._ordered = self._batching and dynamic.preserve_ordering and len(self._workers) > 1
        self._dispatched = 0
        self._released = 0
        self._finished: dict[int, Callable[[], None]] = {}
        self._closed = False
        self._drained = asyncio.Event()
        self._drained.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dispatching = False
        self._dispatch_scheduled = False
        # an instance on the event loop would only pay a suspension for the wait: it runs at once
        self._inline = any(w.on_loop for w in self._workers) and not self._delay_ns
        self._defer = self._batching and not self._inline

    @property
    def pending(self) -> int:
        """Requests waiting for an instance (Triton's pending request count)."""
        return sum(1 for r in self._queue if not r.future.done())

    def _waiting(self, level: int) -> int:
        return sum(1 for r in self._queue if r.level == level and not r.future.done())

    @property
    def in_flight(self) -> int:
        return len(self._queue) + len(self._workers) - len(self._idle)

    async def execute(self, inputs: Tensors, batch_size: int, priority: int = 0, timeout_us: int = 0) -> Tensors:
        """Runs one request (``batch_size`` rows, 1 for unbatched models) and returns its outputs.
        ``priority`` and ``timeout_us`` are the request's parameters (0: not given)."""
        if self._closed:
            raise Unavailable(f"model '{self.config.name}' is unloading")
        level = self._policies.level(priority) if self._batching else 0
        if self._batching and self._policies.bounded:
            bound = self._policies.policy(level).max_queue_size
            if bound and len(self._queue) >= bound and self._waiting(level) >= bound:
                raise Unavailable(f"model '{self.config.name}': the queue is full ({bound} requests waiting)")
        if self._inline and self._idle and not self._queue:
            return self._run_inline(inputs, batch_size)
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        key = batch_key(inputs) if self._batching else None
        pending = _Pending(inputs, batch_size, loop.create_future(), key, level)
        self._enqueue(pending, timeout_us)
        self._drained.clear()
        if self._defer:
            if not self._dispatch_scheduled:
                # the end of this loop iteration: requests that arrived together batch together
                self._dispatch_scheduled = True
                loop.call_soon(self._dispatch)
        else:
            self._dispatch()
        return await pending.future

    def _enqueue(self, pending: _Pending, timeout_us: int) -> None:
        """Behind every request of its priority level or a higher one; the queue timeout armed."""
        queue = self._queue
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
                pending.timer = self._loop.call_later(timeout_ns / 1e9, self._expire, pending, policy.delay)

    def _expire(self, pending: _Pending, delay: bool) -> None:
        """The request waited its queue timeout: rejected, or sent behind the requests still in time."""
        pending.timer = None
        if pending.future.done() or pending not in self._queue:
            return
        if not delay:
            self._queue.remove(pending)
            pending.future.set_exception(
                Unavailable(f"model '{self.config.name}': request timeout expired in the queue")
            )
            return
        self._queue.remove(pending)
        self._queue.append(pending)  # behind everything queued now; it keeps its place after that
        pending.level = max((r.level for r in self._queue), default=pending.level)

    def _run_inline(self, inputs: Tensors, batch_size: int) -> Tensors:
        """An idle instance on the event loop and nobody waiting: run now, without queue or future."""
        self.stats.queue.add(0)
        result, error = self._idle[-1].run_now(self._job([inputs], [batch_size]))
        if error is not None:
            raise error
        outputs, times = result
        self.stats.record_execution(batch_size, 1, times)
        self.aimd.observe(batch_size, sum(times))
        return outputs[0]  # type: ignore[no-any-return]

    async def close(self) -> None:
        """Stops taking requests, lets queued and running ones finish, unloads the instances."""
        self._closed = True
        if self._queue:
            self._dispatch()  # a batch waiting for its delay goes now
        await self._drained.wait()
        await asyncio.gather(*(w.stop() for w in self._workers))

    def _dispatch(self) -> None:
        self._dispatch_scheduled = False
        if self._dispatching:  # a completion inside submit(): the loop below goes on by itself
            return
        self._dispatching = True
        try:
            while self._idle:
                batch = self._next_batch()
                if batch is None:
                    break
                worker = self._idle.pop()
                assert self._loop is not None
                job = self._job([r.inputs for r in batch.requests], batch.sizes)
                worker.submit(job, self._loop, self._completion(worker, batch))
        finally:
            self._dispatching = False
        if not self._queue and len(self._idle) == len(self._workers):
            self._drained.set()

    def _next_batch(self) -> _Batch | None:
        queue = self._queue
        while queue and queue[0].future.done():  # cancelled while waiting: never executed
            queue.popleft()
        if not queue:
            return None
        limit = self._batch_limit(queue[0])
        if limit is None:
            return None
        first = queue.popleft()
        batch = [first]
        if self._batching:
            self._fill(batch, first, limit)
        now = time.perf_counter_ns()
        for request in batch:
            self.stats.queue.add(now - request.enqueued_ns)
            if request.timer is not None:
                request.timer.cancel()
                request.timer = None
        self._dispatched += 1
        return _Batch(batch, self._dispatched - 1)

    def _batch_limit(self, first: _Pending) -> int | None:
        """How many rows the next batch may take, or None to wait for more requests: a full
        batch (the AIMD cap) goes at once, else the largest preferred size that the waiting
        requests reach, else what there is once the oldest has waited the max queue delay."""
        cap = self.aimd.cap
        if not self._batching:
            return cap
        rows = self._rows_waiting(first, cap)
        if rows >= cap:
            return cap
        reachable = [size for size in self._preferred if size <= rows]
        if reachable:
            return reachable[-1]
        waited = time.perf_counter_ns() - first.enqueued_ns
        if self._delay_ns and waited < self._delay_ns and not self._closed:
            self._wake_in(self._delay_ns - waited)
            return None
        return cap

    def _rows_waiting(self, first: _Pending, cap: int) -> int:
        """Rows that could join ``first``'s batch now, counting up to ``cap``."""
        rows = 0
        for request in self._queue:  # as _fill will take them: same shape, skipping what does not fit
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

    def _fill(self, batch: list[_Pending], first: _Pending, limit: int) -> None:
        """Adds later requests of the same shape while they fit; others keep their place."""
        rows = first.batch_size
        skipped: list[_Pending] = []
        queue = self._queue
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
        return functools.partial(_run_batch, parts, sizes, batch, self.config.name, self._specs)

    def _completion(self, worker: InstanceWorker, batch: _Batch) -> Any:
        def done(result: tuple[list[Tensors], ExecutionTimes] | None, error: BaseException | None) -> None:
            self._idle.append(worker)
            if error is None and result is not None:
                rows = sum(batch.sizes)
                self.stats.record_execution(rows, len(batch.requests), result[1])
                self.aimd.observe(rows, sum(result[1]))
            deliver = functools.partial(_deliver, batch.requests, result, error)
            if self._ordered:
                self._finished[batch.seq] = deliver
                while self._released in self._finished:
                    self._finished.pop(self._released)()
                    self._released += 1
            else:
                deliver()
            self._dispatch()

        return done


def _deliver(
    requests: list[_Pending], result: tuple[list[Tensors], ExecutionTimes] | None, error: BaseException | None
) -> None:
    """Each request of an executed batch gets its rows, or the batch's error."""
    if error is not None or result is None:
        for request in requests:
            if not request.future.done():
                request.future.set_exception(error or RuntimeError("no result"))
        return
    for request, output in zip(requests, result[0], strict=True):
        if not request.future.done():
            request.future.set_result(output)


def _run_batch(
    parts: list[Tensors], sizes: list[int], batch: int | None, model: str, specs: Any, backend: Backend
) -> tuple[list[Tensors], ExecutionTimes]:
    """One execution, on the instance's thread: merge, run, check against the config, split."""
    t0 = time.perf_counter_ns()
    inputs = merge(parts)
    t1 = time.perf_counter_ns()
    outputs = check_outputs(model, specs, backend.execute(inputs), batch)
    t2 = time.perf_counter_ns()
    result = split(outputs, sizes)
    return result, ExecutionTimes(t1 - t0, t2 - t1, time.perf_counter_ns() - t2)
