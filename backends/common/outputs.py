"""A model's outputs checked against its config, once per batch, whatever the backend: a wrong
model fails its requests with a clear error instead of sending data the config does not describe.
``reshape`` is the shape the model produces; clients get ``dims``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from backends.common import datatypes
from backends.common.errors import ConfigError, ModelExecutionError
from backends.common.tensors import Tensors, shape_matches
from backends.proto import model_config_pb2 as mc


@dataclass(frozen=True)
class OutputSpec:
    """What the config allows for one output (computed once, checked per batch)."""

    name: str
    wire: str  # KServe v2 type name: "FP32", "BYTES", "BF16" ...
    dtype: np.dtype[Any]
    dims: tuple[int, ...]  # as the model produces it, without the batch dimension; -1 matches any size
    client_dims: tuple[int, ...] | None  # the config's dims when they differ (reshape), else None

    def problem(self, value: object, batch: int | None) -> str | None:
        """Why ``value`` is not a valid result for this output, or None."""
        if not isinstance(value, np.ndarray):
            return f"output '{self.name}' is a {type(value).__name__}, not a numpy array"
        if not self._dtype_ok(value.dtype):
            return f"output '{self.name}' has dtype {value.dtype}, config expects {self.wire}"
        expected = self.dims if batch is None else (batch, *self.dims)
        if not shape_matches(expected, value.shape):
            return f"output '{self.name}' has shape {list(value.shape)}, config expects {list(expected)}"
        return None

    def _dtype_ok(self, dtype: np.dtype[Any]) -> bool:
        if self.wire == "BYTES":
            return dtype.kind in "OSU"
        return bool(dtype == self.dtype)


def output_specs(config: mc.ModelConfig) -> tuple[OutputSpec, ...]:
    """The outputs' expected types and shapes (``reshape`` is the shape the model produces)."""
    specs = []
    for output in config.output:
        type_name = mc.DataType.Name(output.data_type)
        if type_name not in datatypes.BY_CONFIG:
            raise ConfigError(f"model '{config.name}'", f"output '{output.name}' data_type", "is not set")
        dtype = datatypes.from_config(type_name)
        dims = tuple(output.dims)
        if output.HasField("reshape"):
            specs.append(OutputSpec(output.name, dtype.wire, dtype.numpy, tuple(output.reshape.shape), dims))
        else:
            specs.append(OutputSpec(output.name, dtype.wire, dtype.numpy, dims, None))
    return tuple(specs)


def check_outputs(model_name: str, specs: tuple[OutputSpec, ...], result: object, batch: int | None) -> Tensors:
    """``result`` as Tensors when it holds exactly the config's outputs, else ModelExecutionError."""
    if not isinstance(result, dict):
        raise ModelExecutionError(
            f"model '{model_name}' failed: returned a {type(result).__name__}, expected a dict of numpy arrays"
        )
    for spec in specs:
        if spec.name not in result:
            raise ModelExecutionError(f"model '{model_name}' failed: output '{spec.name}' is missing")
        problem = spec.problem(result[spec.name], batch)
        if problem:
            raise ModelExecutionError(f"model '{model_name}' failed: {problem}")
        if spec.client_dims is not None:
            lead = (batch,) if batch is not None else ()
            result[spec.name] = result[spec.name].reshape(lead + spec.client_dims)
    if len(result) != len(specs):
        known = {spec.name for spec in specs}
        extra = sorted(str(key) for key in result if key not in known)
        raise ModelExecutionError(f"model '{model_name}' failed: unexpected output(s) {extra[:4]}")
    return result
