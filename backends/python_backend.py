"""The Python backend: a model written as a plain Python class in ``model.py``.

Config: ``backend: "python"`` (the default file is ``model.py``; ``default_model_filename``
overrides it). The file defines::

    class Model:
        def initialize(self, context):  # optional
            # context: backends.base.InstanceContext with .config (ModelConfig), .version,
            # .version_path (the version folder), .device (.name is "cpu" or "cuda:N"),
            # .instance_name, .parameters (the config's `parameters`, str -> str)
            ...

        def execute(self, inputs):  # required
            # inputs: dict[str, np.ndarray], one entry per config input, the whole batch at once:
            # when max_batch_size > 0 the first dimension is the batch. TYPE_STRING arrives as an
            # object array of bytes, TYPE_BF16 as raw uint16 words.
            # Returns dict[str, np.ndarray] with every config output, each with the config's data
            # type and the same batch size as the inputs.
            return {"OUTPUT0": inputs["INPUT0"]}

        def finalize(self):  # optional, called when the instance is unloaded
            ...

Each instance gets its own ``Model`` object. The file is imported once per version folder
(instances of one version share the module; a changed file is imported afresh) under a module
name unique to that folder, so models and versions with the same ``model.py`` never clash. The
version folder is not put on ``sys.path``: read sibling files through ``context.version_path``.

Errors: a missing file, a syntax error, no ``Model`` class or an ``initialize`` that raises fail
the load with a clipperd error naming the model and the file. An exception in ``execute``, or a
result that is not a dict of numpy arrays matching the config's outputs, fails that batch with
``ModelExecutionError("model 'X' failed: <ExceptionType>: <message>")``.

Triton's ``TritonPythonModel`` API (pb_utils requests and responses) is not handled here."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from backends.base import Backend, InstanceContext, Tensors
from backends.common import datatypes
from backends.common.errors import (
    ConfigError,
    FailedPrecondition,
    InvalidArgument,
    ModelExecutionError,
    NotFound,
)
from backends.proto import model_config_pb2 as mc

_log = logging.getLogger(__name__)
_MAX_MESSAGE = 500  # a client-facing message stays short even when a model's exception is long


# ---------------------------------------------------------------------------------------------
# Shared by the backends: clean error text and output checks against the config.


def describe_exception(exc: BaseException, context: InstanceContext) -> str:
    """``Type: message`` on one line, without the repository's absolute paths or tracebacks."""
    text, from_traceback = _one_line(str(exc))
    for root in {str(context.version_path.parent.parent), str(context.version_path.resolve().parent.parent)}:
        text = text.replace(root + os.sep, "")
    if len(text) > _MAX_MESSAGE:
        text = text[:_MAX_MESSAGE] + "..."
    if from_traceback and re.match(r"^[\w.]+: ", text):
        return text.removeprefix("builtins.")  # a TorchScript traceback's last line names the type
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _one_line(text: str) -> tuple[str, bool]:
    """The message on one line, and whether it was the last line of a traceback."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):
        return lines[-1], True  # a traceback ends with the error itself
    return " ".join(lines), False


@dataclass(frozen=True)
class OutputSpec:
    """What the config allows for one output (computed once, checked per batch)."""

    name: str
    wire: str  # KServe v2 type name: "FP32", "BYTES", "BF16" ...
    dtype: np.dtype[Any]
    dims: tuple[int, ...]  # without the batch dimension; -1 matches any size

    def problem(self, value: object, batch: int | None) -> str | None:
        """Why ``value`` is not a valid result for this output, or None."""
        if not isinstance(value, np.ndarray):
            return f"output '{self.name}' is a {type(value).__name__}, not a numpy array"
        if not self._dtype_ok(value.dtype):
            return f"output '{self.name}' has dtype {value.dtype}, config expects {self.wire}"
        expected = self.dims if batch is None else (batch, *self.dims)
        if len(value.shape) != len(expected) or any(
            want not in (-1, got) for want, got in zip(expected, value.shape, strict=True)
        ):
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
        dims = tuple(output.reshape.shape) if output.HasField("reshape") else tuple(output.dims)
        specs.append(OutputSpec(output.name, dtype.wire, dtype.numpy, dims))
    return tuple(specs)


def batch_size(config: mc.ModelConfig, inputs: Tensors) -> int | None:
    """The batch the inputs carry (their first dimension; -1: unknown), None when the model does not batch."""
    if config.max_batch_size <= 0:
        return None
    first = next(iter(inputs.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else -1


def check_outputs(
    model_name: str, specs: tuple[OutputSpec, ...], result: object, batch: int | None
) -> Tensors:
    """``result`` as Tensors when it holds exactly the config's outputs, else ModelExecutionError."""
    if not isinstance(result, dict):
        raise ModelExecutionError(
            f"model '{model_name}' failed: returned a {type(result).__name__}, "
            "expected a dict of numpy arrays"
        )
    for spec in specs:
        if spec.name not in result:
            raise ModelExecutionError(f"model '{model_name}' failed: output '{spec.name}' is missing")
        problem = spec.problem(result[spec.name], batch)
        if problem:
            raise ModelExecutionError(f"model '{model_name}' failed: {problem}")
    if len(result) != len(specs):
        known = {spec.name for spec in specs}
        extra = sorted(str(key) for key in result if key not in known)
        raise ModelExecutionError(f"model '{model_name}' failed: unexpected output(s) {extra[:4]}")
    return result


