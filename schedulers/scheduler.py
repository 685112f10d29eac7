"""The scheduler of one model version: one queue and dynamic batcher per device its instances
are placed on (every CPU instance shares the ``cpu`` queue; each GPU has its own), each with its
own AIMD cap. A request goes to the device that should answer it first: the depth of its queue
(batches ahead, per instance) weighted by the device's recent batch time, so a faster device
takes more of the work and a slow one helps only once the fast one's queue has grown. Until
every device has executed a batch, between equally fast ones, and for one decision in
``_EXPLORE``, the shortest queue per instance wins. Admission (unloading, queue
bounds) and preserve_ordering are decided here, for the model version as a whole."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass

from backends.base import Tensors
from backends.common.errors import ClipperdError, InternalError, Unavailable
from backends.common.streaming import AnswerStream
from backends.proto import model_config_pb2 as mc
from schedulers.aimd import AimdController
from schedulers.batch_views import batch_key
from schedulers.device_queue import DeviceQueue, Pending
from schedulers.instance import ModelInstance
from schedulers.ordering import ResponseOrder
from schedulers.protocol import DeviceStatistics
from schedulers.queue_policy import QueuePolicies
from schedulers.rate_limiter import RateLimiter
from schedulers.stats import ModelStats, Rejection
from schedulers.timeline import CURRENT

# one routing decision in this many goes by queue depth alone, so that a device whose estimate
# is stale (it slowed once, and then got no work to show it is fast again) is measured again
_EXPLORE = 32


@dataclass(frozen=True, slots=True)
class Streamed:
    """A decoupled request in flight: its answers, and its execution (done once started)."""

    answers: AnswerStream
    execution: asyncio.Future[Tensors]

    def cancel(self) -> None:
        """The reader went away: out of the queue if still there, the model told."""
        self.execution.cancel()
        self.answers.cancel()


def _started(stream: AnswerStream, execution: asyncio.Future[Tensors]) -> None:
    """A request that failed before or while executing ends its stream with the error."""
    if execution.cancelled():
        return
    error = execution.exception()
    if error is not None:
        failure = error if isinstance(error, ClipperdError) else InternalError(f"execution failed: {error!r}")
        stream.fail(failure)


def _wait_then_depth(queue: DeviceQueue) -> tuple[float, float]:
    return queue.expected_ns, queue.depth


def _depth(queue: DeviceQueue) -> float:
    return queue.depth


class ModelScheduler:
    """Routes one model version's requests to its per-device queues."""

    def __init__(
        self,
        config: mc.ModelConfig,
        instances: Sequence[ModelInstance],
        stats: ModelStats,
        devices: Sequence[str] = (),
        limiter: RateLimiter | None = None,
    ) -> None:
        """``devices[i]`` is where ``instances[i]`` runs (all ``cpu`` when not given); ``limiter``
        holds the instances that have rate-limiter resources (schedulers/rate_limiter.py)."""
        self.config = config
        self.stats = stats
        self._batching = config.HasField("dynamic_batching") and config.max_batch_size > 0
        self._policies = QueuePolicies(config)
        ordered = self._batching and config.dynamic_batching.preserve_ordering and len(instances) > 1
        self._order = ResponseOrder(ordered)
        placed: dict[str, list[ModelInstance]] = {}
        for index, instance in enumerate(instances):
            placed.setdefault(devices[index] if devices else "cpu", []).append(instance)
        self.queues = [
            DeviceQueue(device, config, group, stats, self._policies, self._order, limiter)
            for device, group in placed.items()
        ]
        self._closed = False
        self._routed = 0

    @property
    def aimd(self) -> AimdController:
        """The first device's AIMD controller (the only one for a model on one device)."""
        return self.queues[0].aimd

    @property
    def pending(self) -> int:
        """Requests waiting for an instance, on every device (Triton's pending request count)."""
        return sum(q.pending for q in self.queues)

    @property
    def in_flight(self) -> int:
        return sum(q.in_flight for q in self.queues)

    def device_statistics(self) -> list[DeviceStatistics]:
        return [q.statistics() for q in self.queues]

    async def execute(self, inputs: Tensors, batch_size: int, priority: int = 0, timeout_us: int = 0) -> Tensors:
        """Runs one request (``batch_size`` rows, 1 for unbatched models) and returns its outputs.
        ``priority`` and ``timeout_us`` are the request's parameters (0: not given)."""
        level = self._admitted(priority)
        queue = self._route()
        timeline = CURRENT.get()  # set around a traced request only (schedulers/timeline.py)
        if queue.runs_now(batch_size):
            return queue.run_inline(inputs, batch_size, timeline)
        inline = queue.runs_async_now()  # a batch of one at once: no batch key needed
        key = batch_key(inputs) if self._batching and not inline else None
        future = queue.loop().create_future()
        pending = Pending(inputs, batch_size, future, key, level, timeout_us * 1000, timeline)
        if inline:
            return await queue.run_async_inline(pending)
        queue.submit(pending, timeout_us)
        return await pending.future

    def execute_stream(self, inputs: Tensors, batch_size: int, priority: int = 0, timeout_us: int = 0) -> Streamed:
        """Queues one request of a decoupled model; its answers arrive on the returned stream
        while it executes (the batcher treats it as any request). Cancelling the returned
        future takes a request that has not started out of its queue."""
        level = self._admitted(priority)
        stream = AnswerStream()
        future: asyncio.Future[Tensors] = asyncio.get_running_loop().create_future()
        future.add_done_callback(functools.partial(_started, stream))
        key = batch_key(inputs) if self._batching else None
        pending = Pending(inputs, batch_size, future, key, level, timeout_us * 1000)
        pending.stream = stream
        self._route().submit(pending, timeout_us)
        return Streamed(stream, future)

    def _admitted(self, priority: int) -> int:
        """The request's priority level, once the model takes it (not unloading, its queue bounds)."""
        if self._closed:
            self.stats.rejections[Rejection.UNLOADING] += 1
            raise Unavailable(f"model '{self.config.name}' is unloading")
        level = self._policies.level(priority) if self._batching else 0
        if self._batching and self._policies.bounded:
            self._admit(level)
        return level

    def _admit(self, level: int) -> None:
        """A level whose queue holds its max_queue_size rejects at once (UNAVAILABLE / 503)."""
        bound = self._policies.policy(level).max_queue_size
        if not bound or sum(len(q.queue) for q in self.queues) < bound:
            return
        if sum(q.waiting(level) for q in self.queues) >= bound:
            self.stats.rejections[Rejection.QUEUE_FULL] += 1
            raise Unavailable(f"model '{self.config.name}': the queue is full ({bound} requests waiting)")

    def _route(self) -> DeviceQueue:
        return self._pick(self.queues)

    def _pick(self, queues: Sequence[DeviceQueue]) -> DeviceQueue:
        """The queue expected to answer first (see the module's doc)."""
        if len(queues) == 1:
            return queues[0]
        self._routed += 1
        if self._routed % _EXPLORE and all(q.batch_ns for q in queues):
            return min(queues, key=_wait_then_depth)
        return min(queues, key=_depth)

    async def warm_up(self, inputs: Tensors, batch_size: int) -> None:
        """Runs one warm-up sample on every instance (schedulers/warmup.py), uncounted."""
        for queue in self.queues:
            await queue.warm_up(inputs, batch_size)

    async def close(self) -> None:
        """Stops taking requests, lets queued and running ones finish, unloads the instances."""
        self._closed = True
        await asyncio.gather(*(q.close() for q in self.queues))
