"""Decoupled clipperd Python models: ``execute(inputs)`` is a generator, or an async generator,
that yields one output dict per answer.

For a decoupled model (``model_transaction_policy { decoupled: true }``) the batch the dynamic
batcher formed reaches the model as its requests: ``execute`` is called once per request, with
that request's inputs (the batch dimension, when ``max_batch_size > 0``, is the request's own
rows). What it returns:

- a generator (``def execute(...): yield {...}``): iterated on the instance's thread, the
  batch's generators in turn (one answer from each, round robin); the instance takes its next
  batch once they are all done;
- an async generator (``async def execute(...): yield {...}``): iterated as a task on the event
  loop, so the instance is free again as soon as ``execute`` has returned, and the generators
  of many requests interleave at their ``await``s;
- a dict: the request's only answer.

Each yielded dict is one answer; its outputs must be outputs of the config, with their data
types and shapes (an answer may carry some of them only). The request ends when the generator
returns: its last answer is then an empty final one (sent to gRPC clients that ask for empty
final responses). An exception ends the request with it. When the client goes away the
generator is closed (``GeneratorExit`` at its ``yield``, or the task's ``CancelledError`` at its
``await``), so a ``try/finally`` in the model sees it. A yield waits while the client has not
read the request's earlier answers (backends/common/streaming.py: ``ANSWERS_PER_REQUEST``)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncGenerator, Callable, Generator, Sequence
from typing import Any

from backends.base import Tensors
from backends.common.errors import ModelExecutionError
from backends.common.streaming import Answer, AnswerStream

Describe = Callable[[BaseException], str]  # an exception as the client may read it


def start_streams(model: Any, parts: Sequence[Tensors], streams: Sequence[AnswerStream], describe: Describe) -> None:
    """Calls ``model.execute`` for each request and runs what it returns (see the module's doc)."""
    generators: list[tuple[Generator[Any, Any, Any], AnswerStream]] = []
    for inputs, stream in zip(parts, streams, strict=True):
        try:
            result = model.execute(inputs)
        except (Exception, SystemExit) as exc:  # fails this request only
            stream.put(Answer({}, ModelExecutionError(describe(exc)), final=True))
            continue
        if inspect.isasyncgen(result):
            stream.spawn(functools.partial(_pump_async, result, stream, describe))
        elif inspect.isgenerator(result):
            generators.append((result, stream))
        elif isinstance(result, dict):
            stream.put(Answer(result, final=True))
        else:
            kind = type(result).__name__
            stream.put(Answer({}, ModelExecutionError(f"execute returned a {kind}, not a generator"), final=True))
    _pump(generators, describe)


def _pump(generators: list[tuple[Generator[Any, Any, Any], AnswerStream]], describe: Describe) -> None:
    """One answer from each generator in turn until all are done (on the instance's thread)."""
    while generators:
        for item in list(generators):
            generator, stream = item
            if stream.cancelled:
                generator.close()  # GeneratorExit at its yield: the model's finally runs
                generators.remove(item)
                continue
            try:
                outputs = next(generator)
            except StopIteration:
                stream.put(Answer({}, final=True))
                generators.remove(item)
                continue
            except (Exception, SystemExit) as exc:
                stream.put(Answer({}, ModelExecutionError(describe(exc)), final=True))
                generators.remove(item)
                continue
            stream.put(_answer(outputs))


async def _pump_async(generator: AsyncGenerator[Any, Any], stream: AnswerStream, describe: Describe) -> None:
    """An async generator's answers, as a task on the event loop; cancelled with its stream."""
    try:
        async for outputs in generator:
            await stream.put_async(_answer(outputs))
            if stream.cancelled:
                break
        else:
            await stream.put_async(Answer({}, final=True))
    except (Exception, SystemExit) as exc:
        if not stream.finished:
            stream.fail(ModelExecutionError(describe(exc)))
    finally:
        await generator.aclose()  # GeneratorExit at its yield when it is still suspended there


def _answer(outputs: Any) -> Answer:
    if not isinstance(outputs, dict):
        return Answer({}, ModelExecutionError(f"yielded a {type(outputs).__name__}, expected a dict of numpy arrays"))
    return Answer(outputs)
