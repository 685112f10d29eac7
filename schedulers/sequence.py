"""The sequence batcher (Triton's ``sequence_batching``): stateful models whose requests come in
sequences named by a correlation id (``sequence_id``), opened by ``sequence_start`` and closed
by ``sequence_end``.

A sequence is bound to one slot of one instance (a ``Lane``) for its life; when every slot is
taken it waits in a bounded backlog until one frees. Each batch an instance executes holds at
most one request per sequence, with the control inputs (START, END, READY, CORRID) and the
implicit state filled in by the server:

- ``direct``: the batch is the instance's slots in order, up to the last with a request; a slot
  without one is padded (zeros, READY false). With ``minimum_slot_utilization`` the batch waits
  up to ``max_queue_delay_microseconds`` for that share of the slots to have a request.
- ``oldest``: the next requests of the oldest sequences with one waiting, up to max_batch_size,
  dynamically batched (preferred sizes, queue delay); no padding.

A sequence idle (nothing queued or running) for ``max_sequence_idle_microseconds`` is freed;
its id is remembered (bounded) so that its next request is told why it is refused."""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Sequence as Seq
from typing import Any

import numpy as np

from backends.base import Backend, Tensors
from backends.common.errors import ClipperdError, InvalidArgument, Unavailable
from backends.common.outputs import OutputSpec, check_outputs
from backends.proto import model_config_pb2 as mc
from schedulers.batch_views import split
from schedulers.instance import ModelInstance
from schedulers.ordering import ResponseOrder
from schedulers.protocol import DeviceStatistics, SequenceStatistics
from schedulers.rate_limiter import RateLimiter
from schedulers.sequence_config import CORRID, END, READY, START, SequenceSettings
from schedulers.stats import ExecutionTimes, ModelStats

log = logging.getLogger(__name__)

CorrId = int | str
MAX_BACKLOG = 16_384  # sequences waiting for a slot; past it a new sequence is refused (UNAVAILABLE)
MAX_QUEUED_STEPS = 64  # requests of one sequence waiting at once; past it refused (UNAVAILABLE)
_REMEMBERED_EXPIRED = 65_536  # ids of expired sequences kept to explain a late request


class Step:
    """One request of a sequence while it waits or runs."""

    __slots__ = ("end", "enqueued_ns", "future", "inputs", "start")

    def __init__(self, inputs: Tensors, start: bool, end: bool, future: asyncio.Future[Tensors]) -> None:
        self.inputs = inputs
        self.start = start
        self.end = end
        self.future = future
        self.enqueued_ns = time.perf_counter_ns()


class Sequence:
    """One live sequence: its slot (None while in the backlog), its waiting requests, its state."""

    __slots__ = ("corrid", "ending", "last_ns", "order", "running", "slot", "state", "steps")

    def __init__(self, corrid: CorrId, order: int) -> None:
        self.corrid = corrid
        self.order = order  # age: the oldest strategy serves lower numbers first
        self.slot: tuple[Lane, int] | None = None
        self.steps: deque[Step] = deque()
        self.state: dict[str, np.ndarray] = {}
        self.running = False
        self.ending = False  # its latest request carried sequence_end
        self.last_ns = time.perf_counter_ns()


class Lane:
    """One instance and its slots."""

    def __init__(self, instance: ModelInstance, slots: int) -> None:
        self.instance = instance
        self.slots: list[Sequence | None] = [None] * slots
        self.busy = False
        self.scheduled = False  # a dispatch is due at the end of this loop iteration
        self.granted = False  # holds its rate-limiter resources (schedulers/rate_limiter.py)
        self.asking = False  # waits for them
        self.timer: asyncio.TimerHandle | None = None

    def free(self) -> int:
        return sum(1 for s in self.slots if s is None)


