"""ModelStatistics as Triton's HTTP JSON, from the schedulers' counters."""

from __future__ import annotations

from typing import Any

from schedulers.stats import Duration
from server.core.dataplane import VersionStatistics


def _duration(duration: Duration) -> dict[str, int]:
    return {"count": duration.count, "ns": duration.ns}


def _row(row: VersionStatistics) -> dict[str, Any]:
    stats = row.stats
    infer = {
        "success": _duration(stats.success),
        "fail": _duration(stats.fail),
        "queue": _duration(stats.queue),
        "compute_input": _duration(stats.compute_input),
        "compute_infer": _duration(stats.compute_infer),
        "compute_output": _duration(stats.compute_output),
        "cache_hit": _duration(stats.cache_hit),
        "cache_miss": _duration(stats.cache_miss),
    }
    batches = [
        {
            "batch_size": size,
            "compute_input": _duration(b.compute_input),
            "compute_infer": _duration(b.compute_infer),
            "compute_output": _duration(b.compute_output),
        }
        for size, b in sorted(stats.batches.items())
    ]
    return {
        "name": row.name,
        "version": row.version,
        "last_inference": stats.last_inference_ms,
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        "inference_stats": infer,
        "batch_stats": batches,
    }


def statistics_json(rows: list[VersionStatistics]) -> dict[str, Any]:
    return {"model_stats": [_row(r) for r in rows]}
