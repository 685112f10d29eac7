"""Triton Python-backend models (``class TritonPythonModel``) on clipperd's Python backend.

Triton calls ``initialize(args)`` with the model config as JSON, ``execute(requests)`` with the
requests of a batch (each with its own tensors; the model answers each with an
``InferenceResponse``) and ``finalize()``. This adapter does the same: the dynamic batcher's
batch arrives as its requests, unconcatenated; each response's outputs go to its request, and a
response carrying a ``TritonError`` fails only its own request, with the status its code names."""

from __future__ import annotations

import asyncio
import inspect
import json
import sys
from collections.abc import Sequence
from typing import Any

from backends import bls
from backends import triton_utils as pb
from backends.base import InstanceContext, Tensors
from backends.common import greenlets
from backends.common.config import config_to_json
from backends.common.errors import (
    AlreadyExists,
    Cancelled,
    ClipperdError,
    InvalidArgument,
    ModelExecutionError,
    NotFound,
    Unavailable,
    Unimplemented,
)
from backends.common.streaming import AnswerStream
from backends.common.tensors import Identified

MODULE_NAME = "triton_python_backend_utils"

_ERRORS: dict[int, type[ClipperdError]] = {
    pb.TritonError.NOT_FOUND: NotFound,
    pb.TritonError.INVALID_ARG: InvalidArgument,
    pb.TritonError.UNAVAILABLE: Unavailable,
    pb.TritonError.UNSUPPORTED: Unimplemented,
    pb.TritonError.ALREADY_EXISTS: AlreadyExists,
    pb.TritonError.CANCELLED: Cancelled,
}


def install_utils() -> None:
    """Makes ``import triton_python_backend_utils`` find clipperd's implementation."""
    sys.modules.setdefault(MODULE_NAME, pb)


def initialize_args(context: InstanceContext) -> dict[str, str]:
    """What Triton passes to ``initialize``: strings only, the config as Triton's JSON."""
    config = config_to_json(context.config, include_defaults=True)
    return {
        "model_config": json.dumps(config),
        "model_instance_kind": "GPU" if context.device.kind == "gpu" else "CPU",
        "model_instance_name": context.instance_name,
        "model_instance_device_id": str(context.device.index),
        "model_repository": str(context.version_path.parent),
        "model_version": str(context.version),
        "model_name": context.model_name,
    }


class TritonModel:
    """Wraps a ``TritonPythonModel`` object."""

    def __init__(self, model: Any, context: InstanceContext) -> None:
        self.model = model
        self.context = context
        self.output_names = [output.name for output in context.config.output]
        self._loop: asyncio.AbstractEventLoop | None = None  # an ``async def execute`` runs here
        self._async_execute = inspect.iscoroutinefunction(model.execute)

    def initialize(self) -> None:
        initialize = getattr(self.model, "initialize", None)
        if callable(initialize):
            initialize(initialize_args(self.context))

    def finalize(self) -> None:
        try:
            finalize = getattr(self.model, "finalize", None)
            if callable(finalize):
                finalize()
        finally:
            if self._loop is not None:
                self._loop.close()
                self._loop = None

    def execute_requests(self, parts: Sequence[Tensors]) -> list[Tensors | ClipperdError]:
        requests = self._requests(parts)
        with bls.executing(self.context.bls):
            responses = self.model.execute(requests)
            if inspect.iscoroutine(responses):
                responses = self._run(responses)
        return self._results(responses, len(requests))

    async def execute_requests_async(self, parts: Sequence[Tensors]) -> list[Tensors | ClipperdError]:
        """``execute`` as a task on the server's event loop: an ``async def execute`` awaited
        (its ``async_exec`` awaits the other models without leaving the loop), a plain one in a
        greenlet (its ``exec()`` suspends it while the loop runs the call)."""
        requests = self._requests(parts)
        with bls.executing(self.context.bls):
            if self._async_execute:
                responses = await self.model.execute(requests)
            else:
                responses = await greenlets.run(self.model.execute, requests)
        return self._results(responses, len(requests))

    def _requests(self, parts: Sequence[Tensors]) -> list[pb.InferenceRequest]:
        requests = []
        for part in parts:
            request = pb.InferenceRequest(
                [pb.Tensor(name, array) for name, array in part.items()],
                self.output_names,
                model_name=self.context.model_name,
                model_version=self.context.version,
            )
            if isinstance(part, Identified):  # the client's request id and parameters
                request._id = part.request_id
                request._client_parameters = part.parameters
            requests.append(request)
        return requests

    def execute_decoupled(self, parts: Sequence[Tensors], streams: Sequence[AnswerStream]) -> None:
        """Triton's decoupled mode: each request carries a response sender; ``execute`` returns
        None, and the model sends each request's answers now or later (from its own threads)."""
        requests = self._requests(parts)
        for request, stream in zip(requests, streams, strict=True):
            request._sender = pb.InferenceResponseSender(stream, self._result)
        with bls.executing(self.context.bls):
            returned = self.model.execute(requests)
        if returned is not None:
            raise ModelExecutionError(
                f"model '{self.context.model_name}' is decoupled: its execute must return None "
                f"(answers go through request.get_response_sender()), got {type(returned).__name__}"
            )

    def _results(self, responses: Any, count: int) -> list[Tensors | ClipperdError]:
        if not isinstance(responses, list | tuple) or len(responses) != count:
            got = len(responses) if isinstance(responses, list | tuple) else type(responses).__name__
            raise ModelExecutionError(
                f"model '{self.context.model_name}' failed: execute must return a list of "
                f"{count} InferenceResponse (one per request), got {got}"
            )
        return [self._result(response) for response in responses]

    def _run(self, coroutine: Any) -> Any:
        """An ``async def execute``: run on the instance's own event loop (its thread's), where
        ``async_exec`` awaits calls that the server's loop runs."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:  # on the server's loop, which cannot wait for a coroutine inside a callback
            coroutine.close()
            raise ModelExecutionError(
                f"model '{self.context.model_name}' has an async execute but executes on the event "
                'loop: set its parameter execution_mode to "thread"'
            )
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coroutine)

    def _result(self, response: Any) -> Tensors | ClipperdError:
        name = self.context.model_name
        if not isinstance(response, pb.InferenceResponse):
            return ModelExecutionError(
                f"model '{name}' failed: execute returned a {type(response).__name__}, not an InferenceResponse"
            )
        error = response.error()
        if error is not None:
            text = str(error.message() if isinstance(error, pb.TritonError) else error)[:500]
            code = error.code() if isinstance(error, pb.TritonError) else pb.TritonError.UNKNOWN
            return _ERRORS.get(code, ModelExecutionError)(f"model '{name}': {text}")
        outputs: Tensors = {}
        for tensor in response.output_tensors():
            if not isinstance(tensor, pb.Tensor):
                kind = type(tensor).__name__
                return ModelExecutionError(f"model '{name}' failed: an output is a {kind}, not a Tensor")
            outputs[tensor.name()] = tensor.as_numpy()
        return outputs
