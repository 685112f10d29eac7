"""The transport-neutral request and response every transport decodes into and encodes from."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Param = bool | int | float | str
Params = dict[str, Param]


@dataclass(slots=True)
class InputTensor:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray  # viewing the wire bytes where the layout allows
    parameters: Params = field(default_factory=dict)


@dataclass(slots=True)
class RequestedOutput:
    name: str
    parameters: Params = field(default_factory=dict)


@dataclass(slots=True)
class InferRequest:
    model_name: str
    model_version: str  # "" means the latest ready version
    id: str
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] = field(default_factory=list)  # empty: every output
    parameters: Params = field(default_factory=dict)  # kept for the schedulers (priority, timeout...)


@dataclass(slots=True)
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray
    parameters: Params = field(default_factory=dict)


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[OutputTensor]
    parameters: Params = field(default_factory=dict)


@dataclass(frozen=True)
class TensorMetadata:
    """One tensor as ModelMetadata shows it (-1: a dimension of any size)."""

    name: str
    datatype: str
    shape: list[int]


@dataclass(frozen=True)
class ModelMetadata:
    """What ModelMetadata answers for a model or an application."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
