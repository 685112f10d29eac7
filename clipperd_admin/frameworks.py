"""Saved models of the frameworks the server runs, as repository files: TorchScript (model.pt),
ONNX (model.onnx), a TensorFlow SavedModel (model.savedmodel/) and a joblib-pickled
scikit-learn estimator (model.joblib). Each framework is imported only when it is used."""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipperd_admin.errors import ExportError
from clipperd_admin.specs import Serving, TensorSpec, build_config, wire_type
from clipperd_admin.staging import Bundle

SKLEARN_METHODS = ("predict", "predict_proba", "decision_function", "transform")


def _file_writer(filename: str, data: bytes) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        (folder / filename).write_bytes(data)

    return write


def _dims(shape: Sequence[Any], batched: bool) -> tuple[int, ...]:
    dims = tuple(-1 if d is None else int(d) for d in shape)
    return dims[1:] if batched else dims


def _check_batch(name: str, shape: Sequence[Any], serving: Serving, what: str) -> None:
    if serving.max_batch_size > 0 and len(shape) == 0:
        raise ExportError(f"model '{name}': {what} is a scalar, but a batching model needs a batch dimension first")


# ---------------------------------------------------------------------------------------------
# PyTorch: TorchScript, inputs INPUT__0.., outputs OUTPUT__0.. (the PyTorch backend's convention)


def torch_bundle(name: str, module: Any, example_input: Any, serving: Serving, how: str) -> Bundle:
    import torch

    if how not in ("trace", "script"):
        raise ValueError(f"how must be 'trace' or 'script', not {how!r}")
    examples = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    if not examples or not all(isinstance(t, torch.Tensor) for t in examples):
        raise ExportError(f"model '{name}': example_input must be a torch.Tensor or a tuple of them")
    scripted = _torchscript(name, module, examples, how)
    try:
        with torch.inference_mode():
            result = scripted(*examples)
    except Exception as error:
        raise ExportError(f"model '{name}': the exported module fails on example_input: {error}") from error
    produced = tuple(result) if isinstance(result, (tuple, list)) else (result,)
    if not all(isinstance(t, torch.Tensor) for t in produced):
        raise ExportError(f"model '{name}': forward() must return a Tensor or a tuple of Tensors")
    inputs = [_torch_spec(f"INPUT__{i}", t, serving, name) for i, t in enumerate(examples)]
    outputs = [_torch_spec(f"OUTPUT__{i}", t, serving, name) for i, t in enumerate(produced)]
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    data = buffer.getvalue()
    config = build_config(name, serving, platform="pytorch_libtorch", inputs=inputs, outputs=outputs)
    return Bundle(config, _file_writer("model.pt", data))


def _torchscript(name: str, module: Any, examples: tuple[Any, ...], how: str) -> Any:
    import torch

    if not isinstance(module, torch.nn.Module) and not callable(module):
        raise ExportError(f"model '{name}': {type(module).__name__} is not a torch.nn.Module")
    if isinstance(module, torch.nn.Module):
        module = module.eval()
    try:
        if how == "script":
            return torch.jit.script(module)
        return torch.jit.trace(module, examples)
    except Exception as error:  # torch raises many types here; each means "cannot export"
        text = " ".join(str(error).split())[:400] or type(error).__name__
        raise ExportError(f"model '{name}': torch.jit.{how} cannot export the module: {text}") from error


def _torch_spec(tensor_name: str, tensor: Any, serving: Serving, model: str) -> TensorSpec:
    _check_batch(model, tuple(tensor.shape), serving, tensor_name)
    try:
        data_type = wire_type(str(tensor.dtype).removeprefix("torch."))
    except ValueError as error:
        raise ExportError(f"model '{model}': {tensor_name}: {error}") from None
    return TensorSpec(tensor_name, data_type, _dims(tuple(tensor.shape), serving.max_batch_size > 0))


# ---------------------------------------------------------------------------------------------
# ONNX: the config leaves inputs and outputs to the server's auto-completion from the graph


def onnx_bundle(name: str, model: Any, serving: Serving) -> Bundle:
    data = _onnx_bytes(name, model)
    try:
        tensors = _graph_tensors(data)
    except Exception as error:  # ORT raises its own exception types for bad graphs
        raise ExportError(f"model '{name}': ONNX Runtime cannot open the model: {error}") from error
    config = build_config(name, serving, platform="onnxruntime_onnx")
    return Bundle(config, _file_writer("model.onnx", data), tensors, _version_graph_tensors)


def _onnx_bytes(name: str, model: Any) -> bytes:
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise ExportError(f"model '{name}': ONNX file {path} not found")
        return path.read_bytes()
    serialize = getattr(model, "SerializeToString", None)  # an onnx.ModelProto
    if callable(serialize):
        return bytes(serialize())
    raise ExportError(f"model '{name}': give an ONNX file path, its bytes or an onnx.ModelProto, not {model!r}")


GraphTensors = tuple[tuple[tuple[str, str, tuple[int, ...]], ...], ...]


