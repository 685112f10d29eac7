"""Triton's queue policies for the dynamic batcher: priority levels (1 is the highest; a request
without one gets ``default_priority_level``) and, per level, a queue timeout with its action
(REJECT fails the request, DELAY sends it behind the requests still in time), whether a request's
own ``timeout`` parameter may shorten it, and the queue's bound."""

from __future__ import annotations

from dataclasses import dataclass

from backends.common.errors import InvalidArgument
from backends.proto import model_config_pb2 as mc


@dataclass(frozen=True)
class LevelPolicy:
    timeout_ns: int  # 0: requests wait as long as it takes
    allow_override: bool  # a request's "timeout" parameter may shorten it
    delay: bool  # on timeout: True sends the request behind the others, False rejects it
    max_queue_size: int  # 0: unbounded


def _policy(policy: mc.ModelQueuePolicy) -> LevelPolicy:
    delay = policy.timeout_action == mc.ModelQueuePolicy.DELAY
    return LevelPolicy(policy.default_timeout_microseconds * 1000, policy.allow_timeout_override, delay,
                       policy.max_queue_size)  # fmt: skip


class QueuePolicies:
    def __init__(self, config: mc.ModelConfig) -> None:
        batching = config.dynamic_batching
        self.model = config.name
        self.levels = batching.priority_levels
        self.default_level = batching.default_priority_level if self.levels else 0
        default = _policy(batching.default_queue_policy)
        self._by_level = {level: _policy(p) for level, p in batching.priority_queue_policy.items()}
        self._default = default
        self.bounded = any(p.max_queue_size for p in (default, *self._by_level.values()))  # else no counting

    def level(self, priority: int) -> int:
        """The queue level of a request's ``priority`` parameter (0: the default level)."""
        if not self.levels or priority == 0:
            return self.default_level
        if priority > self.levels:
            raise InvalidArgument(
                f"priority {priority} is not a priority level of model '{self.model}' (1 to {self.levels}; "
                "1 is the highest)"
            )
        return priority

    def policy(self, level: int) -> LevelPolicy:
        return self._by_level.get(level, self._default)

    def timeout_ns(self, policy: LevelPolicy, requested_us: int) -> int:
        """The request's queue timeout: the level's, or the request's own where it may shorten it."""
        requested = requested_us * 1000
        if requested and policy.allow_override and (not policy.timeout_ns or requested < policy.timeout_ns):
            return requested
        return policy.timeout_ns
