"""One loaded version of a model: its instances on their devices, its queue, its statistics."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from backends import registry
from backends.base import Tensors
from backends.bls import ModelCaller
from backends.common.config import is_ensemble
from backends.proto import model_config_pb2 as mc
from schedulers.assembly import build_scheduler
from schedulers.cache import CacheKey, RequestInput, ResponseCache, VersionCache, version_cache
from schedulers.ensemble import StepSource
from schedulers.protocol import Scheduler
from schedulers.rate_limiter import RateLimiter
from schedulers.stats import ModelStats
from server.core import inference
from server.core.validation import ModelSignature
from server.core.warmup import warm_up
from server.monitoring.drift.load import drift_monitor
from server.monitoring.feedback import FeedbackMonitor, feedback_config, feedback_monitor

if TYPE_CHECKING:
    from server.monitoring.drift.monitor import DriftMonitor


@dataclass
class ModelVersion:
    config: mc.ModelConfig
    version: int
    path: Path
    signature: ModelSignature
    scheduler: Scheduler
    stats: ModelStats
    load_secs: float = 0.0  # how long its instances took to load (Triton's nv_model_load_duration_secs)
    cache: VersionCache | None = None  # its share of the response cache, when it caches
    identified: bool = False  # its requests carry their id and parameters (Triton Python models)
    feedback: FeedbackMonitor | None = None  # accuracy from feedback (parameters feedback_*), None when off
    drift: DriftMonitor | None = None  # its drift monitor (server/monitoring/drift), when its config asks

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def platform(self) -> str:
        return self.config.platform or self.config.backend

    async def close(self) -> None:
        """Lets in-flight requests finish, then unloads every instance and drops its cached responses."""
        await self.scheduler.close()
        if self.drift is not None:
            await self.drift.close()
        if self.cache is not None:
            self.cache.close()

    def infer_tensors(
        self, inputs: Mapping[str, np.ndarray], priority: int = 0, timeout_us: int = 0
    ) -> Awaitable[Tensors]:
        """One request from inside the server (an ensemble's step, an application's member),
        through the one entry point (server/core/inference.py) that clients' requests take."""
        return inference.infer(self, inference.tensor_call(inputs, priority, timeout_us))

    def stream_tensors(
        self, inputs: Mapping[str, np.ndarray], priority: int = 0, timeout_us: int = 0
    ) -> AsyncGenerator[inference.Streamed[Tensors], None]:
        """One request from inside the server whose answers stream (a BLS call with
        ``decoupled=True``): each ``Streamed.response`` the outputs of one answer, through the
        one entry point (``inference.infer_stream``); ``aclose`` it to cancel the request."""
        return inference.infer_stream(self, inference.tensor_call(inputs, priority, timeout_us))

    def cache_probe(self, inputs: Iterable[RequestInput]) -> CacheProbe | None:
        """The response-cache lookup of one request's inputs (name, wire type, shape, array),
        counted as a hit or a miss; None when this version does not cache."""
        cache = self.cache
        if cache is None:
            return None
        start = time.perf_counter_ns()
        key = cache.key(inputs)
        outputs = cache.lookup(key)
        elapsed = time.perf_counter_ns() - start
        if outputs is None:
            self.stats.cache_miss.add(elapsed)
        else:
            self.stats.record_cache_hit(elapsed)
        return CacheProbe(cache, key, outputs)

    def cache_store(self, probe: CacheProbe, outputs: Tensors) -> None:
        """Keeps a missed request's outputs (only ever called with a successful execution's)."""
        start = time.perf_counter_ns()
        probe.cache.insert(probe.key, outputs)
        self.stats.cache_miss.add(time.perf_counter_ns() - start, count=0)


@dataclass(slots=True)
class CacheProbe:
    """One request's lookup: its key and, on a hit, the stored outputs."""

    cache: VersionCache
    key: CacheKey
    outputs: Tensors | None


async def load_model_version(
    config: mc.ModelConfig,
    version: int,
    version_path: Path,
    steps: StepSource | None = None,
    cache: ResponseCache | None = None,
    models: ModelCaller | None = None,
    limiter: RateLimiter | None = None,
) -> ModelVersion:
    """Builds the version's scheduler (schedulers.assembly: its instances started, all or
    nothing; an ensemble's plan checked against its step models, found through ``steps``) and
    wraps it with the version's signature and its share of ``cache``, the server's response
    cache, when the config enables ``response_cache``. ``models``: how its instances call other
    models (BLS); ``limiter``: the server's rate limiter, when on."""
    started = time.perf_counter()
    drift = drift_monitor(config, version, version_path.parent)  # a bad drift_* key fails before any instance loads
    feedback = await feedback_monitor(config.name, version, feedback_config(config))  # a bad key fails the load
    scheduler = await build_scheduler(config, version, version_path, steps, models=models, limiter=limiter)
    signature = ModelSignature(config)
    try:
        await warm_up(config, version, version_path, scheduler, signature)
    except BaseException:
        await scheduler.close()
        raise
    load_secs = time.perf_counter() - started
    cached = None if is_ensemble(config) else version_cache(config, version, cache)
    identified = not is_ensemble(config) and registry.backend_class(config, version_path).reads_identity(
        config, version_path
    )
    if drift is not None:
        drift.start()
    return ModelVersion(
        config,
        version,
        version_path,
        signature,
        scheduler,
        scheduler.stats,
        load_secs,
        cached,
        identified,
        feedback=feedback,
        drift=drift,
    )
