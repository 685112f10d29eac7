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

A file that defines Triton's ``TritonPythonModel`` instead (``initialize(args)``,
``execute(requests)`` with ``triton_python_backend_utils``, ``finalize``) runs unchanged:
backends/triton_python.py adapts it, and the batch then reaches the model as its requests.

Decoupled models (``model_transaction_policy { decoupled: true }``): a ``Model`` whose
``execute`` is a generator or an async generator yielding output dicts, one per answer (see
backends/python_streams.py for the shape), or a Triton model using response senders. They
execute on the instance's thread (``execution_mode: thread``, the default for them)."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from backends.base import Backend, Capabilities, InstanceContext, Tensors
from backends.common.errors import (
    ClipperdError,
    FailedPrecondition,
    InvalidArgument,
    ModelExecutionError,
)
from backends.common.streaming import AnswerStream
from backends.proto import model_config_pb2 as mc
from backends.python_streams import start_streams
from backends.triton_python import TritonModel, install_utils

_log = logging.getLogger(__name__)
_ASYNC_EXECUTE = re.compile(r"\basync\s+def\s+execute\s*\(")
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
    except (Exception, SystemExit) as exc:  # sys.exit() at import fails the load, not the server
        del sys.modules[name]
        raise ModelExecutionError(
            f"model '{context.model_name}': importing {path.name} failed: {describe_exception(exc, context)}"
        ) from exc
    return module


_MODULES = _ModuleCache()


def _model_class(module: ModuleType, context: InstanceContext, filename: str) -> type[Any]:
    """``Model``, or else Triton's ``TritonPythonModel``."""
    for name in ("Model", "TritonPythonModel"):
        cls = getattr(module, name, None)
        if isinstance(cls, type):
            if not callable(getattr(cls, "execute", None)):
                problem = f"class '{name}' in {filename} has no execute method"
                raise InvalidArgument(f"model '{context.model_name}': {problem}")
            return cls
    raise InvalidArgument(f"model '{context.model_name}': {filename} defines no class 'Model' or 'TritonPythonModel'")


# ---------------------------------------------------------------------------------------------


class PythonBackend(Backend):
    """One instance of a ``model.py`` model: its own ``Model`` object. Pure Python holds the GIL,
    so by default it runs on the event loop (``execution_mode: thread`` gives it a thread)."""

    default_filename = "model.py"
    capabilities = Capabilities(holds_gil=True, decoupled=True)

    def __init__(self, context: InstanceContext) -> None:
        super().__init__(context)
        self._module: ModuleType | None = None
        self._model: Any = None

    @classmethod
    def preferred_mode(cls, config: mc.ModelConfig, version_path: Path) -> str:
        """A Triton model with an ``async def execute`` runs as tasks on the event loop (its
        ``async_exec`` calls never leave the loop), and so does one that builds BLS requests in
        a plain ``execute``: in a greenlet, which its ``exec()`` suspends while the loop runs
        the call (backends/common/greenlets.py)."""
        path = version_path / (config.default_model_filename or cls.default_filename)
        try:
            source = path.read_text(errors="replace")
        except OSError:
            return ""  # load reports the missing file
        if "TritonPythonModel" not in source:
            return ""
        if _ASYNC_EXECUTE.search(source) or "InferenceRequest(" in source:
            return "async"
        return ""

    @classmethod
    def reads_identity(cls, config: mc.ModelConfig, version_path: Path) -> bool:
        """Triton Python models: ``request_id()``, ``correlation_id()``, ``parameters()``."""
        path = version_path / (config.default_model_filename or cls.default_filename)
        try:
            return "TritonPythonModel" in path.read_text(errors="replace")
        except OSError:
            return False

    def load(self) -> None:
        path = self.existing_model_file()
        install_utils()  # before the import: Triton models import triton_python_backend_utils at the top
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
            if cls.__name__ == "TritonPythonModel":
                model = TritonModel(model, self.context)
                self.per_request = True
                model.initialize()
            elif callable(initialize := getattr(model, "initialize", None)):
                initialize(self.context)
        except (Exception, SystemExit) as exc:  # sys.exit() in initialize fails the load, not the server
            raise ModelExecutionError(
                f"model '{self.context.model_name}' failed to initialize: {describe_exception(exc, self.context)}"
            ) from exc
        return model

    def execute(self, inputs: Tensors) -> Tensors:
        if self._model is None:
            raise FailedPrecondition(f"model '{self.context.model_name}' is not loaded")
        try:
            result = self._model.execute(inputs)
        except (Exception, SystemExit) as exc:  # sys.exit() in a model fails its batch only
            raise ModelExecutionError(
                f"model '{self.context.model_name}' failed: {describe_exception(exc, self.context)}"
            ) from exc
        return result  # type: ignore[no-any-return]  # checked against the config by the scheduler

    def execute_requests(self, parts: Sequence[Tensors]) -> list[Tensors | ClipperdError]:
        if not isinstance(self._model, TritonModel):
            raise FailedPrecondition(f"model '{self.context.model_name}' is not loaded as a Triton model")
        try:
            return self._model.execute_requests(parts)
        except ClipperdError:
            raise
        except (Exception, SystemExit) as exc:  # a TritonModelException, or anything else, fails the batch
            raise ModelExecutionError(
                f"model '{self.context.model_name}' failed: {describe_exception(exc, self.context)}"
            ) from exc

    async def execute_requests_async(self, parts: Sequence[Tensors]) -> list[Tensors | ClipperdError]:
        if not isinstance(self._model, TritonModel):
            raise FailedPrecondition(f"model '{self.context.model_name}' is not loaded as a Triton model")
        try:
            return await self._model.execute_requests_async(parts)
        except ClipperdError:
            raise
        except (Exception, SystemExit) as exc:  # as execute_requests: the batch fails, the server serves on
            raise ModelExecutionError(
                f"model '{self.context.model_name}' failed: {describe_exception(exc, self.context)}"
            ) from exc

    def execute_decoupled(self, parts: Sequence[Tensors], streams: Sequence[AnswerStream]) -> None:
        """A decoupled model's batch: Triton's response senders, or clipperd's generators
        (backends/python_streams.py)."""
        if self._model is None:
            raise FailedPrecondition(f"model '{self.context.model_name}' is not loaded")
        if not isinstance(self._model, TritonModel):
            start_streams(self._model, parts, streams, self._failed)
            return
        try:
            self._model.execute_decoupled(parts, streams)
        except ClipperdError:
            raise
        except (Exception, SystemExit) as exc:  # a TritonModelException, or anything else, fails the batch
            raise ModelExecutionError(self._failed(exc)) from exc

    def _failed(self, exc: BaseException) -> str:
        return f"model '{self.context.model_name}' failed: {describe_exception(exc, self.context)}"

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
