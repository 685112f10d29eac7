"""Triton ensembles (``platform: "ensemble"``): a DAG of steps, each one a request to another
model, declared in ``ensemble_scheduling``. The plan is checked once at load against the step
models' configs (read from the repository folder, so before those models load); at run time a
step starts as soon as every tensor it reads exists, independent steps run concurrently, and
each step goes through its model's own validation, queue and batcher, as a client request would,
so it batches with other traffic. Tensors pass between steps as the same numpy arrays.

Step N in messages is ``ensemble_scheduling.step[N]`` of the config. The step models are looked
up at every request, so a reloaded step model is picked up and one that is not ready fails the
request with UNAVAILABLE, naming the step."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Protocol

from backends.base import Tensors
from backends.common.config import is_ensemble
from backends.common.errors import ClipperdError, ConfigError, ModelExecutionError, Unavailable
from backends.common.tensors import shape_matches
from backends.proto import model_config_pb2 as mc
from schedulers.protocol import DeviceStatistics
from schedulers.runner import ModelRunner
from schedulers.stats import ModelStats


class StepSource(Protocol):
    """Where an ensemble finds its steps' models (the model repository)."""

    def step_config(self, name: str) -> mc.ModelConfig:
        """The config of model ``name`` read from the repository folder; raises when absent."""
        ...

    def step_model(self, name: str, version: str) -> ModelRunner:
        """The version serving ``name`` now (``version`` "" for the latest); raises when not ready."""
        ...


@dataclass(frozen=True)
class Step:
    index: int
    model: str
    version: str  # "" for the latest (model_version -1)
    inputs: tuple[tuple[str, str], ...]  # (step model input, ensemble tensor)
    outputs: tuple[tuple[str, str], ...]  # (step model output, ensemble tensor)
    label: str  # how errors name it: "ensemble 'e' step 1 (model 'm')"

    @property
    def who(self) -> str:
        return f"step {self.index} (model '{self.model}')"


@dataclass(frozen=True)
class EnsemblePlan:
    name: str
    steps: tuple[Step, ...]
    after: tuple[frozenset[int], ...]  # after[i]: the steps whose outputs step i reads
    outputs: tuple[tuple[str, tuple[int, ...]], ...]  # ensemble output, its dims (batch excluded)
    batching: bool
    order: tuple[Step, ...]  # an order that runs every step after the steps it reads from
    chain: bool  # each step in ``order`` reads from the one before: nothing can run concurrently


# -- the plan, checked at load -----------------------------------------------------------------


