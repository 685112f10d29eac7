"""One loaded version of a model: its instances on their devices, its queue, its statistics."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backends import registry
from backends.base import CPU, Backend, Device, InstanceContext, Tensors
from backends.common.config import is_ensemble
from backends.common.errors import ClipperdError, InvalidArgument, Unavailable
from backends.devices import gpu_count
from backends.proto import model_config_pb2 as mc
from schedulers.cache import CacheKey, RequestInput, ResponseCache, VersionCache, version_cache
from schedulers.ensemble import EnsembleScheduler, StepSource, plan_ensemble
from schedulers.instance import InstanceWorker
from schedulers.process_backend import ProcessBackend, WorkerSettings
from schedulers.scheduler import ModelScheduler
from schedulers.stats import ModelStats
from server import inference
from server.validation import ModelSignature

log = logging.getLogger(__name__)

EXECUTION_MODE = "execution_mode"  # config parameter: where instances execute
IDLE_INLINE = "idle_inline_us"  # config parameter: the longest request run on an idle device's event loop
DEFAULT_IDLE_INLINE_US = 300


@dataclass
class ModelVersion:
    config: mc.ModelConfig
    version: int
    path: Path
    signature: ModelSignature
    scheduler: ModelScheduler | EnsembleScheduler
    stats: ModelStats
    load_secs: float = 0.0  # how long its instances took to load (Triton's nv_model_load_duration_secs)
    cache: VersionCache | None = None  # its share of the response cache, when it caches

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def platform(self) -> str:
        return self.config.platform or self.config.backend

    async def close(self) -> None:
        """Lets in-flight requests finish, then unloads every instance and drops its cached responses."""
        await self.scheduler.close()
        if self.cache is not None:
            self.cache.close()

    def infer_tensors(
        self, inputs: Mapping[str, np.ndarray], priority: int = 0, timeout_us: int = 0
    ) -> Awaitable[Tensors]:
        """One request from inside the server (an ensemble's step, an application's member),
        through the one entry point (server/inference.py) that clients' requests take."""
        return inference.infer(self, inference.tensor_call(inputs, priority, timeout_us))

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


# backends that can use a GPU; KIND_AUTO places the others on the CPU
_GPU_BACKENDS = {"pytorch"}


def instance_devices(config: mc.ModelConfig, version_path: Path) -> list[tuple[str, Device]]:
    """(instance name, device) for every instance the config's instance_group asks for."""
    gpus = gpu_count()
    auto_gpu = gpus > 0 and registry.backend_name(config, version_path) in _GPU_BACKENDS
    placed: list[tuple[str, Device]] = []
    for index, group in enumerate(config.instance_group):
        kind = group.kind
        if kind == mc.ModelInstanceGroup.KIND_AUTO:
            kind = mc.ModelInstanceGroup.KIND_GPU if auto_gpu else mc.ModelInstanceGroup.KIND_CPU
        group_name = group.name or f"{config.name}_{index}"
        count = group.count or 1
        if kind == mc.ModelInstanceGroup.KIND_GPU:
            placed += _gpu_instances(config.name, group_name, list(group.gpus), count, gpus)
        else:
            placed += [(f"{group_name}_{i}_cpu", CPU) for i in range(count)]
    return placed or [(f"{config.name}_0_0_cpu", CPU)]


def _gpu_instances(model: str, group: str, wanted: list[int], count: int, available: int) -> list[tuple[str, Device]]:
    if available == 0:
        raise Unavailable(f"model '{model}' asks for KIND_GPU instances but this machine has no GPU")
    ids = wanted or list(range(available))
    bad = [i for i in ids if i >= available]
    if bad:
        raise InvalidArgument(f"model '{model}' asks for GPU {bad[0]} but only {available} GPU(s) are visible")
    return [(f"{group}_{i}_gpu{gpu}", Device("gpu", gpu)) for gpu in ids for i in range(count)]