class SequenceScheduler:
    """One model version's sequence batcher over its instances."""

    def __init__(
        self,
        config: mc.ModelConfig,
        settings: SequenceSettings,
        instances: Seq[ModelInstance],
        stats: ModelStats,
        specs: tuple[OutputSpec, ...],
        limiter: RateLimiter | None = None,
    ) -> None:
        self.config = config
        self._limiter = limiter if any(i.slot is not None for i in instances) else None
        self._order = ResponseOrder(settings.preserve_ordering)
        self.stats = stats
        self._settings = settings
        self._specs = specs  # the config's outputs and the state outputs
        self._lanes = [Lane(i, settings.slots) for i in instances]
        self._table: dict[CorrId, Sequence] = {}
        self._backlog: deque[Sequence] = deque()
        self._expired: OrderedDict[CorrId, None] = OrderedDict()
        self._capacity = settings.slots * len(self._lanes) + MAX_BACKLOG
        self._ages = itertools.count()
        self._counts = {"started": 0, "ended": 0, "expired": 0}
        self._reaper: asyncio.TimerHandle | None = None
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()
        corrid = [c for c in settings.controls if c.kind == CORRID]
        # an integer id fills a string CORRID as its digits; a string one cannot fill an integer CORRID
        self._int_corrid = bool(corrid) and corrid[0].dtype.kind not in "OSU"
        self._corrid_range = np.iinfo(corrid[0].dtype) if self._int_corrid else None

    # -- what the server sees --------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return sum(len(s.steps) for s in self._table.values())

    @property
    def in_flight(self) -> int:
        return self.pending + sum(1 for lane in self._lanes if lane.busy)

    def device_statistics(self) -> list[DeviceStatistics]:
        return []

    def sequence_statistics(self) -> SequenceStatistics:
        backlog = len(self._backlog)
        counts = self._counts
        return SequenceStatistics(
            len(self._table) - backlog, backlog, counts["started"], counts["ended"], counts["expired"]
        )

    async def execute(self, inputs: Tensors, batch_size: int, priority: int = 0, timeout_us: int = 0) -> Tensors:
        raise InvalidArgument(
            f"inference request to model '{self.config.name}' must specify a non-zero or non-empty "
            "correlation ID (parameter sequence_id): the model uses sequence batching"
        )

    async def execute_sequence(
        self, inputs: Tensors, batch_size: int, corrid: CorrId, start: bool, end: bool
    ) -> Tensors:
        """Runs one request of sequence ``corrid`` in its order and returns its outputs."""
        self._check(batch_size, corrid)
        sequence = self._table.get(corrid)
        if sequence is None or (sequence.ending and not start):
            if not start:
                raise InvalidArgument(self._not_started(corrid))
            if sequence is None:
                sequence = self._begin(corrid)
        if len(sequence.steps) >= MAX_QUEUED_STEPS:
            raise Unavailable(
                f"sequence {corrid!r} of model '{self.config.name}' has {MAX_QUEUED_STEPS} requests waiting already"
            )
        future: asyncio.Future[Tensors] = asyncio.get_running_loop().create_future()
        sequence.steps.append(Step(inputs, start, end, future))
        sequence.ending = end
        self._counts["started"] += start
        if sequence.slot is not None:
            self._kick(sequence.slot[0])
        return await future

    async def close(self) -> None:
        """Ends every sequence: their waiting requests fail (UNAVAILABLE), the running batches
        finish, then the instances unload."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
        for sequence in list(self._table.values()):
            while sequence.steps:
                step = sequence.steps.popleft()
                if not step.future.done():
                    step.future.set_exception(self._unloading(sequence.corrid))
        self._table.clear()
        self._backlog.clear()
        for lane in self._lanes:
            if lane.timer is not None:
                lane.timer.cancel()
        await self._idle.wait()
        await asyncio.gather(*(lane.instance.stop() for lane in self._lanes))
        if self._limiter is not None:
            for lane in self._lanes:
                if lane.instance.slot is not None:
                    self._limiter.cancel(lane.instance.slot)
                    self._limiter.unregister(lane.instance.slot)

    # -- admission -------------------------------------------------------------------------------

    def _check(self, batch_size: int, corrid: CorrId) -> None:
        name = self.config.name
        if self._closed:
            raise self._unloading(corrid)
        if corrid in (0, ""):
            raise InvalidArgument(
                f"inference request to model '{name}' must specify a non-zero or non-empty correlation ID"
            )
        if self._settings.batched and batch_size != 1:
            raise InvalidArgument(
                f"inference request to model '{name}' must have batch size 1 (got {batch_size}): "
                "the sequence batcher gives each sequence one row of a batch"
            )
        if isinstance(corrid, str) and self._int_corrid:
            raise InvalidArgument(f"model '{name}' takes integer correlation IDs (its CORRID control), got a string")
        bounds = self._corrid_range
        if bounds is not None and isinstance(corrid, int) and not bounds.min <= corrid <= bounds.max:
            raise InvalidArgument(
                f"correlation ID {corrid} does not fit model '{name}''s CORRID control ({bounds.dtype})"
            )

    def _not_started(self, corrid: CorrId) -> str:
        name = self.config.name
        if corrid in self._expired:
            idle_us = self._settings.idle_ns // 1000
            return (
                f"sequence {corrid!r} of model '{name}' has expired: it was idle for more than "
                f"{idle_us} microseconds (max_sequence_idle_microseconds); start it again with sequence_start"
            )
        return (
            f"inference request for sequence {corrid!r} to model '{name}' must specify the START flag "
            "(sequence_start) on the first request of the sequence: the sequence is unknown or has ended"
        )

    def _unloading(self, corrid: CorrId) -> Unavailable:
        return Unavailable(f"model '{self.config.name}' is unloading: sequence {corrid!r} has ended")

    def _begin(self, corrid: CorrId) -> Sequence:
        if len(self._table) >= self._capacity:
            raise Unavailable(
                f"model '{self.config.name}' holds {len(self._table)} live sequences, the most it keeps "
                f"(its slots and a backlog of {MAX_BACKLOG}); end some or retry later"
            )
        sequence = Sequence(corrid, next(self._ages))
        self._expired.pop(corrid, None)
        self._table[corrid] = sequence
        lane = max(self._lanes, key=Lane.free)
        if lane.free():
            self._bind(sequence, lane, lane.slots.index(None))
        else:
            self._backlog.append(sequence)
        self._arm_reaper()
        return sequence

    def _bind(self, sequence: Sequence, lane: Lane, slot: int) -> None:
        lane.slots[slot] = sequence
        sequence.slot = (lane, slot)
        sequence.last_ns = time.perf_counter_ns()

    def _release(self, sequence: Sequence) -> None:
        """Frees the sequence's slot for the oldest sequence of the backlog."""
        self._table.pop(sequence.corrid, None)
        if sequence.slot is None:
            return
        lane, slot = sequence.slot
        lane.slots[slot] = None
        sequence.slot = None
        if self._backlog:
            waiting = self._backlog.popleft()
            self._bind(waiting, lane, slot)
            self._kick(lane)

    # -- batching --------------------------------------------------------------------------------

    def _kick(self, lane: Lane) -> None:
        """Dispatch at the end of this loop iteration: requests that arrive together batch together."""
        if not lane.scheduled and not lane.busy:
            lane.scheduled = True
            asyncio.get_running_loop().call_soon(self._dispatch, lane)

    def _dispatch(self, lane: Lane) -> None:
        lane.scheduled = False
        if lane.timer is not None:
            lane.timer.cancel()
            lane.timer = None
        if lane.busy or lane.asking or self._closed:
            return
        ready = [i for i, s in enumerate(lane.slots) if s is not None and s.steps]
        if not ready:
            return
        wait_ns = self._wait_ns(lane, ready)
        if wait_ns > 0:
            lane.timer = asyncio.get_running_loop().call_later(wait_ns / 1e9, self._dispatch, lane)
            return
        if not self._may_execute(lane):
            return  # the rate limiter calls back when its resources are free
        rows = self._positions(lane, ready)
        ticket = self._order.ticket()
        try:
            self._submit(lane, rows, ticket)
        except Exception as error:  # e.g. a request whose inputs cannot be padded: fail its batch, not the loop
            log.exception("model '%s': a sequence batch could not be formed", self.config.name)
            self._done(lane, rows, ticket, None, error)

    def _may_execute(self, lane: Lane) -> bool:
        """Whether the lane's instance holds its rate-limiter resources (or needs none), asking
        for them otherwise: a batch forms when they are granted, from what waits then."""
        slot = lane.instance.slot
        if self._limiter is None or slot is None or lane.granted:
            return True
        if self._limiter.acquire(slot, functools.partial(self._granted, lane)):
            lane.granted = True
            return True
        lane.asking = True
        return False

    def _granted(self, lane: Lane) -> None:
        lane.asking, lane.granted = False, True
        if self._closed:
            self._give_back(lane)
            return
        self._dispatch(lane)

    def _give_back(self, lane: Lane) -> None:
        if lane.granted and self._limiter is not None and lane.instance.slot is not None:
            self._limiter.release(lane.instance.slot)
        lane.granted = False

    def _wait_ns(self, lane: Lane, ready: list[int]) -> int:
        """How long to wait for a fuller batch (0: go now)."""
        settings = self._settings
        if not settings.delay_ns:
            return 0
        if settings.oldest:
            count = min(len(ready), settings.max_batch)
            if count >= settings.max_batch or count in settings.preferred:
                return 0
        elif len(ready) >= settings.min_utilization * len(lane.slots):
            return 0
        oldest = min(s.steps[0].enqueued_ns for i in ready if (s := lane.slots[i]) is not None)
        return max(0, oldest + settings.delay_ns - time.perf_counter_ns())

    def _positions(self, lane: Lane, ready: list[int]) -> list[tuple[Sequence | None, Step | None]]:
        """The batch's rows: (sequence, its request), or (None, None) for a padded slot."""
        settings = self._settings
        slots = lane.slots
        if settings.oldest:
            chosen = sorted((s for i in ready if (s := slots[i]) is not None), key=lambda s: s.order)
            return [(s, s.steps.popleft()) for s in chosen[: settings.max_batch]]
        rows: list[tuple[Sequence | None, Step | None]] = []
        for index in range(ready[-1] + 1):
            sequence = slots[index]
            if sequence is not None and sequence.steps:
                rows.append((sequence, sequence.steps.popleft()))
            else:
                rows.append((None, None))
        return rows

    def _submit(self, lane: Lane, rows: list[tuple[Sequence | None, Step | None]], ticket: int) -> None:
        now = time.perf_counter_ns()
        template = next(step.inputs for _, step in rows if step is not None)
        parts = []
        for sequence, step in rows:
            if sequence is None or step is None:
                parts.append(self._padding(template))
                continue
            sequence.running = True
            self.stats.queue.add(now - step.enqueued_ns)
            parts.append(self._inputs(sequence, step))
        lane.busy = True
        self._idle.clear()
        settings = self._settings
        run = _run_async if lane.instance.asynchronous else _run  # a model executing as tasks on the loop
        job = functools.partial(run, parts, settings.batched, self.config.name, self._specs)
        done = functools.partial(self._done, lane, rows, ticket)
        lane.instance.submit(job, asyncio.get_running_loop(), done)

    def _inputs(self, sequence: Sequence, step: Step) -> Tensors:
        """A request's inputs with its control and state tensors."""
        inputs = step.inputs.copy()  # an Identified request keeps its id and parameters
        settings = self._settings
        lead = (1,) if settings.batched else ()
        flags = {START: step.start, END: step.end, READY: True}
        for control in settings.controls:
            value = control.value(flags.get(control.kind, False), sequence.corrid)
            inputs[control.name] = _filled((*lead, 1), control.dtype, value)
        for state in settings.states:
            value = None if step.start else sequence.state.get(state.input_name)
            if value is None:
                value = state.initial if state.initial is not None else np.zeros(state.dims, state.config_dtype)
            inputs[state.input_name] = value.reshape(lead + state.dims)
        return inputs

    def _padding(self, template: Tensors) -> Tensors:
        """An empty slot's row: zeros shaped as a real request's, every control false (READY too)."""
        inputs = {name: np.zeros_like(array) for name, array in template.items()}
        settings = self._settings
        lead = (1,) if settings.batched else ()
        for control in settings.controls:
            empty = "" if control.dtype.kind in "OSU" else 0
            inputs[control.name] = _filled((*lead, 1), control.dtype, control.value(False, empty))
        for state in settings.states:
            inputs[state.input_name] = np.zeros(lead + state.dims, state.config_dtype)
        return inputs

    def _done(
        self,
        lane: Lane,
        rows: list[tuple[Sequence | None, Step | None]],
        ticket: int,
        result: tuple[list[Any], ExecutionTimes] | None,
        error: BaseException | None,
    ) -> None:
        lane.busy = False
        self._give_back(lane)  # the next batch asks again, competing with the other waiters
        served = [(s, step, i) for i, (s, step) in enumerate(rows) if s is not None and step is not None]
        if error is None and result is not None:
            self.stats.record_execution(len(served), len(served), result[1])
        now = time.perf_counter_ns()
        answers = []
        for sequence, step, index in served:
            sequence.running = False
            sequence.last_ns = now
            outcome: Any = error if error is not None or result is None else result[0][index]
            answers.append((step, self._kept(sequence, outcome)))
        self._order.release(ticket, functools.partial(_deliver, answers))  # at once unless preserve_ordering
        for sequence, step, _ in served:
            if step.end and not sequence.steps and self._table.get(sequence.corrid) is sequence:
                self._counts["ended"] += 1
                self._release(sequence)
        if not any(other.busy for other in self._lanes):
            self._idle.set()
        if not self._closed:
            self._kick(lane)

    def _kept(self, sequence: Sequence, outcome: Any) -> Any:
        """The request's outputs with its state taken out and kept for the sequence's next step
        (now, whenever the answer leaves), or its error."""
        if isinstance(outcome, BaseException):
            return outcome
        batched = self._settings.batched
        for state in self._settings.states:
            value = outcome.pop(state.output_name)
            sequence.state[state.input_name] = np.array(value[0] if batched else value)  # a copy: outlives the batch
        return outcome

    # -- idle sequences --------------------------------------------------------------------------

    def _arm_reaper(self) -> None:
        if self._reaper is None and not self._closed:
            period = min(max(self._settings.idle_ns / 4e9, 0.001), 1.0)
            self._reaper = asyncio.get_running_loop().call_later(period, self._reap)

    def _reap(self) -> None:
        """Frees the sequences idle past max_sequence_idle_microseconds."""
        self._reaper = None
        now = time.perf_counter_ns()
        idle_ns = self._settings.idle_ns
        for sequence in list(self._table.values()):
            if sequence.slot is None or sequence.steps or sequence.running:
                continue
            if now - sequence.last_ns > idle_ns:
                self._counts["expired"] += 1
                self._expired[sequence.corrid] = None
                if len(self._expired) > _REMEMBERED_EXPIRED:
                    self._expired.popitem(last=False)
                log.info("model '%s': sequence %r expired (idle)", self.config.name, sequence.corrid)
                self._release(sequence)
        if self._table:
            self._arm_reaper()


