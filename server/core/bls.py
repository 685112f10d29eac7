"""BLS from the server's side: a model's call to another model of the repository
(backends/bls.py) runs through the one entry point (server/core/inference.py), so the target's
validation, response cache, batcher and statistics apply to it as to a client's request."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from backends.bls import ModelCall
from backends.common.errors import InvalidArgument
from backends.common.streaming import Answer
from backends.common.tensors import Tensors
from server.core import inference
from server.core.messages import Params

if TYPE_CHECKING:
    from server.core.model_version import ModelVersion

_SCALARS = (str, int, float, bool)


class Models(Protocol):
    """What serves a name and version now (the repository)."""

    def get(self, name: str, version: str = "") -> ModelVersion: ...


@dataclass(frozen=True, slots=True)
class _Name:
    name: str


class RepositoryCaller:
    """The ``ModelCaller`` the repository hands its instances (backends/bls.py)."""

    def __init__(self, models: Models) -> None:
        self._models = models

    async def call_model(self, call: ModelCall) -> Tensors:
        model = self._model(call)
        outputs = await inference.infer(model, _request(call))
        return _wanted(call, outputs)

    async def stream_model(self, call: ModelCall) -> AsyncGenerator[Answer, None]:
        """``exec(decoupled=True)``: the target's answers as ``infer_stream`` yields them (one,
        final, for a model that is not decoupled, as Triton answers it). Closing this generator
        closes the target's stream: its request is cancelled."""
        answers = inference.infer_stream(self._model(call), _request(call))
        try:
            async for answer in answers:
                outputs = _wanted(call, answer.response) if answer.response is not None else {}
                yield Answer(outputs, answer.error, answer.final)
        finally:
            await answers.aclose()

    def _model(self, call: ModelCall) -> ModelVersion:
        version = str(call.version) if call.version > 0 else ""
        return self._models.get(call.model, version)


def _request(call: ModelCall) -> inference.TensorCall:
    return inference.TensorCall(
        [inference.Tensor(name, array) for name, array in call.inputs.items()],
        _parameters(call),
        tuple(_Name(name) for name in call.outputs),
        call.request_id,
    )


def _wanted(call: ModelCall, outputs: Tensors) -> Tensors:
    """The outputs the call asked for (an answer of a decoupled model may carry some only)."""
    if not call.outputs:
        return outputs
    return {name: outputs[name] for name in call.outputs if name in outputs}


def _parameters(call: ModelCall) -> Params:
    """The request's parameters: scalars only, as a client's are."""
    params: Params = {}
    for key, value in call.parameters.items():
        if not isinstance(value, _SCALARS):
            raise InvalidArgument(f"BLS call to model '{call.model}': parameter '{key}' is not a scalar")
        params[str(key)] = value
    return params
