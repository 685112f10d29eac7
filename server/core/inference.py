"""The one way a model version runs a request, whoever asks: a transport (through the DataPlane),
an ensemble's step or an application's member. ``infer`` validates the inputs against the
version's signature, consults the response cache, queues and executes through the version's
scheduler, and counts the request in the version's statistics (success or failure with its
reason, cache hit or miss, queue and compute times), exactly as a client's request is counted.

Callers hand their request over as a ``Call``: the inputs and requested outputs it carries, its
parameters, what it holds meanwhile (a client's shared-memory regions) and how its answer is
built. No wire type crosses this module.

The response cache (statistics as Triton's: ``cache_hit``: count and lookup time; ``cache_miss``:
count, lookup and insertion time) is consulted by every caller alike, keyed by the inputs as the
request carried them (names, data types, shapes, bytes, BYTES included). Requests that do not use
it: those of models without ``response_cache { enable: true }`` (or of a server without
``--cache-config``), and those that carry a sequence (``sequence_id`` other than 0 or "",
``sequence_start``, ``sequence_end``): Triton's sequence batcher does not cache.

A version with feedback on (``parameters`` ``feedback_enable``) keeps each answered request's
prediction under its id, for the labels clients send later (server/monitoring/feedback).

Decoupled models (``model_transaction_policy { decoupled: true }``) answer zero to many times:
``infer`` refuses them (UNIMPLEMENTED, as Triton's ModelInfer does) and ``infer_stream`` yields
their answers one by one as the model sends them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

import numpy as np

from backends.base import Tensors
from backends.common.errors import Cancelled, ClipperdError, Unimplemented
from backends.common.outputs import OutputSpec, check_outputs, output_specs
from backends.common.streaming import Answer
from backends.common.tensors import Identified
from schedulers.protocol import SequenceScheduling
from schedulers.scheduler import ModelScheduler as StreamingScheduler
from server.core.messages import Params

if TYPE_CHECKING:
    from server.core.model_version import CacheProbe, ModelVersion

R = TypeVar("R", covariant=True)


class TensorIn(Protocol):
    """One input as a request carries it; ``datatype`` "" means the array's own type."""

    @property
    def name(self) -> str: ...

    @property
    def datatype(self) -> str: ...

    @property
    def shape(self) -> Sequence[int]: ...

    @property
    def data(self) -> np.ndarray: ...


class Named(Protocol):
    @property
    def name(self) -> str: ...


class Call(Protocol[R]):
    """One request as its caller hands it over: ``open`` reads what the request keeps elsewhere
    (shared memory; a failure there is the request's failure), ``close`` lets it go, ``respond``
    builds the answer from the outputs (inside the request's statistics: a failure is counted)."""

    @property
    def inputs(self) -> Sequence[TensorIn]: ...

    @property
    def outputs(self) -> Sequence[Named]: ...  # empty: every output

    @property
    def parameters(self) -> Params: ...

    @property
    def request_id(self) -> str: ...  # the client's request id ("" from inside the server)

    def open(self) -> None: ...

    def close(self) -> None: ...

    def respond(self, model: ModelVersion, outputs: Tensors) -> R: ...


def _in_sequence(parameters: Params) -> bool:
    """Requests of a sequence do not use the response cache (Triton's sequence batcher does not)."""
    return bool(parameters.get("sequence_id")) or "sequence_start" in parameters or "sequence_end" in parameters


async def _execute_in_sequence(scheduler: SequenceScheduling, inputs: Tensors, batch: int, params: Params) -> Tensors:
    """A request that carries sequence parameters, on a model with a sequence batcher: run in its
    sequence's order."""
    corrid = params.get("sequence_id", 0)
    assert isinstance(corrid, int | str)  # validation checked its type
    start, end = bool(params.get("sequence_start", False)), bool(params.get("sequence_end", False))
    return await scheduler.execute_sequence(inputs, batch, corrid, start, end)


def _probe(model: ModelVersion, call: Call[object]) -> CacheProbe | None:
    """The cache lookup, keyed by the inputs as the request carried them (before any reshape)."""
    params = call.parameters
    if model.cache is None or (params and _in_sequence(params)):
        return None
    specs = model.signature.inputs
    return model.cache_probe((t.name, specs[t.name].datatype, t.shape, t.data) for t in call.inputs)


async def infer(model: ModelVersion, call: Call[R]) -> R:
    """Runs ``call`` on ``model``: validation, cache, queue, execution, statistics. A failure
    counts as OTHER until the request reaches the scheduler, then by its kind (REJECTED,
    BACKEND, CANCELED), and as OTHER again once the outputs are in (building the answer)."""
    with model.stats.track() as tracked:
        call.open()
        try:
            params = call.parameters
            if model.signature.decoupled:
                raise Unimplemented(f"{_DECOUPLED % model.name}: use gRPC ModelStreamInfer or HTTP generate_stream")
            inputs, batch = model.signature.validate(call.inputs, call.outputs, params)
            if model.identified:  # a model that reads each request's id and parameters
                inputs = Identified(inputs, call.request_id, params)
            probe = _probe(model, call)
            if probe is not None and probe.outputs is not None:
                if model.feedback is not None and call.request_id:
                    model.feedback.served(call.request_id, probe.outputs)
                return call.respond(model, probe.outputs)  # a hit: the model does not run
            tracked.executing = True
            scheduler = model.scheduler
            if params and _in_sequence(params) and isinstance(scheduler, SequenceScheduling):
                outputs = await _execute_in_sequence(scheduler, inputs, batch, params)
            else:  # a model without a sequence batcher ignores them, as Triton's dynamic batcher does
                outputs = await scheduler.execute(
                    inputs, batch, int(params.get("priority", 0)), int(params.get("timeout", 0))
                )
            tracked.executing = False  # from here a failure is in building the answer
            if model.drift is not None:  # a sample for the drift monitor: a copy or a drop, never a wait
                model.drift.offer(inputs, outputs)
            if probe is not None:
                model.cache_store(probe, outputs)
            if model.feedback is not None and call.request_id:  # kept for the labels to come
                model.feedback.served(call.request_id, outputs)
            return call.respond(model, outputs)
        finally:
            call.close()