def _deliver(answers: list[tuple[Step, Any]]) -> None:
    for step, outcome in answers:
        if step.future.done():
            continue
        if isinstance(outcome, BaseException):
            step.future.set_exception(outcome)
        else:
            step.future.set_result(outcome)


def _filled(shape: tuple[int, ...], dtype: np.dtype[Any], value: Any) -> np.ndarray:
    if dtype.kind == "O":
        array = np.empty(shape, dtype=object)
        array.fill(str(value).encode())
        return array
    return np.full(shape, value, dtype=dtype)


def _run(parts: list[Tensors], batched: bool, model: str, specs: Any, backend: Backend) -> tuple[list[Any], Any]:
    """One batch on the instance's thread: gather, run, check the outputs (the state's too), split."""
    t0 = time.perf_counter_ns()
    if backend.per_request:  # a Triton Python model: each row is a request of its own
        results: list[Any] = backend.execute_requests(parts)
        return _checked_each(results, batched, model, specs, t0)
    inputs = backend.stage(parts)
    t1 = time.perf_counter_ns()
    return _checked(backend.execute(inputs), len(parts), batched, model, specs, t0, t1)


async def _run_async(
    parts: list[Tensors], batched: bool, model: str, specs: Any, backend: Backend
) -> tuple[list[Any], Any]:
    """``_run`` for a model executing as tasks on the event loop (``execute`` a coroutine, or a
    Triton model's BLS ``exec()`` in a greenlet)."""
    t0 = time.perf_counter_ns()
    if backend.per_request:
        results: list[Any] = await backend.execute_requests_async(parts)
        return _checked_each(results, batched, model, specs, t0)
    inputs = backend.stage(parts)
    t1 = time.perf_counter_ns()
    return _checked(await backend.execute_async(inputs), len(parts), batched, model, specs, t0, t1)


def _checked_each(results: list[Any], batched: bool, model: str, specs: Any, t0: int) -> tuple[list[Any], Any]:
    t1 = time.perf_counter_ns()
    for i, output in enumerate(results):
        if not isinstance(output, BaseException):
            try:
                results[i] = check_outputs(model, specs, output, 1 if batched else None)
            except ClipperdError as error:
                results[i] = error
    return results, ExecutionTimes(0, t1 - t0, time.perf_counter_ns() - t1)


def _checked(
    outputs: Tensors, rows: int, batched: bool, model: str, specs: Any, t0: int, t1: int
) -> tuple[list[Any], Any]:
    t2 = time.perf_counter_ns()
    outputs = check_outputs(model, specs, outputs, rows if batched else None)
    return split(outputs, [1] * rows), ExecutionTimes(t1 - t0, t2 - t1, time.perf_counter_ns() - t2)
