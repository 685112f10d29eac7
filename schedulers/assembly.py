"""Builds a model version's scheduler from its config, its version folder and its backend's
declared capabilities (backends.base.Capabilities): where each instance runs (instance_group,
KIND_AUTO), how it executes (``execution_mode``: its thread, the event loop or a worker process),
whether short requests may run on an idle device's event loop (``idle_inline_us``), and the
instances themselves, started all or nothing. An ensemble gets its pipeline instead."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path

from backends import registry
from backends.base import CPU, Backend, Device, InstanceContext
from backends.bls import DEFAULT_TIMEOUT_S, TIMEOUT_PARAMETER, BlsLink, ModelCaller
from backends.common.config import is_ensemble
from backends.common.errors import ClipperdError, InvalidArgument, Unavailable, Unimplemented
from backends.common.outputs import output_specs
from backends.common.parameters import Parameters
from backends.devices import gpu_count
from backends.proto import model_config_pb2 as mc
from schedulers.ensemble import EnsembleScheduler, StepSource, plan_ensemble
from schedulers.instance import ModelInstance
from schedulers.process_backend import ProcessBackend, WorkerSettings
from schedulers.protocol import Scheduler
from schedulers.rate_limiter import RateLimiter
from schedulers.remote import build_remote_scheduler
from schedulers.scheduler import ModelScheduler
from schedulers.sequence import SequenceScheduler
from schedulers.sequence_config import SequenceSettings, backend_config
from schedulers.stats import ModelStats

log = logging.getLogger(__name__)

EXECUTION_MODE = "execution_mode"  # config parameter: where instances execute
EXECUTION_MODES = ("thread", "event_loop", "process")
IDLE_INLINE = "idle_inline_us"  # config parameter: the longest request run on an idle device's event loop
DEFAULT_IDLE_INLINE_US = 300
_MAX_IDLE_INLINE_US = 10_000_000  # 10 s: far past what an event loop may be held


async def build_scheduler(
    config: mc.ModelConfig,
    version: int,
    version_path: Path,
    steps: StepSource | None = None,
    backend_class: type[Backend] | None = None,
    models: ModelCaller | None = None,
    limiter: RateLimiter | None = None,
) -> Scheduler:
    """The scheduler of one version, its instances started (each loads on its own thread); all
    or nothing. An ensemble starts none: its plan is checked against its step models, found
    through ``steps``. ``backend_class``: the config's backend unless given. ``models``: how its
    instances call other models (BLS, backends/bls.py). ``limiter``: the server's rate limiter,
    when it has one (schedulers/rate_limiter.py)."""
    if config.model_transaction_policy.decoupled:
        streaming = None if is_ensemble(config) else backend_class or registry.backend_class(config, version_path)
        _check_decoupled(config, streaming)
    if is_ensemble(config):
        if steps is None:
            raise Unavailable(f"ensemble '{config.name}' needs a model repository to find its steps")
        # off the loop: a step's config may be completed over the network (a remote model)
        plan = await asyncio.to_thread(plan_ensemble, config, steps)
        return EnsembleScheduler(plan, steps, ModelStats())
    backend_class = backend_class or registry.backend_class(config, version_path)
    if backend_class.capabilities.remote:  # each endpoint a device: instances per endpoint
        return await build_remote_scheduler(config, version, version_path)
    if config.HasField("sequence_batching"):
        return await _sequence_scheduler(config, version, version_path, backend_class, models, limiter)
    placements = _placements(config, backend_class)
    placed = [(name, device) for name, device, _ in placements]
    link = _bls_link(config, models, len(placed))
    instances = _instances(config, version, version_path, backend_class, placed, link)
    if limiter is not None:
        _limit(config, limiter, instances, placements)
    await _start(config, version, instances, limiter)
    devices = [device.name for _, device in placed]
    return ModelScheduler(config, instances, ModelStats(), devices, limiter)


async def _sequence_scheduler(
    config: mc.ModelConfig,
    version: int,
    version_path: Path,
    backend_class: type[Backend],
    models: ModelCaller | None,
    limiter: RateLimiter | None,
) -> SequenceScheduler:
    """A stateful model's sequence batcher: its backends load a config that names the control
    and state tensors as inputs and outputs (schedulers/sequence_config.py). Rate limited as a
    device queue is: a lane's instance forms its next batch once it holds its resources."""
    settings = SequenceSettings.of(config, version_path.parent)
    extended = backend_config(config, settings)
    placements = _placements(extended, backend_class)
    placed = [(name, device) for name, device, _ in placements]
    link = _bls_link(extended, models, len(placed))
    instances = _instances(extended, version, version_path, backend_class, placed, link)
    if limiter is not None:
        _limit(extended, limiter, instances, placements)
    await _start(config, version, instances, limiter)
    return SequenceScheduler(config, settings, instances, ModelStats(), output_specs(extended), limiter)


