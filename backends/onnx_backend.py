"""The ONNX Runtime backend: ``platform: "onnxruntime_onnx"`` (or ``backend: "onnxruntime"``),
``model.onnx`` in the version folder.

Each instance has its own InferenceSession: the CPU execution provider for KIND_CPU instances,
CUDA (on the instance's GPU, CPU as fallback for the operators CUDA lacks) for KIND_GPU ones.
Session options come from the config, with Triton's onnxruntime-backend keys:

- ``parameters``: ``intra_op_thread_count`` (default: the instance's share of the cores),
  ``inter_op_thread_count`` (default 1), ``graph_optimization_level``
  (``disable_all``/``basic``/``extended``/``all``, default ``all``);
- ``optimization { graph { level: -1 } }`` disables graph optimisation, ``1`` enables all, as in
  Triton.

Config auto-completion: a config with no ``input`` or no ``output`` gets them from the graph
(names, types, shapes; a dynamic first dimension is the batch when ``max_batch_size`` > 0, and
when it is 0 and every tensor's first dimension is dynamic, ``max_batch_size`` becomes 4 with
dynamic batching, as Triton does). ModelConfig then shows the completed config.

At load the config is checked against the graph: every config input and output must exist in
it with the same type, and every graph input must be in the config; a mismatch leaves the model
UNAVAILABLE with a reason that names the tensor."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from backends.base import Backend, Capabilities, InstanceContext, Tensors
from backends.common.error_text import exception_text
from backends.common.errors import InvalidArgument, ModelExecutionError, NotFound, Unavailable
from backends.common.imports import IMPORT_LOCK
from backends.proto import model_config_pb2 as mc

DEFAULT_MAX_BATCH = 4  # what Triton's auto-completion gives a model whose first dims are all dynamic

# ONNX Runtime's type names -> the config's data types
ORT_TYPES: dict[str, int] = {
    "tensor(bool)": mc.TYPE_BOOL,
    "tensor(uint8)": mc.TYPE_UINT8,
    "tensor(uint16)": mc.TYPE_UINT16,
    "tensor(uint32)": mc.TYPE_UINT32,
    "tensor(uint64)": mc.TYPE_UINT64,
    "tensor(int8)": mc.TYPE_INT8,
    "tensor(int16)": mc.TYPE_INT16,
    "tensor(int32)": mc.TYPE_INT32,
    "tensor(int64)": mc.TYPE_INT64,
    "tensor(float16)": mc.TYPE_FP16,
    "tensor(float)": mc.TYPE_FP32,
    "tensor(double)": mc.TYPE_FP64,
    "tensor(string)": mc.TYPE_STRING,
    "tensor(bfloat16)": mc.TYPE_BF16,
}
_LEVELS = ("disable_all", "basic", "extended", "all")


def _ort() -> Any:
    try:
        with IMPORT_LOCK:
            import onnxruntime
    except ImportError:
        raise Unavailable(
            "the onnxruntime backend needs the onnxruntime package: pip install 'clipperd[onnx]'"
        ) from None
    return onnxruntime


class OnnxRuntimeBackend(Backend):
    default_filename = "model.onnx"
    capabilities = Capabilities(off_thread=True)  # an InferenceSession is thread-safe

    @classmethod
    def autocomplete(cls, config: mc.ModelConfig, version_path: Path) -> None:
        autocomplete(config, version_path)

    def __init__(self, context: InstanceContext) -> None:
        super().__init__(context)
        self._session: Any = None
        self._outputs: list[str] = []
        self._string_inputs: set[str] = set()

    def load(self) -> None:
        ort = _ort()
        path = self.existing_model_file()
        options = self._session_options(ort)
        providers = self._providers(ort)
        self._session = open_session(ort, path, self.context.model_name, options, providers)
        check_signature(self.context.config, self._session)
        self._outputs = [output.name for output in self.context.config.output]
        self._string_inputs = {i.name for i in self.context.config.input if i.data_type == mc.TYPE_STRING}

    def execute(self, inputs: Tensors) -> Tensors:
        feeds = {name: _to_ort(array) if name in self._string_inputs else array for name, array in inputs.items()}
        try:
            results = self._session.run(self._outputs, feeds)
        except Exception as exc:  # ORT's errors (shape, type) name the tensor
            raise ModelExecutionError(f"{self.context.who} failed: {exception_text(exc)}") from exc
        return dict(zip(self._outputs, results, strict=True))

    def unload(self) -> None:
        self._session = None

    def _session_options(self, ort: Any) -> Any:
        options = ort.SessionOptions()
        context = self.context
        options.intra_op_num_threads = context.params.integer("intra_op_thread_count", context.threads)
        options.inter_op_num_threads = context.params.integer("inter_op_thread_count", 1)
        options.graph_optimization_level = self._optimization_level(ort)
        return options

    def _optimization_level(self, ort: Any) -> Any:
        levels = ort.GraphOptimizationLevel
        named = self.context.params.choice("graph_optimization_level", _LEVELS)
        if named:
            return getattr(levels, f"ORT_{'DISABLE_ALL' if named == 'disable_all' else 'ENABLE_' + named.upper()}")
        config = self.context.config
        if config.HasField("optimization") and config.optimization.graph.level == -1:
            return levels.ORT_DISABLE_ALL
        return levels.ORT_ENABLE_ALL

    def _providers(self, ort: Any) -> list[Any]:
        device = self.context.device
        if device.kind != "gpu":
            return ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise Unavailable(
                f"model '{self.context.model_name}' has a KIND_GPU instance but this onnxruntime has no CUDA "
                "execution provider (install onnxruntime-gpu)"
            )
        return [("CUDAExecutionProvider", {"device_id": device.index}), "CPUExecutionProvider"]


def open_session(ort: Any, path: Path, model: str, options: Any = None, providers: Sequence[Any] = ()) -> Any:
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=list(providers) or None)
    except Exception as exc:  # a corrupt or unsupported file: ORT says why (without our paths)
        reason = exception_text(exc, hide=path)
        raise InvalidArgument(f"model '{model}': {path.name} cannot be loaded by onnxruntime: {reason}") from None


def check_signature(config: mc.ModelConfig, session: Any) -> None:
    """The config's tensors against the graph's: names and types must agree."""
    model = config.name
    graph_inputs = {i.name: i for i in session.get_inputs()}
    graph_outputs = {o.name: o for o in session.get_outputs()}
    for kind, declared, graph in (("input", config.input, graph_inputs), ("output", config.output, graph_outputs)):
        for tensor in declared:
            node = graph.get(tensor.name)
            if node is None:
                known = ", ".join(sorted(graph)[:8])
                raise InvalidArgument(
                    f"model '{model}': {kind} '{tensor.name}' is not in the ONNX graph (it has {known})"
                )
            expected = ORT_TYPES.get(node.type)
            if expected != tensor.data_type:
                raise InvalidArgument(
                    f"model '{model}': {kind} '{tensor.name}' is {mc.DataType.Name(tensor.data_type)} in the config "
                    f"but {node.type} in the ONNX graph"
                )
    missing = sorted(set(graph_inputs) - {t.name for t in config.input})
    if missing:
        raise InvalidArgument(f"model '{model}': the ONNX graph needs input(s) {missing[:4]} that the config lacks")


def autocomplete(config: mc.ModelConfig, version_path: Path) -> None:
    """Fills a config's missing inputs and outputs from the graph in ``version_path``."""
    if config.input and config.output:
        return
    ort = _ort()
    name = config.default_model_filename or OnnxRuntimeBackend.default_filename
    path = version_path / name
    if not path.is_file():
        raise NotFound(f"model '{config.name}': cannot complete the config from the graph: '{name}' not found")
    session = open_session(ort, path, config.name, None, ["CPUExecutionProvider"])
    nodes = [*session.get_inputs(), *session.get_outputs()]
    dynamic_first = all(node.shape and not isinstance(node.shape[0], int) for node in nodes)
    if config.max_batch_size == 0 and dynamic_first:
        config.max_batch_size = DEFAULT_MAX_BATCH
        if not config.HasField("dynamic_batching") and not config.HasField("sequence_batching"):
            config.dynamic_batching.SetInParent()
    batched = config.max_batch_size > 0
    if not config.input:
        for node in session.get_inputs():
            config.input.add(name=node.name, data_type=_data_type(config, node), dims=_dims(node.shape, batched))
    if not config.output:
        for node in session.get_outputs():
            config.output.add(name=node.name, data_type=_data_type(config, node), dims=_dims(node.shape, batched))


def _data_type(config: mc.ModelConfig, node: Any) -> int:
    if node.type not in ORT_TYPES:
        raise InvalidArgument(
            f"model '{config.name}': tensor '{node.name}' has a type clipperd cannot serve ({node.type})"
        )
    return ORT_TYPES[node.type]


def _dims(shape: Sequence[Any], batched: bool) -> list[int]:
    dims = [d if isinstance(d, int) and d > 0 else -1 for d in shape]
    return dims[1:] if batched else dims or [1]


def _to_ort(array: np.ndarray) -> np.ndarray:
    """BYTES arrive as bytes objects; ONNX Runtime's string tensors take str."""
    flat = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in array.reshape(-1)]
    return np.array(flat, dtype=object).reshape(array.shape)
