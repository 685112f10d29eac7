"""The PyTorch backend: a TorchScript module in ``model.pt`` (platform ``pytorch_libtorch`` or
backend ``pytorch``).

torch is optional: it is imported when an instance loads, never when this module is imported,
so the server starts without torch as long as no PyTorch model is loaded.

Inputs reach ``forward()`` in this order (TorchScript files carry no names for them):
  1. every config input is named ``<name>__<index>`` (``INPUT__0``, ``INPUT__1``; the indices
     0..n-1): by index;
  2. every config input name is an argument of ``forward()``: by that argument's position (by
     keyword when the config leaves gaps that take their defaults);
  3. otherwise in config order.
Outputs: a Tensor (the only config output), a tuple or list of Tensors (by ``__<index>`` when
every config output follows that convention, else in config order) or a dict keyed by output
name. TYPE_STRING tensors are not supported; BF16 travels as raw uint16 words and is viewed as
torch.bfloat16.

A GPU instance (``cuda:N``) runs on its own CUDA stream: a batch's inputs are gathered into
pinned host memory (backends.pinned) and copied to the device on that stream; outputs come back
to pinned host memory and the stream is synchronized before they are returned."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from backends.base import Backend, Capabilities, InstanceContext, Tensors
from backends.common.errors import (
    ConfigError,
    FailedPrecondition,
    InvalidArgument,
    ModelExecutionError,
    NotFound,
)
from backends.common.imports import IMPORT_LOCK
from backends.pinned import PinnedStaging
from backends.proto import model_config_pb2 as mc
from backends.python_backend import describe_exception

_log = logging.getLogger(__name__)
_INDEXED = re.compile(r"^.+__(\d+)$")  # Triton's <name>__<index> convention


def indexed_order(names: list[str]) -> tuple[int, ...] | None:
    """The ``__<index>`` of each name when all of them follow the convention and the indices are
    exactly 0..n-1; None otherwise."""
    matches = [_INDEXED.match(name) for name in names]
    indices = tuple(int(m.group(1)) for m in matches if m)
    if not names or len(indices) != len(names) or sorted(indices) != list(range(len(names))):
        return None
    return indices


@dataclass(frozen=True)
class InputPlan:
    """How config inputs become forward() arguments."""

    names: tuple[str, ...]  # config input names in forward()'s positional order
    keywords: bool = False  # pass as name=value (forward() arguments with gaps left to defaults)


def input_plan(config_names: list[str], forward_args: list[str]) -> InputPlan:
    """Triton's naming rules, in the order ``__<index>``, forward() argument names, config order."""
    indices = indexed_order(config_names)
    if indices is not None:
        return InputPlan(tuple(name for _, name in sorted(zip(indices, config_names, strict=True))))
    if config_names and all(name in forward_args for name in config_names):
        ordered = sorted(config_names, key=forward_args.index)
        gaps = [forward_args.index(name) for name in ordered] != list(range(len(ordered)))
        return InputPlan(tuple(ordered), keywords=gaps)
    return InputPlan(tuple(config_names))


def output_positions(config_names: list[str]) -> tuple[tuple[str, int], ...]:
    """(output name, position in a returned tuple): by ``__<index>`` or by config order."""
    indices = indexed_order(config_names)
    positions = indices if indices is not None else range(len(config_names))
    return tuple(zip(config_names, positions, strict=True))


# ---------------------------------------------------------------------------------------------
# torch, imported on first use


def _import_torch(model_name: str) -> Any:
    try:
        with IMPORT_LOCK:
            import torch
    except ImportError:
        raise FailedPrecondition(
            f"model '{model_name}' needs PyTorch, which is not installed (pip install 'clipperd[torch]')"
        ) from None
    _spend_readonly_warning(torch)
    return torch


_warned = threading.Event()
_warn_lock = threading.Lock()