async def _start(
    config: mc.ModelConfig, version: int, instances: list[ModelInstance], limiter: RateLimiter | None
) -> None:
    """Starts every instance, or none: the first failure stops the others (and frees their rate
    limiter slots) and is raised."""
    results = await asyncio.gather(*(w.start() for w in instances), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        await asyncio.gather(*(w.stop() for w in instances))
        _unlimit(limiter, instances)
        raise _load_error(config.name, version, errors[0])


def _limit(
    config: mc.ModelConfig,
    limiter: RateLimiter,
    instances: list[ModelInstance],
    placements: list[tuple[str, Device, int]],
) -> None:
    """Registers the instances whose group has a rate_limiter (all or none: a refusal undoes)."""
    try:
        for instance, (name, device, group) in zip(instances, placements, strict=True):
            if group >= 0 and config.instance_group[group].HasField("rate_limiter"):
                spec = config.instance_group[group].rate_limiter
                instance.slot = limiter.register(f"'{config.name}' {name}", device.name, spec)
    except ClipperdError:
        _unlimit(limiter, instances)
        raise


def _unlimit(limiter: RateLimiter | None, instances: list[ModelInstance]) -> None:
    for instance in instances:
        if limiter is not None and instance.slot is not None:
            limiter.unregister(instance.slot)
            instance.slot = None


def _instances(
    config: mc.ModelConfig,
    version: int,
    version_path: Path,
    backend_class: type[Backend],
    placed: list[tuple[str, Device]],
    link: BlsLink | None = None,
) -> list[ModelInstance]:
    """One ModelInstance per placed instance, not started: a thread (or the event loop) that makes the
    backend, in this process or in a worker process of its own."""
    params = Parameters.of(config)
    threads = cpu_threads_per_instance(sum(1 for _, d in placed if d.kind == "cpu"))
    mode = execution_mode(params, backend_class, config, version_path)
    # a model whose batches are coroutines runs them as tasks on the loop, several instances at once
    tasks = mode == "event_loop" and backend_class.preferred_mode(config, version_path) == "async"
    settings = WorkerSettings.parse(params, version_path.parent) if mode == "process" else None
    inline_ns = idle_inline_us(params, backend_class) * 1000
    instances = []
    for name, device in placed:
        context = InstanceContext(config, version, version_path, device, name, threads, params.values, link)
        factory: Callable[[], Backend] = functools.partial(backend_class, context)
        if settings is not None:
            factory = functools.partial(ProcessBackend, context, backend_class, settings)
        inline = inline_ns if device.kind == "cpu" else 0  # a GPU instance keeps its stream's thread
        on_loop = mode == "event_loop"
        instances.append(ModelInstance(name, factory, on_loop=on_loop, inline_ns=inline, asynchronous=tasks))
    return instances


def instance_devices(config: mc.ModelConfig, backend_class: type[Backend]) -> list[tuple[str, Device]]:
    """(instance name, device) for every instance the config's instance_group asks for; KIND_AUTO
    is a GPU for a backend that declares it can use one, when one is visible."""
    return [(name, device) for name, device, _ in _placements(config, backend_class)]


def _placements(config: mc.ModelConfig, backend_class: type[Backend]) -> list[tuple[str, Device, int]]:
    """``instance_devices``, each with the index of its instance group (-1: the default one)."""
    gpus = gpu_count()
    auto_gpu = gpus > 0 and backend_class.capabilities.gpu
    placed: list[tuple[str, Device, int]] = []
    for index, group in enumerate(config.instance_group):
        kind = group.kind
        if kind == mc.ModelInstanceGroup.KIND_AUTO:
            kind = mc.ModelInstanceGroup.KIND_GPU if auto_gpu else mc.ModelInstanceGroup.KIND_CPU
        group_name = group.name or f"{config.name}_{index}"
        count = group.count or 1
        if kind == mc.ModelInstanceGroup.KIND_GPU:
            placed += [(n, d, index) for n, d in _gpu_instances(config.name, group_name, list(group.gpus), count, gpus)]
        else:
            placed += [(f"{group_name}_{i}_cpu", CPU, index) for i in range(count)]
    return placed or [(f"{config.name}_0_0_cpu", CPU, -1)]


def _gpu_instances(model: str, group: str, wanted: list[int], count: int, available: int) -> list[tuple[str, Device]]:
    if available == 0:
        raise Unavailable(f"model '{model}' asks for KIND_GPU instances but this machine has no GPU")
    ids = wanted or list(range(available))
    bad = [i for i in ids if i >= available]
    if bad:
        raise InvalidArgument(f"model '{model}' asks for GPU {bad[0]} but only {available} GPU(s) are visible")
    return [(f"{group}_{i}_gpu{gpu}", Device("gpu", gpu)) for gpu in ids for i in range(count)]


def cpu_threads_per_instance(cpu_instances: int) -> int:
    """Intra-op threads for each CPU instance: the cores, less one for the event loop (which
    decodes, batches and encodes), shared among the instances, so none oversubscribes them."""
    cores = os.cpu_count() or 1
    return max(1, (cores - 1) // max(cpu_instances, 1))


def execution_mode(params: Parameters, backend_class: type[Backend], config: mc.ModelConfig, version_path: Path) -> str:
    """``execution_mode`` (``thread``, ``event_loop`` or ``process``) overrides the backend's own
    preference: the event loop for backends that hold the GIL, else a thread, unless the model
    says otherwise (``Backend.preferred_mode``: a thread for a model that waits for other
    models, the event loop for one that executes as coroutines); always a thread for a
    decoupled model (its answers are sent while it runs)."""
    preferred = backend_class.preferred_mode(config, version_path)
    loop = preferred == "async" or (backend_class.capabilities.holds_gil and preferred != "thread")
    loop = loop and not config.model_transaction_policy.decoupled
    return params.choice(EXECUTION_MODE, EXECUTION_MODES, "event_loop" if loop else "thread")


def _bls_link(config: mc.ModelConfig, models: ModelCaller | None, instances: int) -> BlsLink | None:
    """How the version's instances reach the other models (BLS), waiting at most the config's
    ``bls_timeout_us`` for an answer."""
    if models is None:
        return None
    params = Parameters.of(config)
    default_us = int(DEFAULT_TIMEOUT_S * 1e6)
    timeout_us = params.integer(TIMEOUT_PARAMETER, default_us, low=1, unit="microseconds")
    return BlsLink(models, asyncio.get_running_loop(), config.name, instances, timeout_us / 1e6)


def _check_decoupled(config: mc.ModelConfig, backend_class: type[Backend] | None) -> None:
    """A decoupled model needs a backend that streams, in this process, on its own thread: its
    sends may wait for a slow reader, which the event loop must never do."""
    who = f"model '{config.name}'"
    if backend_class is None:
        raise Unimplemented(f"{who}: decoupled ensembles are not supported")
    if not backend_class.capabilities.decoupled:
        raise InvalidArgument(
            f"{who}: model_transaction_policy.decoupled needs a backend that streams answers (python), "
            f"not {backend_class.__name__}"
        )
    mode = Parameters.of(config).text(EXECUTION_MODE)
    if mode and mode != "thread":
        raise InvalidArgument(
            f"{who}: a decoupled model executes on its own thread; execution_mode '{mode}' is not supported"
        )


def idle_inline_us(params: Parameters, backend_class: type[Backend]) -> int:
    """How long (µs) a request may take to run on the event loop of an idle CPU device
    (schedulers.device_queue): ``idle_inline_us`` (0 turns it off), else the default for a
    backend that may execute off its thread, run in the default execution mode. A config that
    asks for ``execution_mode`` thread or process keeps every execution there."""
    bound = params.integer(IDLE_INLINE, DEFAULT_IDLE_INLINE_US, high=_MAX_IDLE_INLINE_US, unit="microseconds")
    if not backend_class.capabilities.off_thread or params.text(EXECUTION_MODE):
        return 0
    return bound


def _load_error(model: str, version: int, error: BaseException) -> ClipperdError:
    if isinstance(error, ClipperdError):
        return error
    log.error("model '%s' version %d failed to load", model, version, exc_info=error)
    return Unavailable(f"model '{model}' version {version} failed to load: {type(error).__name__}: {error}")