async def load_model_version(
    config: mc.ModelConfig,
    version: int,
    version_path: Path,
    steps: StepSource | None = None,
    cache: ResponseCache | None = None,
) -> ModelVersion:
    """Starts every instance (each loads on its own thread); all or nothing. An ensemble starts
    none: its plan is checked against its step models, found through ``steps``. ``cache``: the
    server's response cache, used when the config enables ``response_cache``."""
    if is_ensemble(config):
        return _load_ensemble(config, version, version_path, steps)
    started = time.perf_counter()
    backend_class = registry.backend_class(config, version_path)
    placed = instance_devices(config, version_path)
    cpu_instances = sum(1 for _, d in placed if d.kind == "cpu")
    threads = cpu_threads_per_instance(cpu_instances)
    parameters = {k: v.string_value for k, v in config.parameters.items()}
    mode = execution_mode(config.name, backend_class, parameters)
    settings = WorkerSettings.parse(config.name, parameters, version_path.parent) if mode == "process" else None
    inline_ns = idle_inline_us(config.name, backend_class, parameters) * 1000
    on_loop = mode == "event_loop"
    workers = []
    for name, device in placed:
        context = InstanceContext(config, version, version_path, device, name, threads, parameters)
        factory: Callable[[], Backend] = functools.partial(_make, backend_class, context)
        if settings is not None:
            factory = functools.partial(ProcessBackend, context, backend_class, settings)
        inline = inline_ns if device.kind == "cpu" else 0  # a GPU instance keeps its stream's thread
        workers.append(InstanceWorker(name, factory, on_loop=on_loop, inline_ns=inline))
    results = await asyncio.gather(*(w.start() for w in workers), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        await asyncio.gather(*(w.stop() for w in workers))
        raise _load_error(config.name, version, errors[0])
    stats = ModelStats()
    scheduler = ModelScheduler(config, workers, stats, [device.name for _, device in placed])
    load_secs = time.perf_counter() - started
    signature = ModelSignature(config)
    cached = version_cache(config, version, cache)
    return ModelVersion(config, version, version_path, signature, scheduler, stats, load_secs, cached)


def _load_ensemble(config: mc.ModelConfig, version: int, version_path: Path, steps: StepSource | None) -> ModelVersion:
    if steps is None:
        raise Unavailable(f"ensemble '{config.name}' needs a model repository to find its steps")
    started = time.perf_counter()
    plan = plan_ensemble(config, steps)
    stats = ModelStats()
    scheduler = EnsembleScheduler(plan, steps, stats)
    load_secs = time.perf_counter() - started
    return ModelVersion(config, version, version_path, ModelSignature(config), scheduler, stats, load_secs)


def cpu_threads_per_instance(cpu_instances: int) -> int:
    """Intra-op threads for each CPU instance: the cores, less one for the event loop (which
    decodes, batches and encodes), shared among the instances, so none oversubscribes them."""
    cores = os.cpu_count() or 1
    return max(1, (cores - 1) // max(cpu_instances, 1))


EXECUTION_MODES = ("thread", "event_loop", "process")


def execution_mode(model: str, backend_class: type[Backend], parameters: dict[str, str]) -> str:
    """``execution_mode`` (``thread``, ``event_loop`` or ``process``) overrides the backend's own
    preference: the event loop for backends that hold the GIL, else a thread."""
    mode = parameters.get(EXECUTION_MODE, "")
    if mode and mode not in EXECUTION_MODES:
        raise InvalidArgument(
            f"model '{model}': parameter '{EXECUTION_MODE}' must be 'thread', 'event_loop' or 'process', "
            f"got {mode[:32]!r}"
        )
    return mode or ("event_loop" if backend_class.holds_gil else "thread")


def idle_inline_us(model: str, backend_class: type[Backend], parameters: dict[str, str]) -> int:
    """How long (µs) a request may take to run on the event loop of an idle CPU device
    (schedulers.device_queue): ``idle_inline_us`` (0 turns it off), else the default for a
    backend that may execute off its thread, run in the default execution mode. A config that
    asks for ``execution_mode`` thread or process keeps every execution there."""
    text = parameters.get(IDLE_INLINE, "").strip()
    if text and not text.isdigit():
        raise InvalidArgument(
            f"model '{model}': parameter '{IDLE_INLINE}' must be a whole number of microseconds (0: off), "
            f"got {text[:32]!r}"
        )
    if not backend_class.runs_off_thread or parameters.get(EXECUTION_MODE, ""):
        return 0
    return int(text) if text else DEFAULT_IDLE_INLINE_US


def _make(backend_class: type[Backend], context: InstanceContext) -> Backend:
    return backend_class(context)


def _load_error(model: str, version: int, error: BaseException) -> ClipperdError:
    if isinstance(error, ClipperdError):
        return error
    log.error("model '%s' version %d failed to load", model, version, exc_info=error)
    return Unavailable(f"model '{model}' version {version} failed to load: {type(error).__name__}: {error}")