def _graph_tensors(data: bytes) -> GraphTensors | None:
    """The graph's inputs and outputs (name, type, shape with -1 for symbolic dimensions), read
    by ONNX Runtime when it is installed here (a bad file then fails now, not on the server);
    None without it."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])

    def rows(nodes: Any) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
        return tuple((n.name, n.type, tuple(d if isinstance(d, int) else -1 for d in n.shape or ())) for n in nodes)

    return rows(session.get_inputs()), rows(session.get_outputs())


def _version_graph_tensors(version_dir: Path) -> GraphTensors | None:
    path = version_dir / "model.onnx"
    try:
        return _graph_tensors(path.read_bytes()) if path.is_file() else None
    except Exception:  # an unreadable old version: nothing to compare against
        return None


# ---------------------------------------------------------------------------------------------
# TensorFlow: a SavedModel folder; tensors from its serving signature unless given


def tensorflow_bundle(
    name: str,
    saved_model_dir: Path,
    serving: Serving,
    signature_name: str,
    tensors: tuple[list[TensorSpec], list[TensorSpec]] | None,
) -> Bundle:
    source = Path(saved_model_dir)
    if not (source / "saved_model.pb").is_file():
        raise ExportError(f"model '{name}': {source} is not a SavedModel folder (no saved_model.pb)")
    inputs, outputs = tensors or _signature_tensors(name, source, signature_name, serving)
    parameters = {} if signature_name == "serving_default" else {"signature_name": signature_name}
    config = build_config(
        name, serving, platform="tensorflow_savedmodel", inputs=inputs, outputs=outputs, extra_parameters=parameters
    )

    def write(folder: Path) -> None:
        shutil.copytree(source, folder / "model.savedmodel")

    return Bundle(config, write)


def _signature_tensors(
    name: str, source: Path, signature_name: str, serving: Serving
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(source))
    except Exception as error:  # TF raises many types for unreadable SavedModels
        raise ExportError(f"model '{name}': TensorFlow cannot load {source}: {error}") from error
    if signature_name not in loaded.signatures:
        known = ", ".join(sorted(loaded.signatures)) or "none"
        raise ExportError(f"model '{name}': the SavedModel has no signature '{signature_name}' (it has: {known})")
    function = loaded.signatures[signature_name]
    batched = serving.max_batch_size > 0

    def spec(key: str, tensor: Any) -> TensorSpec:
        shape = tensor.shape.as_list()
        _check_batch(name, shape, serving, key)
        if batched and shape[0] is not None:
            raise ExportError(f"model '{name}': '{key}' has a fixed first dimension; a batching model needs None")
        data_type = "STRING" if tensor.dtype == tf.string else wire_type(tensor.dtype.as_numpy_dtype)
        return TensorSpec(key, data_type, _dims(shape, batched))

    inputs = [spec(k, t) for k, t in sorted(function.structured_input_signature[1].items())]
    outputs = [spec(k, t) for k, t in sorted(function.structured_outputs.items())]
    return inputs, outputs


# ---------------------------------------------------------------------------------------------
# scikit-learn: model.joblib, one FEATURES input, one output, the method as a parameter


def sklearn_bundle(name: str, estimator: Any, method: str, example_input: Any, serving: Serving) -> Bundle:
    if method not in SKLEARN_METHODS:
        raise ValueError(f"method must be one of {', '.join(SKLEARN_METHODS)}, not {method!r}")
    if not callable(getattr(estimator, method, None)):
        raise ExportError(f"model '{name}': the {type(estimator).__name__} has no {method}()")
    features = np.asarray(example_input)
    if features.ndim != 2 or features.shape[0] < 1:
        raise ExportError(f"model '{name}': example_input must be a (rows, features) matrix, not {features.shape}")
    try:
        result = np.asarray(getattr(estimator, method)(features))
    except Exception as error:  # an unfitted or broken estimator fails here rather than on the server
        raise ExportError(f"model '{name}': {method}() fails on example_input: {error}") from error
    batched = serving.max_batch_size > 0
    width = [1] if result.ndim == 1 else list(result.shape[1:])
    columns = features.shape[1]
    inputs = [TensorSpec("FEATURES", wire_type(features.dtype), (columns,) if batched else (-1, columns))]
    outputs = [TensorSpec("OUTPUT", wire_type(result.dtype), tuple(width) if batched else (-1, *width))]
    data = _joblib_bytes(name, estimator)
    config = build_config(
        name, serving, backend="sklearn", inputs=inputs, outputs=outputs, extra_parameters={"method": method}
    )
    return Bundle(config, _file_writer("model.joblib", data))


def _joblib_bytes(name: str, estimator: Any) -> bytes:
    import joblib

    buffer = io.BytesIO()
    try:
        joblib.dump(estimator, buffer)
    except Exception as error:  # pickling errors come as several types
        raise ExportError(
            f"model '{name}': the estimator cannot be pickled: {type(error).__name__}: {error}"
        ) from error
    return buffer.getvalue()