_DECOUPLED = "model '%s' is decoupled (model_transaction_policy): it streams its answers"


@dataclass(frozen=True, slots=True)
class Streamed(Generic[R]):
    """One answer of a streamed request: ``response`` (the call's answer built from the answer's
    outputs; None for an answer without outputs, such as a final flag alone) or ``error`` (the
    model answered this one with an error), and whether it is the request's last (``final``)."""

    response: R | None
    error: ClipperdError | None = None
    final: bool = False


async def infer_stream(model: ModelVersion, call: Call[R]) -> AsyncGenerator[Streamed[R], None]:
    """Runs ``call`` on ``model`` and yields its answers as they come: zero to many for a
    decoupled model (the last one ``final``, possibly without outputs), exactly one for any
    other model (``infer``'s answer). The request goes through validation, the model's queue and
    dynamic batcher, and the statistics as ``infer``'s do (no response cache: answers stream).
    Closing the generator early (``aclose``: the client went away) takes the request out of the
    queue, or tells the model (``is_cancelled()``, its generator closed), and counts it CANCELED.
    This is the one entry point for streamed answers: transports and BLS calls iterate it."""
    if not model.signature.decoupled:
        yield Streamed(await infer(model, call), final=True)
        return
    scheduler = model.scheduler
    if not isinstance(scheduler, StreamingScheduler):  # build_scheduler refuses such a version
        raise Unimplemented(_DECOUPLED % model.name + ", but its scheduler cannot stream")
    tracked = model.stats.track().__enter__()
    failure: BaseException | None = None
    streamed = None
    final: Streamed[R] | None = None
    call.open()
    try:
        inputs, batch = model.signature.validate(call.inputs, call.outputs, call.parameters)
        if model.identified:
            inputs = Identified(inputs, call.request_id, call.parameters)
        tracked.executing = True
        params = call.parameters
        priority, timeout = int(params.get("priority", 0)), int(params.get("timeout", 0))
        streamed = running = scheduler.execute_stream(inputs, batch, priority, timeout)
        specs = output_specs(model.config)
        batched = batch if model.config.max_batch_size > 0 else None
        while True:
            answer = await running.answers.get()
            item = _streamed_answer(model, call, specs, answer, batched)
            if item.final:
                streamed, failure, final = None, item.error, item
                break
            yield item
    except (GeneratorExit, asyncio.CancelledError):
        failure = Cancelled(f"model '{model.name}': the client went away")
        raise
    except BaseException as error:
        failure = error
        raise
    finally:
        if streamed is not None:
            streamed.cancel()
        call.close()
        tracked.__exit__(None if failure is None else type(failure), failure, None)
    assert final is not None  # the loop ends only with it, or raises
    yield final  # counted before the reader sees it: a reader that stops at it was served


def _streamed_answer(
    model: ModelVersion, call: Call[R], specs: tuple[OutputSpec, ...], answer: Answer, batch: int | None
) -> Streamed[R]:
    """An answer checked against the config's outputs (it may carry some of them only)."""
    if answer.error is not None or not answer.outputs:
        return Streamed(None, answer.error, answer.final)
    present = tuple(spec for spec in specs if spec.name in answer.outputs)
    try:
        outputs = check_outputs(model.name, present, answer.outputs, batch)
        return Streamed(call.respond(model, outputs), None, answer.final)
    except ClipperdError as error:
        return Streamed(None, error, answer.final)


@dataclass(frozen=True, slots=True)
class Tensor:
    """An input from inside the server: its data type is the array's."""

    name: str
    data: np.ndarray
    datatype: str = ""

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape


@dataclass(slots=True)
class TensorCall:
    """A request from inside the server (an ensemble's step, an application's member): named
    arrays in, every output back as named arrays."""

    inputs: list[Tensor]
    parameters: Params = field(default_factory=dict)
    outputs: tuple[Named, ...] = ()
    request_id: str = ""

    def open(self) -> None:
        return None

    def close(self) -> None:
        return None

    def respond(self, model: ModelVersion, outputs: Tensors) -> Tensors:
        return outputs


def tensor_call(inputs: Mapping[str, np.ndarray], priority: int = 0, timeout_us: int = 0) -> TensorCall:
    params: Params = {}
    if priority:
        params["priority"] = priority
    if timeout_us:
        params["timeout"] = timeout_us
    return TensorCall([Tensor(n, a) for n, a in inputs.items()], params)
