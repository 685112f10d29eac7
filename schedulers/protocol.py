"""What the server sees of a model version's scheduler, whichever kind it is (the dynamic batcher
of schedulers/scheduler.py, the ensemble pipeline of schedulers/ensemble.py): run a request,
count what waits, report each device, close."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from backends.base import Tensors
from backends.remote.endpoints import EndpointStatistics
from schedulers.stats import ModelStats


@dataclass(frozen=True, slots=True)
class DeviceStatistics:
    """One device's batcher at one moment, as the metrics endpoint exports it."""

    device: str  # "cpu", "cuda:0"
    batch_size_cap: int  # the largest batch formed now: max_batch_size, or the AIMD cap
    batch_latency_ns: int  # the latest batch's execution time
    batches_over_target: int  # batches slower than the latency target
    time_over_target_ns: int  # and by how much, summed
    executions: int  # batches executed
    inline_executions: int  # requests run at once on the event loop
    rows: int  # inferences (rows) executed
    depth: float  # requests queued or executing, per instance


@dataclass(frozen=True, slots=True)
class SequenceStatistics:
    """A sequence scheduler's counters, as the metrics endpoint exports them."""

    active: int  # sequences holding a slot
    backlog: int  # sequences waiting for one
    started: int  # requests with sequence_start accepted
    ended: int  # sequences ended by a request with sequence_end
    expired: int  # sequences freed for being idle


class Scheduler(Protocol):
    """One model version's scheduler."""

    @property
    def stats(self) -> ModelStats:
        """The version's counters, which the scheduler updates."""

    @property
    def pending(self) -> int:
        """Requests waiting for an instance (Triton's pending request count)."""

    @property
    def in_flight(self) -> int:
        """Requests queued or executing."""

    async def execute(self, inputs: Tensors, batch_size: int, priority: int = 0, timeout_us: int = 0) -> Tensors:
        """Runs one request (``batch_size`` rows) and returns its outputs."""

    def device_statistics(self) -> list[DeviceStatistics]:
        """Each device's batcher now; none for a scheduler that queues nothing itself."""

    async def close(self) -> None:
        """Stops taking requests, lets the admitted ones finish, releases the instances."""


@runtime_checkable
class SequenceScheduling(Protocol):
    """A scheduler of sequences (schedulers/sequence.py): requests that carry a correlation id."""

    async def execute_sequence(
        self, inputs: Tensors, batch_size: int, corrid: int | str, start: bool, end: bool
    ) -> Tensors: ...

    def sequence_statistics(self) -> SequenceStatistics: ...


@runtime_checkable
class RemoteEndpoints(Protocol):
    """A scheduler whose devices are remote endpoints (schedulers/remote.py): ready while one is
    healthy, with each endpoint's counters."""

    @property
    def ready(self) -> bool: ...

    def endpoint_statistics(self) -> list[EndpointStatistics]: ...
