"""Counters and cumulative durations per model version, Triton's statistics model. Updated on
the event loop thread only, so they need no locks; gRPC/HTTP statistics and metrics read them."""

from __future__ import annotations

import asyncio
import enum
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import NamedTuple

from backends.common.errors import Cancelled, DeadlineExceeded, ResourceExhausted, Unavailable

# Upper bounds (ns) of the request latency histogram's buckets, 50 us to 10 s; one more bucket
# (+Inf) holds what is slower.
LATENCY_BUCKETS_NS: tuple[int, ...] = tuple(
    int(us * 1000)
    for us in (
        50, 100, 250, 500,
        1_000, 2_500, 5_000,
        10_000, 25_000, 50_000,
        100_000, 250_000, 500_000,
        1_000_000, 2_500_000, 5_000_000, 10_000_000,
    )
)  # fmt: skip


class FailureReason(enum.Enum):
    """Why a request failed, as Triton's ``nv_inference_request_failure{reason}`` says."""

    REJECTED = "REJECTED"  # refused by the queue: full, timed out, or the model is unloading
    CANCELED = "CANCELED"  # the client went away (cancelled, or its deadline passed)
    BACKEND = "BACKEND"  # the model failed while executing, or returned what its config forbids
    OTHER = "OTHER"  # anything else: a request that fails validation, a response that cannot be built


class Rejection(enum.Enum):
    """Why the scheduler refused a request (clipperd_rejections{reason}): the detail of REJECTED."""

    QUEUE_FULL = "queue_full"  # its priority level held max_queue_size requests
    TIMEOUT = "timeout"  # it waited its queue timeout under timeout_action REJECT
    UNLOADING = "unloading"  # the model version was unloading


_REJECTIONS = (Unavailable, ResourceExhausted, DeadlineExceeded)


def latency_bucket(duration_ns: int) -> int:
    """The index, in a list of LATENCY_BUCKETS_NS counts and then +Inf, of ``duration_ns``'s bucket."""
    return bisect_left(LATENCY_BUCKETS_NS, duration_ns)


def failure_reason(error: BaseException, executing: bool) -> FailureReason:
    """Classifies a failed request; ``executing``: it failed while queued or executing."""
    if isinstance(error, asyncio.CancelledError | Cancelled):
        return FailureReason.CANCELED
    if not executing:
        return FailureReason.OTHER
    return FailureReason.REJECTED if isinstance(error, _REJECTIONS) else FailureReason.BACKEND


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
    failures: dict[FailureReason, int] = field(default_factory=lambda: dict.fromkeys(FailureReason, 0))
    # successful requests by end-to-end duration: counts per LATENCY_BUCKETS_NS bucket, then +Inf
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_NS) + 1))
    inflight: int = 0  # requests inside DataPlane.infer now: validating, queued, executing
    rejections: dict[Rejection, int] = field(default_factory=lambda: dict.fromkeys(Rejection, 0))
    cache_hit: Duration = field(default_factory=Duration)  # hits, and the time their lookups took
    cache_miss: Duration = field(default_factory=Duration)  # misses: lookup, then insertion time

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

    def record_cache_hit(self, lookup_ns: int) -> None:
        """A request answered from the response cache: Triton counts it in success and queue
        (no wait), and neither in inference_count nor execution_count nor the compute times."""
        self.cache_hit.add(lookup_ns)
        self.queue.add(0)
        self.last_inference_ms = int(time.time() * 1000)

    def record_success(self, duration_ns: int) -> None:
        self.success.add(duration_ns)
        self.latency_buckets[latency_bucket(duration_ns)] += 1

    def track(self) -> RequestTracker:
        """``with stats.track() as request:`` counts one request in flight and records its
        success or failure with its duration; ``request.executing`` says where it failed."""
        return RequestTracker(self)

    def record_failure(self, reason: FailureReason, duration_ns: int) -> None:
        self.fail.add(duration_ns)
        self.failures[reason] += 1


class RequestTracker:
    """One request through a model version: in flight while inside, then a success or a failure
    (classified by whether it had reached the queue), with its end-to-end duration."""

    __slots__ = ("executing", "start", "stats")

    def __init__(self, stats: ModelStats) -> None:
        self.stats = stats
        self.executing = False  # set while the request is queued or executing

    def __enter__(self) -> RequestTracker:
        self.start = time.perf_counter_ns()
        self.stats.inflight += 1
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: object) -> None:
        stats = self.stats
        stats.inflight -= 1
        elapsed = time.perf_counter_ns() - self.start
        if error is None:
            stats.record_success(elapsed)
        else:
            stats.record_failure(failure_reason(error, self.executing), elapsed)