def _spend_readonly_warning(torch: Any) -> None:
    """torch warns once per process (TORCH_WARN_ONCE) when it wraps a read-only numpy array.
    Requests arrive as read-only views of the wire bytes, and copying them only to avoid that
    warning costs a copy per batch; TorchScript inference does not write its inputs. So the one
    warning is spent here, silenced, and never reaches a request."""
    with _warn_lock:
        if _warned.is_set():
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            torch.from_numpy(np.frombuffer(b"\0\0\0\0", dtype=np.float32))
        _warned.set()


def _device(torch: Any, context: InstanceContext) -> str:
    device = context.device
    if device.kind != "gpu":
        return "cpu"
    if not torch.cuda.is_available():
        raise FailedPrecondition(f"model '{context.model_name}' asks for {device.name} but no CUDA device is available")
    count = int(torch.cuda.device_count())
    if device.index >= count:
        raise FailedPrecondition(
            f"model '{context.model_name}' asks for {device.name} but only {count} CUDA device(s) are available"
        )
    return device.name


def _thread_parameter(context: InstanceContext, key: str) -> int:
    """A non-negative thread count from the config's parameters (0 or absent: not set)."""
    return context.params.integer(key, 0)


def _set_threads(torch: Any, context: InstanceContext) -> None:
    # intra-op threads are per thread (OpenMP), so each instance sets its own share of the cores
    torch.set_num_threads(_thread_parameter(context, "INTRA_OP_THREAD_COUNT") or max(1, context.threads))
    inter = _thread_parameter(context, "INTER_OP_THREAD_COUNT")
    if inter and inter != torch.get_num_interop_threads():
        try:
            torch.set_num_interop_threads(inter)  # process-wide, and only before any parallel work
        except RuntimeError:
            _log.warning(
                "model '%s': INTER_OP_THREAD_COUNT=%d ignored, torch's inter-op pool is already running",
                context.model_name,
                inter,
            )


def _load_script(torch: Any, path: Path, device: str, context: InstanceContext) -> Any:
    if not path.is_file():
        raise NotFound(f"model '{context.model_name}' version {context.version}: file '{path.name}' not found")
    try:
        module = torch.jit.load(str(path), map_location=device)
    except Exception as exc:
        raise InvalidArgument(
            f"model '{context.model_name}': {path.name} is not a loadable TorchScript model: "
            f"{describe_exception(exc, context)}"
        ) from exc
    module.eval()
    return module


def _forward_args(module: Any) -> list[str]:
    try:
        return [str(arg.name) for arg in module.forward.schema.arguments][1:]  # [0] is self
    except (AttributeError, RuntimeError):
        return []


def _reject_strings(config: mc.ModelConfig) -> None:
    names = [t.name for t in config.input if t.data_type == mc.TYPE_STRING]
    names += [t.name for t in config.output if t.data_type == mc.TYPE_STRING]
    if names:
        raise ConfigError(
            f"model '{config.name}'", f"'{names[0]}' data_type", "TYPE_STRING is not supported by pytorch"
        )


# ---------------------------------------------------------------------------------------------