class _Checker:
    def __init__(self, config: mc.ModelConfig, source: StepSource) -> None:
        self.config = config
        self.source = source
        self.where = f"ensemble '{config.name}'"
        self.types: dict[str, tuple[mc.DataType.ValueType, str]] = {}  # tensor -> (data type, who declared it)
        self.producer: dict[str, int] = {}  # tensor -> the step that writes it (-1: an ensemble input)
        # tensor -> (dims, whether they follow a batch dimension, the config that declared them)
        self.dims = {t.name: (tuple(t.dims), config.max_batch_size > 0, config.name) for t in config.input}

    def fail(self, field: str, problem: str) -> ConfigError:
        return ConfigError(self.where, field, problem)

    def plan(self) -> EnsemblePlan:
        config = self.config
        specs = config.ensemble_scheduling.step
        if not specs:
            raise self.fail("ensemble_scheduling.step", "an ensemble needs at least one step")
        for tensor in config.input:
            self._declare(tensor.name, tensor.data_type, f"ensemble input '{tensor.name}'", -1, "input")
        step_configs = [self._step_config(i, s) for i, s in enumerate(specs)]
        steps = [self._outputs(i, s, step_configs[i]) for i, s in enumerate(specs)]
        for i, spec in enumerate(specs):
            self._inputs(i, spec, step_configs[i])
        for j, output in enumerate(config.output):
            self._ensemble_output(j, output)
        after = tuple(frozenset(self.producer[t] for _, t in s.inputs) - {-1} for s in steps)
        order = _topological_order(self, steps, after)
        chain = all(a.index in after[b.index] for a, b in pairwise(order))
        outputs = tuple((o.name, tuple(o.dims)) for o in config.output)
        return EnsemblePlan(config.name, tuple(steps), after, outputs, config.max_batch_size > 0, order, chain)

    def _step_config(self, i: int, spec: mc.ModelEnsembling.Step) -> mc.ModelConfig:
        field = f"ensemble_scheduling.step[{i}].model_name"
        if not spec.model_name:
            raise self.fail(field, "every step needs a model_name")
        if spec.model_name == self.config.name:
            raise self.fail(field, "an ensemble cannot include itself")
        try:
            step_config = self.source.step_config(spec.model_name)
        except ClipperdError as error:
            raise self.fail(field, f"step {i} (model '{spec.model_name}'): {error.message}") from None
        if is_ensemble(step_config) and self._includes_self(step_config, {spec.model_name}):
            raise self.fail(field, f"model '{spec.model_name}' includes ensemble '{self.config.name}' (a cycle)")
        mbs = self.config.max_batch_size
        if mbs > 0 and step_config.max_batch_size < mbs:
            raise self.fail(
                "max_batch_size",
                f"the ensemble allows batches of {mbs}, but step {i} (model '{spec.model_name}') "
                f"allows {step_config.max_batch_size}",
            )
        return step_config

    def _includes_self(self, config: mc.ModelConfig, seen: set[str]) -> bool:
        """Whether a nested ensemble reaches this one through its steps."""
        for spec in config.ensemble_scheduling.step:
            if spec.model_name == self.config.name:
                return True
            if spec.model_name in seen:
                continue
            seen.add(spec.model_name)
            try:
                nested = self.source.step_config(spec.model_name)
            except ClipperdError:
                continue  # that ensemble's own load reports it
            if is_ensemble(nested) and self._includes_self(nested, seen):
                return True
        return False

    def _outputs(self, i: int, spec: mc.ModelEnsembling.Step, step_config: mc.ModelConfig) -> Step:
        declared = {o.name: o for o in step_config.output}
        field = f"ensemble_scheduling.step[{i}].output_map"
        for key, tensor in spec.output_map.items():
            output = declared.get(key)
            if output is None:
                raise self.fail(field, f"model '{spec.model_name}' has no output '{key}'")
            if not tensor:
                raise self.fail(field, f"output '{key}' maps to an empty tensor name")
            self._declare(tensor, output.data_type, f"output '{key}' of model '{spec.model_name}'", i, field)
            self._check_dims(field, tensor, step_config, output)
        version = "" if spec.model_version < 0 else str(spec.model_version)
        inputs, outputs = tuple(sorted(spec.input_map.items())), tuple(sorted(spec.output_map.items()))
        label = f"{self.where} step {i} (model '{spec.model_name}')"
        return Step(i, spec.model_name, version, inputs, outputs, label)

    def _inputs(self, i: int, spec: mc.ModelEnsembling.Step, step_config: mc.ModelConfig) -> None:
        declared = {t.name: t for t in step_config.input}
        field = f"ensemble_scheduling.step[{i}].input_map"
        for key, tensor in spec.input_map.items():
            model_input = declared.get(key)
            if model_input is None:
                raise self.fail(field, f"model '{spec.model_name}' has no input '{key}'")
            if tensor not in self.producer:
                raise self.fail(
                    field, f"input '{key}' reads tensor '{tensor}', which no ensemble input or step output produces"
                )
            self._check_type(field, tensor, model_input.data_type, f"input '{key}' of model '{spec.model_name}'")
            self._check_dims(field, tensor, step_config, model_input)
        missing = [t.name for t in step_config.input if not t.optional and t.name not in spec.input_map]
        if missing:
            raise self.fail(field, f"model '{spec.model_name}' input '{missing[0]}' is not mapped")

    def _ensemble_output(self, j: int, tensor: mc.ModelOutput) -> None:
        producer = self.producer.get(tensor.name)
        if producer is None or producer < 0:
            raise self.fail(f"output[{j}]", f"no step produces ensemble output '{tensor.name}'")
        self._check_type(f"output[{j}]", tensor.name, tensor.data_type, f"ensemble output '{tensor.name}'")
        self._check_dims(f"output[{j}]", tensor.name, self.config, tensor)

    def _declare(self, tensor: str, data_type: mc.DataType.ValueType, who: str, step: int, field: str) -> None:
        if tensor in self.producer:
            first = self.producer[tensor]
            by = "an ensemble input" if first < 0 else f"step {first}"
            raise self.fail(field, f"tensor '{tensor}' is produced twice: by {by} and by {who}")
        self.producer[tensor] = step
        self.types[tensor] = (data_type, who)

    def _check_type(self, field: str, tensor: str, data_type: mc.DataType.ValueType, who: str) -> None:
        want, by = self.types[tensor]
        if want != data_type:
            raise self.fail(
                field,
                f"tensor '{tensor}' is {mc.DataType.Name(want)} ({by}) but {who} is {mc.DataType.Name(data_type)}",
            )

    def _check_dims(self, field: str, tensor: str, owner: mc.ModelConfig, spec: mc.ModelInput | mc.ModelOutput) -> None:
        """Dims declared for one tensor by two configs must fit each other (-1 fits any size),
        where both configs put the batch dimension in the same place."""
        dims = tuple(spec.dims)
        seen = self.dims.setdefault(tensor, (dims, owner.max_batch_size > 0, owner.name))
        first, batched, by = seen
        if batched != (owner.max_batch_size > 0) or not first or not dims:
            return
        if not _dims_fit(first, dims):
            raise self.fail(
                field, f"tensor '{tensor}' has dims {list(first)} in '{by}' but {list(dims)} in '{owner.name}'"
            )


def _dims_fit(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b, strict=True))


