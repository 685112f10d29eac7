"""The TensorFlow backend: a SavedModel, ``platform: "tensorflow_savedmodel"`` (or ``backend:
"tensorflow"``), in the folder ``model.savedmodel/`` of the version folder (Triton's layout).

The serving signature is ``serving_default`` unless the config's ``signature_name`` parameter
names another. The config's tensor names are the signature's input and output keys; a
``tensor_names`` parameter (``CONFIG_NAME=signature_key,...``) maps names that differ. At load the
config is checked against the signature: every config tensor must exist there with the same
type, and every signature input must be fed; otherwise the model is UNAVAILABLE, naming the
tensor. KIND_CPU instances run on ``/CPU:0``, KIND_GPU ones on ``/GPU:N``.

TensorFlow's thread pools are process-wide and fixed once it starts: the first TensorFlow model
loaded sets them, from its ``intra_op_thread_count`` / ``inter_op_thread_count`` parameters or
the instance's share of the cores (intra) and 1 (inter), so TensorFlow never takes every core
from the server."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from backends.base import Backend, Capabilities, InstanceContext, Tensors
from backends.common import datatypes
from backends.common.error_text import exception_text
from backends.common.errors import InvalidArgument, ModelExecutionError, Unavailable
from backends.common.imports import IMPORT_LOCK
from backends.proto import model_config_pb2 as mc

log = logging.getLogger(__name__)
_threads_set = threading.Event()


def _tf(context: InstanceContext) -> Any:
    with IMPORT_LOCK:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter stays out of the log
        try:
            import tensorflow as tf
        except ImportError:
            raise Unavailable("the tensorflow backend needs TensorFlow: pip install 'clipperd[tensorflow]'") from None
        if not _threads_set.is_set():
            intra = context.params.integer("intra_op_thread_count", context.threads)
            inter = context.params.integer("inter_op_thread_count", 1)
            try:
                tf.config.threading.set_intra_op_parallelism_threads(intra)
                tf.config.threading.set_inter_op_parallelism_threads(inter)
            except RuntimeError:  # already initialised by someone else in this process
                log.warning("TensorFlow was started before clipperd could bound its threads")
            _threads_set.set()
    return tf


class TensorFlowBackend(Backend):
    default_filename = "model.savedmodel"
    # a concrete function is thread-safe; the device is set per execute. GPUs only by KIND_GPU
    capabilities = Capabilities(off_thread=True)

    def __init__(self, context: InstanceContext) -> None:
        super().__init__(context)
        self._tf: Any = None
        self._model: Any = None
        self._function: Any = None
        self._device = ""
        self._feeds: dict[str, str] = {}  # config input name -> signature key
        self._fetches: dict[str, str] = {}  # config output name -> signature key

    def load(self) -> None:
        path = self.existing_model_file("SavedModel folder")
        tf = self._tf = _tf(self.context)
        self._device = self._device_name(tf)
        try:
            with tf.device(self._device):
                self._model = tf.saved_model.load(str(path))
        except Exception as exc:
            reason = exception_text(exc, hide=path)
            raise InvalidArgument(f"{self.context.who}: {path.name} cannot be loaded by TensorFlow: {reason}") from None
        name = self.context.parameters.get("signature_name", "serving_default")
        signatures = getattr(self._model, "signatures", {})
        if name not in signatures:
            known = ", ".join(sorted(signatures)) or "none"
            raise InvalidArgument(
                f"{self.context.who}: the SavedModel has no signature '{name[:64]}' (it has: {known})"
            )
        self._function = signatures[name]
        self._map_tensors()

    def _device_name(self, tf: Any) -> str:
        device = self.context.device
        if device.kind != "gpu":
            return "/CPU:0"
        if len(tf.config.list_physical_devices("GPU")) <= device.index:
            raise Unavailable(
                f"{self.context.who} has a KIND_GPU instance on GPU {device.index}, which TensorFlow does not see"
            )
        return f"/GPU:{device.index}"

    def _map_tensors(self) -> None:
        config = self.context.config
        renamed = _tensor_names(self.context.parameters.get("tensor_names", ""), self.context.who)
        _, inputs = self._function.structured_input_signature
        outputs = self._function.structured_outputs
        self._feeds = self._match("input", config.input, inputs, renamed)
        self._fetches = self._match("output", config.output, outputs, renamed)
        unfed = sorted(set(inputs) - set(self._feeds.values()))
        if unfed:
            raise InvalidArgument(f"{self.context.who}: the signature needs input(s) {unfed[:4]} that the config lacks")

    def _match(self, kind: str, tensors: Any, specs: Mapping[str, Any], renamed: Mapping[str, str]) -> dict[str, str]:
        mapping = {}
        for tensor in tensors:
            key = renamed.get(tensor.name, tensor.name)
            spec = specs.get(key)
            if spec is None:
                known = ", ".join(sorted(specs)[:8])
                raise InvalidArgument(f"{self.context.who}: {kind} '{key}' is not in the signature (it has {known})")
            wanted = datatypes.from_config(mc.DataType.Name(tensor.data_type))
            if not _same_type(spec.dtype, wanted.numpy):
                raise InvalidArgument(
                    f"{self.context.who}: {kind} '{tensor.name}' is {mc.DataType.Name(tensor.data_type)} in the config "
                    f"but {spec.dtype.name} in the signature"
                )
            mapping[tensor.name] = key
        return mapping

    def execute(self, inputs: Tensors) -> Tensors:
        tf = self._tf
        try:
            with tf.device(self._device):
                feeds = {key: tf.constant(inputs[name]) for name, key in self._feeds.items()}
                results = self._function(**feeds)
        except Exception as exc:  # TensorFlow's errors name the op and the shapes
            raise ModelExecutionError(f"{self.context.who} failed: {exception_text(exc)}") from exc
        return {name: np.asarray(results[key].numpy()) for name, key in self._fetches.items()}

    def unload(self) -> None:
        self._model = self._function = None


def _same_type(tf_dtype: Any, numpy_dtype: np.dtype[Any]) -> bool:
    if tf_dtype.name == "string":
        return numpy_dtype.kind == "O"
    return bool(np.dtype(tf_dtype.as_numpy_dtype) == numpy_dtype)


def _tensor_names(text: str, who: str) -> dict[str, str]:
    pairs = [item.strip() for item in text.split(",") if item.strip()]
    mapping = {}
    for pair in pairs:
        name, sep, key = pair.partition("=")
        if not sep or not name.strip() or not key.strip():
            raise InvalidArgument(f"{who}: tensor_names is CONFIG_NAME=signature_key,...; got {pair[:64]!r}")
        mapping[name.strip()] = key.strip()
    return mapping