class PyTorchBackend(Backend):
    """One TorchScript instance on the CPU or one GPU, with its own CUDA stream on a GPU."""

    default_filename = "model.pt"
    # off a thread on a CPU: per-thread state (inference mode, a stream) is set per execute
    capabilities = Capabilities(gpu=True, off_thread=True)

    def __init__(self, context: InstanceContext) -> None:
        super().__init__(context)
        config = context.config
        self._bf16 = frozenset(t.name for t in config.input if t.data_type == mc.TYPE_BF16)
        self._outputs = output_positions([t.name for t in config.output])
        self._plan = InputPlan(())
        self._torch: Any = None
        self._module: Any = None
        self._device = "cpu"
        self._stream: Any = None
        self.staging: PinnedStaging | None = None  # a GPU instance's pinned input buffers

    def load(self) -> None:
        _reject_strings(self.context.config)
        torch = _import_torch(self.context.model_name)
        device = _device(torch, self.context)
        _set_threads(torch, self.context)
        module = _load_script(torch, self.model_file, device, self.context)
        self._plan = input_plan([t.name for t in self.context.config.input], _forward_args(module))
        if device != "cpu":
            self._stream = torch.cuda.Stream(device=device)
            self.staging = PinnedStaging(torch)
        self._torch, self._module, self._device = torch, module, device

    def unload(self) -> None:
        self._module = self._stream = self.staging = None

    def stage(self, parts: Sequence[Tensors]) -> Tensors:
        if self.staging is None:
            return super().stage(parts)
        return self.staging.gather(parts)

    def execute(self, inputs: Tensors) -> Tensors:
        if self._module is None:
            raise FailedPrecondition(f"model '{self.context.model_name}' is not loaded")
        torch = self._torch
        stream = torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext()
        with torch.inference_mode(), stream:
            args = [self._tensor(name, inputs) for name in self._plan.names]
            result = self._forward(args)
            outputs = {name: self._to_host(tensor) for name, tensor in self._collect(result).items()}
            if self._stream is not None:
                self._stream.synchronize()  # the host copies above are asynchronous
        # types and shapes are checked against the config by the scheduler, once per batch
        return {name: self._to_numpy(tensor) for name, tensor in outputs.items()}

    def _tensor(self, name: str, inputs: Tensors) -> Any:
        array = inputs.get(name)
        if array is None:
            raise InvalidArgument(f"model '{self.context.model_name}': input '{name}' is missing")
        if name in self._bf16:
            tensor = self._torch.from_numpy(array.view(np.int16)).view(self._torch.bfloat16)
        else:
            tensor = self._torch.from_numpy(array)  # a view, no copy
        return tensor if self._device == "cpu" else tensor.to(self._device, non_blocking=True)

    def _forward(self, args: list[Any]) -> Any:
        try:
            if self._plan.keywords:
                return self._module(**dict(zip(self._plan.names, args, strict=True)))
            return self._module(*args)
        except Exception as exc:
            raise ModelExecutionError(
                f"model '{self.context.model_name}' failed: {describe_exception(exc, self.context)}"
            ) from exc

    def _collect(self, result: Any) -> dict[str, Any]:
        """The config's outputs out of what forward() returned."""
        tensor_type = self._torch.Tensor
        if isinstance(result, tensor_type):
            result = (result,)
        if isinstance(result, dict):
            found = {name: result.get(name) for name, _ in self._outputs}
        elif isinstance(result, tuple | list):
            self._check_count(len(result))
            found = {name: result[position] for name, position in self._outputs}
        else:
            raise self._failure(f"forward() returned a {type(result).__name__}, expected tensors")
        for name, value in found.items():
            if not isinstance(value, tensor_type):
                raise self._failure(f"output '{name}' is a {type(value).__name__}, not a tensor")
        return found

    def _check_count(self, count: int) -> None:
        needed = max((position for _, position in self._outputs), default=-1) + 1
        if count < needed or (count != needed and not indexed_order([n for n, _ in self._outputs])):
            raise self._failure(f"forward() returned {count} tensor(s), config declares {len(self._outputs)}")

    def _failure(self, problem: str) -> ModelExecutionError:
        return ModelExecutionError(f"model '{self.context.model_name}' failed: {problem}")

    def _to_host(self, tensor: Any) -> Any:
        tensor = tensor.detach()
        # non_blocking lands in pinned memory; valid once the stream is synchronized
        return tensor if tensor.device.type == "cpu" else tensor.to("cpu", non_blocking=True)

    def _to_numpy(self, tensor: Any) -> np.ndarray:
        if tensor.dtype == self._torch.bfloat16:
            return np.asarray(tensor.view(self._torch.int16).numpy()).view(np.uint16)
        return np.asarray(tensor.numpy())
