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
from backends.common.config import is_ensemble
from backends.common.errors import ClipperdError, InvalidArgument, Unavailable, Unimplemented
from backends.common.parameters import Parameters
from backends.devices import gpu_count
from backends.proto import model_config_pb2 as mc
from schedulers.ensemble import EnsembleScheduler, StepSource, plan_ensemble
from schedulers.instance import ModelInstance
from schedulers.process_backend import ProcessBackend, WorkerSettings
from schedulers.protocol import Scheduler
from schedulers.remote import build_remote_scheduler
from schedulers.scheduler import ModelScheduler
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
) -> Scheduler:
    """The scheduler of one version, its instances started (each loads on its own thread); all
    or nothing. An ensemble starts none: its plan is checked against its step models, found
    through ``steps``. ``backend_class``: the config's backend unless given."""
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
    placed = instance_devices(config, backend_class)
    instances = _instances(config, version, version_path, backend_class, placed)
    results = await asyncio.gather(*(w.start() for w in instances), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        await asyncio.gather(*(w.stop() for w in instances))
        raise _load_error(config.name, version, errors[0])
    return ModelScheduler(config, instances, ModelStats(), [device.name for _, device in placed])


def _instances(
    config: mc.ModelConfig,
    version: int,
    version_path: Path,
    backend_class: type[Backend],
    placed: list[tuple[str, Device]],
) -> list[ModelInstance]:
    """One ModelInstance per placed instance, not started: a thread (or the event loop) that makes the
    backend, in this process or in a worker process of its own."""
    params = Parameters.of(config)
    threads = cpu_threads_per_instance(sum(1 for _, d in placed if d.kind == "cpu"))
    mode = execution_mode(params, backend_class, config.model_transaction_policy.decoupled)
    settings = WorkerSettings.parse(params, version_path.parent) if mode == "process" else None
    inline_ns = idle_inline_us(params, backend_class) * 1000
    instances = []
    for name, device in placed:
        context = InstanceContext(config, version, version_path, device, name, threads, params.values)
        factory: Callable[[], Backend] = functools.partial(backend_class, context)
        if settings is not None:
            factory = functools.partial(ProcessBackend, context, backend_class, settings)
        inline = inline_ns if device.kind == "cpu" else 0  # a GPU instance keeps its stream's thread
        instances.append(ModelInstance(name, factory, on_loop=mode == "event_loop", inline_ns=inline))
    return instances


def instance_devices(config: mc.ModelConfig, backend_class: type[Backend]) -> list[tuple[str, Device]]:
    """(instance name, device) for every instance the config's instance_group asks for; KIND_AUTO
    is a GPU for a backend that declares it can use one, when one is visible."""
    gpus = gpu_count()
    auto_gpu = gpus > 0 and backend_class.capabilities.gpu
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


def cpu_threads_per_instance(cpu_instances: int) -> int:
    """Intra-op threads for each CPU instance: the cores, less one for the event loop (which
    decodes, batches and encodes), shared among the instances, so none oversubscribes them."""
    cores = os.cpu_count() or 1
    return max(1, (cores - 1) // max(cpu_instances, 1))


def execution_mode(params: Parameters, backend_class: type[Backend], decoupled: bool = False) -> str:
    """``execution_mode`` (``thread``, ``event_loop`` or ``process``) overrides the backend's own
    preference: the event loop for backends that hold the GIL, else a thread (always for a
    decoupled model)."""
    default = "event_loop" if backend_class.capabilities.holds_gil and not decoupled else "thread"
    return params.choice(EXECUTION_MODE, EXECUTION_MODES, default)


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