def _topological_order(checker: _Checker, steps: Sequence[Step], after: Sequence[frozenset[int]]) -> tuple[Step, ...]:
    """Kahn's algorithm: whatever cannot be ordered lies on a cycle (or behind one)."""
    waiting = {s.index: set(after[s.index]) for s in steps}
    ready = [i for i, deps in waiting.items() if not deps]
    order: list[Step] = []
    while ready:
        done = ready.pop(0)
        order.append(steps[done])
        del waiting[done]
        for i, deps in waiting.items():
            if done in deps:
                deps.discard(done)
                if not deps:
                    ready.append(i)
    if waiting:
        stuck = ", ".join(steps[i].who for i in sorted(waiting))
        raise checker.fail("ensemble_scheduling.step", f"the steps form a cycle: {stuck}")
    return tuple(order)


def plan_ensemble(config: mc.ModelConfig, source: StepSource) -> EnsemblePlan:
    """Checks an ensemble's steps against its own config and its step models' configs; raises
    ConfigError naming the ensemble, the field and the problem."""
    return _Checker(config, source).plan()


# -- execution ---------------------------------------------------------------------------------


def in_step(error: ClipperdError, prefix: str) -> ClipperdError:
    """The same kind of error (so the same gRPC/HTTP status), its message prefixed."""
    kind = next(c for c in type(error).__mro__ if c.__init__ is ClipperdError.__init__)  # type: ignore[misc]
    return kind(f"{prefix}: {error.message}")  # type: ignore[no-any-return]


class EnsembleScheduler:
    """Runs one ensemble version's requests through its steps' models."""

    def __init__(self, plan: EnsemblePlan, source: StepSource, stats: ModelStats) -> None:
        self.plan = plan
        self.source = source
        self.stats = stats
        self.in_flight = 0
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def pending(self) -> int:
        return 0

    def device_statistics(self) -> list[DeviceStatistics]:
        return []  # an ensemble queues nothing itself: its steps do

    async def execute(self, inputs: Tensors, batch_size: int, priority: int = 0, timeout_us: int = 0) -> Tensors:
        if self._closed:
            raise Unavailable(f"ensemble '{self.plan.name}' is unloading")
        self.in_flight += 1
        self._idle.clear()
        try:
            tensors = await self._run(dict(inputs), priority, timeout_us)
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self._idle.set()
        self.stats.execution_count += 1
        self.stats.inference_count += batch_size
        self.stats.last_inference_ms = int(time.time() * 1000)
        return self._outputs(tensors)

    async def _run(self, tensors: Tensors, priority: int, timeout_us: int) -> Tensors:
        plan = self.plan
        if plan.chain:  # one step after the other: no task to make, nothing to wait beside
            for step in plan.order:
                _store(step, await self._step(step, tensors, priority, timeout_us), tensors)
            return tensors
        left = {s.index for s in plan.steps}
        running: dict[asyncio.Task[Tensors], Step] = {}
        try:
            while left or running:
                blocked = left | _indices(running)
                ready = sorted(i for i in left if not plan.after[i] & blocked)
                left.difference_update(ready)
                if len(ready) == 1 and not running:  # a stretch of chain
                    step = plan.steps[ready[0]]
                    _store(step, await self._step(step, tensors, priority, timeout_us), tensors)
                    continue
                for index in ready:
                    step = plan.steps[index]
                    running[asyncio.ensure_future(self._step(step, tensors, priority, timeout_us))] = step
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    _store(running[task], task.result(), tensors)  # a failed step raises here
                    del running[task]
        finally:
            if running:
                await _cancel(running)
        return tensors

    async def _step(self, step: Step, tensors: Tensors, priority: int, timeout_us: int) -> Tensors:
        try:
            model = self.source.step_model(step.model, step.version)
        except ClipperdError as error:
            raise Unavailable(f"{step.label}: {error.message}") from None
        inputs = {name: tensors[tensor] for name, tensor in step.inputs if tensor in tensors}
        try:
            return await model.infer_tensors(inputs, priority, timeout_us)
        except ClipperdError as error:
            raise in_step(error, step.label) from None

    def _outputs(self, tensors: Tensors) -> Tensors:
        outputs: Tensors = {}
        for name, dims in self.plan.outputs:
            array = tensors[name]
            shape = array.shape[1:] if self.plan.batching else array.shape
            if not shape_matches(dims, tuple(shape)):
                want = ([-1] if self.plan.batching else []) + list(dims)
                raise ModelExecutionError(
                    f"ensemble '{self.plan.name}': output '{name}' has shape {list(array.shape)}, "
                    f"its config declares {want}"
                )
            outputs[name] = array
        return outputs

    async def close(self) -> None:
        """Stops taking requests and lets those in flight finish (the steps' models stay loaded)."""
        self._closed = True
        await self._idle.wait()


def _store(step: Step, outputs: Tensors, tensors: Tensors) -> None:
    for output, tensor in step.outputs:
        tensors[tensor] = outputs[output]


async def _cancel(running: Mapping[asyncio.Task[Tensors], Step]) -> None:
    """Cancels the steps still running after one failed, and waits for them to end."""
    for task in running:
        task.cancel()
    await asyncio.wait(running)
    for task in running:
        if not task.cancelled():
            task.exception()  # retrieved: the first failure is the one reported


def _indices(running: Mapping[asyncio.Task[Tensors], Step]) -> set[int]:
    return {s.index for s in running.values()}
