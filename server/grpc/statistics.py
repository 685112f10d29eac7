"""ModelStatistics messages from the schedulers' counters."""

from __future__ import annotations

from schedulers.stats import Duration
from server.core.dataplane import VersionStatistics
from server.proto import grpc_service_pb2 as pb


def _duration(duration: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=duration.count, ns=duration.ns)


def encode_statistics(row: VersionStatistics) -> pb.ModelStatistics:
    stats = row.stats
    infer = pb.InferStatistics(
        success=_duration(stats.success),
        fail=_duration(stats.fail),
        queue=_duration(stats.queue),
        compute_input=_duration(stats.compute_input),
        compute_infer=_duration(stats.compute_infer),
        compute_output=_duration(stats.compute_output),
        cache_hit=_duration(stats.cache_hit),
        cache_miss=_duration(stats.cache_miss),
    )
    batches = [
        pb.InferBatchStatistics(
            batch_size=size,
            compute_input=_duration(b.compute_input),
            compute_infer=_duration(b.compute_infer),
            compute_output=_duration(b.compute_output),
        )
        for size, b in sorted(stats.batches.items())
    ]
    return pb.ModelStatistics(
        name=row.name,
        version=row.version,
        last_inference=stats.last_inference_ms,
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
        inference_stats=infer,
        batch_stats=batches,
    )