# ---------------------------------------------------------------------------------------------
# model.py modules, one per version folder.


@dataclass
class _Entry:
    stamp: tuple[int, int]  # (mtime_ns, size): a changed file is imported afresh
    module: ModuleType
    users: int


class _ModuleCache:
    """Imports each version's model.py once and drops it from sys.modules with its last user."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # instances of one version load on different threads
        self._entries: dict[str, _Entry] = {}

    def acquire(self, path: Path, context: InstanceContext) -> ModuleType:
        name = _module_name(context)
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            entry = self._entries.get(name)
            if entry is None or entry.stamp != stamp:
                entry = _Entry(stamp, _import(path, name, context), 0)
                self._entries[name] = entry
            entry.users += 1
            return entry.module

    def release(self, module: ModuleType) -> None:
        with self._lock:
            entry = self._entries.get(module.__name__)
            if entry is None or entry.module is not module:
                return  # an older import of a file that has changed since
            entry.users -= 1
            if entry.users <= 0:
                del self._entries[module.__name__]
                if sys.modules.get(module.__name__) is module:
                    del sys.modules[module.__name__]


def _module_name(context: InstanceContext) -> str:
    # flat (no dots) so that pickle can find classes defined in model.py
    digest = hashlib.sha256(str(context.version_path.resolve()).encode()).hexdigest()[:12]
    safe = re.sub(r"\W", "_", context.model_name)[:48]
    return f"_clipperd_model_{safe}_v{context.version}_{digest}"


def _import(path: Path, name: str, context: InstanceContext) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InvalidArgument(f"model '{context.model_name}': {path.name} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickle look the module up while it runs
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        del sys.modules[name]
        raise InvalidArgument(
            f"model '{context.model_name}': {path.name} line {exc.lineno}: syntax error: {exc.msg}"
        ) from None
    except Exception as exc:
        del sys.modules[name]
        raise ModelExecutionError(
            f"model '{context.model_name}': importing {path.name} failed: {describe_exception(exc, context)}"
        ) from exc
    return module


_MODULES = _ModuleCache()


def _model_class(module: ModuleType, context: InstanceContext, filename: str) -> type[Any]:
    cls = getattr(module, "Model", None)
    if not isinstance(cls, type):
        hint = (
            " (Triton's TritonPythonModel API is not supported)"
            if hasattr(module, "TritonPythonModel")
            else ""
        )
        raise InvalidArgument(f"model '{context.model_name}': {filename} defines no class 'Model'{hint}")
    if not callable(getattr(cls, "execute", None)):
        raise InvalidArgument(
            f"model '{context.model_name}': class 'Model' in {filename} has no execute method"
        )
    return cls


# ---------------------------------------------------------------------------------------------


class PythonBackend(Backend):
    """One instance of a ``model.py`` model: its own ``Model`` object, driven on its own thread."""

    default_filename = "model.py"

    def __init__(self, context: InstanceContext) -> None:
        super().__init__(context)
        self._module: ModuleType | None = None
        self._model: Any = None
        self._specs = output_specs(context.config)

    def load(self) -> None:
        path = self.model_file
        if not path.is_file():
            raise NotFound(
                f"model '{self.context.model_name}' version {self.context.version}: "
                f"file '{path.name}' not found"
            )
        module = _MODULES.acquire(path, self.context)
        try:
            self._model = self._create(_model_class(module, self.context, path.name))
        except BaseException:
            _MODULES.release(module)
            raise
        self._module = module

    def _create(self, cls: type[Any]) -> Any:
        try:
            model = cls()
            initialize = getattr(model, "initialize", None)
            if callable(initialize):
                initialize(self.context)
        except Exception as exc:
            raise ModelExecutionError(
                f"model '{self.context.model_name}' failed to initialize: "
                f"{describe_exception(exc, self.context)}"
            ) from exc
        return model

    def execute(self, inputs: Tensors) -> Tensors:
        if self._model is None:
            raise FailedPrecondition(f"model '{self.context.model_name}' is not loaded")
        try:
            result = self._model.execute(inputs)
        except Exception as exc:
            raise ModelExecutionError(
                f"model '{self.context.model_name}' failed: {describe_exception(exc, self.context)}"
            ) from exc
        return check_outputs(
            self.context.model_name, self._specs, result, batch_size(self.context.config, inputs)
        )

    def unload(self) -> None:
        model, module = self._model, self._module
        self._model = self._module = None
        try:
            finalize = getattr(model, "finalize", None)
            if callable(finalize):
                finalize()
        except Exception as exc:  # the instance goes away regardless; say why it did not finish cleanly
            _log.warning(
                "model '%s' finalize failed: %s",
                self.context.model_name,
                describe_exception(exc, self.context),
            )
        finally:
            if module is not None:
                _MODULES.release(module)
