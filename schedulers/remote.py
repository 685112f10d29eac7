"""The scheduler of a remote model (backends/remote): each endpoint is a device, with its own
queue, dynamic batcher and AIMD cap (schedulers/device_queue.py), and ``instance_group.count``
batches in flight to it. A formed batch goes out as one remote request; a request goes to the
healthy endpoint expected to answer first (queue depth by the endpoint's recent latency, the
routing of schedulers/scheduler.py), so each endpoint's cap follows its own latency.

Failures are expected. A batch whose endpoint fails (connection, UNAVAILABLE, timeout) ejects
the endpoint at once; each of its requests is sent once to another healthy endpoint when its
timeout leaves time for it there, else fails UNAVAILABLE naming the endpoint. The requests
queued for an endpoint that is ejected or disappears (DNS) move to the others. The remote
model's own errors pass through with their status, never retried. With no endpoint healthy the
model is not ready and requests fail at once."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from pathlib import Path

from backends.base import Device, InstanceContext
from backends.common.parameters import Parameters
from backends.proto import model_config_pb2 as mc
from backends.remote.backend import RemoteBackend, call_spec
from backends.remote.endpoints import Endpoint, EndpointPool, EndpointStatistics
from backends.remote.errors import EndpointFailure
from backends.remote.settings import remote_settings
from schedulers.device_queue import DeviceQueue, Pending
from schedulers.instance import ModelInstance
from schedulers.scheduler import ModelScheduler
from schedulers.stats import ModelStats

MAX_IN_FLIGHT_PER_ENDPOINT = 256  # instance_group count: batches (and HTTP connections) per endpoint
REMOTE = Device("remote")


async def build_remote_scheduler(config: mc.ModelConfig, version: int, version_path: Path) -> RemoteScheduler:
    """The version's scheduler, its endpoints resolved and checked once; ConfigError for bad
    parameters, Unavailable when the endpoints' name does not resolve."""
    params = Parameters.of(config)
    settings = remote_settings(params)
    per_endpoint = sum(group.count or 1 for group in config.instance_group) or 1
    if per_endpoint > MAX_IN_FLIGHT_PER_ENDPOINT:
        problem = f"count is the batches in flight per endpoint: at most {MAX_IN_FLIGHT_PER_ENDPOINT}"
        raise params.fail("instance_group", problem, str(per_endpoint))
    pool = EndpointPool(settings, call_spec(config, settings, per_endpoint))
    context = InstanceContext(config, version, version_path, REMOTE, config.name, 1, params.values)
    scheduler = RemoteScheduler(config, pool, context, per_endpoint, ModelStats())
    try:
        await pool.start(scheduler)
    except BaseException:
        await scheduler.close()
        raise
    return scheduler


class RemoteScheduler(ModelScheduler):
    """One DeviceQueue per endpoint of ``pool``; the pool's listener."""

    def __init__(
        self, config: mc.ModelConfig, pool: EndpointPool, context: InstanceContext, per_endpoint: int, stats: ModelStats
    ) -> None:
        super().__init__(config, [], stats)
        self.pool = pool
        self._context = context
        self._per_endpoint = per_endpoint
        self._by_address: dict[str, tuple[DeviceQueue, Endpoint]] = {}

    @property
    def ready(self) -> bool:
        """At least one endpoint is healthy."""
        return self.pool.ready

    def endpoint_statistics(self) -> list[EndpointStatistics]:
        return [e.stats for e in self.pool.endpoints.values()]

    async def close(self) -> None:
        await super().close()
        await self.pool.close()

    # -- routing ----------------------------------------------------------------------------------

    def _route(self) -> DeviceQueue:
        healthy = self._healthy()
        if not healthy:
            raise self.pool.unavailable()
        return self._pick(healthy)

    def _healthy(self, exclude: DeviceQueue | None = None) -> list[DeviceQueue]:
        return [q for q, e in self._by_address.values() if e.healthy and q is not exclude]

    def _resend(self, requests: Sequence[Pending], exclude: DeviceQueue, failure: EndpointFailure) -> None:
        """Each request to the healthy endpoint expected to answer first, when its timeout
        leaves time for that, else failed with ``failure`` (a copy each)."""
        now = time.perf_counter_ns()
        for request in requests:
            if request.future.done():
                continue
            targets = self._healthy(exclude)
            target = self._pick(targets) if targets else None
            if target is not None and request.time_left_ns(now) > target.expected_ns:
                target.take_over(request)
            else:
                request.future.set_exception(EndpointFailure(failure.endpoint, failure.detail))

    def _failed(self, queue: DeviceQueue, batch: list[Pending], error: BaseException) -> bool:
        """A batch's execution failed: an endpoint failure ejects the endpoint and retries each
        request once elsewhere; the model's own error is left to the batch's requests."""
        if not isinstance(error, EndpointFailure):
            return False
        _, endpoint = self._by_address.get(queue.device, (queue, None))
        if endpoint is not None:
            self.pool.eject(endpoint, error.detail)
        retry = [r for r in batch if r.attempts == 0]
        for request in retry:
            request.attempts = 1
        self._resend(retry, queue, error)
        for request in batch:  # already sent once to another endpoint: no second retry
            if request.attempts and request not in retry and not request.future.done():
                request.future.set_exception(EndpointFailure(error.endpoint, error.detail))
        return True

    # -- the pool's listener --------------------------------------------------------------------

    async def endpoint_added(self, endpoint: Endpoint) -> None:
        make = functools.partial(RemoteBackend, self._context, endpoint)
        name = f"{self.config.name}_{endpoint.address}"
        instances = [
            ModelInstance(f"{name}_{i}", make, asynchronous=True, remote=True) for i in range(self._per_endpoint)
        ]
        for instance in instances:
            await instance.start()
        queue = DeviceQueue(endpoint.address, self.config, instances, self.stats, self._policies, self._order)
        queue.on_failure = self._failed
        self._by_address[endpoint.address] = (queue, endpoint)
        self.queues.append(queue)

    async def endpoint_removed(self, endpoint: Endpoint) -> None:
        """Its queued requests go to the other endpoints; the ones in flight finish there."""
        queue, _ = self._by_address.pop(endpoint.address)
        self.queues.remove(queue)
        self._resend(queue.take_queued(), queue, EndpointFailure(endpoint.address, "removed from the endpoints"))
        await queue.close()

    def endpoint_ejected(self, endpoint: Endpoint) -> None:
        queue, _ = self._by_address[endpoint.address]
        self._resend(queue.take_queued(), queue, EndpointFailure(endpoint.address, endpoint.reason))
