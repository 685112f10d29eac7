"""Counters and cumulative durations per model version, Triton's statistics model. Updated on
the event loop thread only, so they need no locks; gRPC/HTTP statistics and metrics read them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import NamedTuple


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class BatchStats:
    """Durations of executions of one batch size (each execution counted once)."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


class ExecutionTimes(NamedTuple):
    """What one batch execution took, measured on the instance thread."""

    compute_input_ns: int
    compute_infer_ns: int
    compute_output_ns: int


@dataclass
class ModelStats:
    """Triton's InferStatistics for one model version. ``success``/``fail`` hold end-to-end request
    durations; queue and compute durations are counted once per request, as Triton does."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0  # a request of batch n counts n
    execution_count: int = 0  # model executions (one per batch)
    last_inference_ms: int = 0
    batches: dict[int, BatchStats] = field(default_factory=dict)

    def record_execution(self, batch_size: int, requests: int, times: ExecutionTimes) -> None:
        self.execution_count += 1
        self.inference_count += batch_size
        self.last_inference_ms = int(time.time() * 1000)
        self.compute_input.add(times.compute_input_ns * requests, requests)
        self.compute_infer.add(times.compute_infer_ns * requests, requests)
        self.compute_output.add(times.compute_output_ns * requests, requests)
        batch = self.batches.get(batch_size)
        if batch is None:
            batch = self.batches[batch_size] = BatchStats()
        batch.compute_input.add(times.compute_input_ns)
        batch.compute_infer.add(times.compute_infer_ns)
        batch.compute_output.add(times.compute_output_ns)

    def record_request(self, ok: bool, duration_ns: int) -> None:
        (self.success if ok else self.fail).add(duration_ns)
