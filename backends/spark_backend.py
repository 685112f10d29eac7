"""Apache Spark MLlib: a saved ``PipelineModel`` (``backend: "spark"``, the folder
``model.sparkml/`` in the version folder, as ``pipeline_model.save(path)`` writes it), run by
pyspark in local mode with the machine's Java.

Each batch becomes one DataFrame: one row per batch row, one column per config input (an input
of ``dims: [ 1 ]`` a scalar column, of ``dims: [ n ]`` an ML vector column), plus a row number.
The pipeline transforms it; the config's outputs name columns of the result (``prediction``,
``probability``...), collected back in row order (vectors become arrays). One SparkSession
serves every Spark model of the server: started once, by the first Spark model to load
(``local[N]``, N from ``spark_threads`` or the instance's share of the cores, the UI off).

Cost: every batch crosses into the JVM and back (DataFrame creation, a Spark job, collect):
milliseconds per batch whatever its size, against microseconds for the same pipeline exported
to ONNX. Serve Spark pipelines as they are when their stages have no ONNX export or while
prototyping; for latency, export them (onnxmltools converts most MLlib stages) and use the
onnxruntime backend."""

from __future__ import annotations

import os
import shutil
import threading
from typing import Any

import numpy as np

from backends.base import Backend, Capabilities, InstanceContext, Tensors
from backends.common import datatypes
from backends.common.error_text import exception_text
from backends.common.errors import InvalidArgument, ModelExecutionError, Unavailable
from backends.common.imports import IMPORT_LOCK
from backends.proto import model_config_pb2 as mc

ROW = "__clipperd_row"
_session_lock = threading.Lock()
_session: Any = None


def spark_session(context: InstanceContext) -> Any:
    """The server's one SparkSession, started on first use."""
    global _session
    with _session_lock:
        if _session is not None:
            return _session
        if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
            raise Unavailable("the spark backend needs Java (a JDK 17+ on PATH or JAVA_HOME)")
        with IMPORT_LOCK:
            try:
                from pyspark.sql import SparkSession
            except ImportError:
                raise Unavailable("the spark backend needs pyspark: pip install 'clipperd[spark]'") from None
        # A local-mode session talks to itself only: bind it to loopback, so that the JVM never
        # resolves the machine's hostname (unresolvable in some containers and sandboxes).
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ.setdefault("SPARK_LOCAL_HOSTNAME", "localhost")
        threads = context.params.integer("spark_threads", context.threads, low=1)
        builder = SparkSession.builder.master(f"local[{threads}]").appName("clipperd")
        for key, value in (("spark.ui.enabled", "false"), ("spark.sql.shuffle.partitions", "1")):
            builder = builder.config(key, value)
        try:
            _session = builder.getOrCreate()
        except Exception as exc:
            raise Unavailable(f"Spark did not start: {exception_text(exc)}") from None
        _session.sparkContext.setLogLevel("ERROR")
        return _session


class SparkBackend(Backend):
    default_filename = "model.sparkml"
    capabilities = Capabilities()  # a Spark session: its own threads, on the CPU

    def __init__(self, context: InstanceContext) -> None:
        super().__init__(context)
        self._spark: Any = None
        self._model: Any = None
        self._vectors: set[str] = set()
        self._outputs: list[tuple[str, np.dtype[Any]]] = []

    def load(self) -> None:
        path = self.existing_model_file("Spark model folder")
        self._spark = spark_session(self.context)
        from pyspark.ml import PipelineModel

        try:
            self._model = PipelineModel.load(str(path))
        except Exception as exc:
            reason = exception_text(exc, hide=path)
            raise InvalidArgument(f"{self.context.who}: {path.name} is not a saved PipelineModel: {reason}") from None
        config = self.context.config
        self._vectors = {t.name for t in config.input if list(t.dims) not in ([1], [])}
        self._outputs = [(t.name, datatypes.from_config(mc.DataType.Name(t.data_type)).numpy) for t in config.output]

    def execute(self, inputs: Tensors) -> Tensors:
        from pyspark.ml.linalg import DenseVector

        names = list(inputs)
        rows = len(next(iter(inputs.values())))
        columns = []
        for name in names:
            array = inputs[name].reshape(rows, -1)
            if name in self._vectors:
                columns.append([DenseVector(r) for r in array.astype(np.float64)])
            else:
                columns.append(array[:, 0].tolist())
        records = [(i, *values) for i, values in enumerate(zip(*columns, strict=True))]
        try:
            frame = self._spark.createDataFrame(records, [ROW, *names])
            result = self._model.transform(frame).select(ROW, *(name for name, _ in self._outputs)).collect()
        except Exception as exc:
            raise ModelExecutionError(f"{self.context.who} failed: {exception_text(exc)}") from exc
        result.sort(key=lambda r: r[ROW])
        return {name: _column([r[name] for r in result], dtype) for name, dtype in self._outputs}

    def unload(self) -> None:
        self._model = None  # the session stays: other Spark models share it


def _column(values: list[Any], dtype: np.dtype[Any]) -> np.ndarray:
    if values and hasattr(values[0], "toArray"):  # an ML vector column
        return np.stack([v.toArray() for v in values]).astype(dtype)
    if dtype.kind == "O":
        return np.array([str(v).encode() for v in values], dtype=object).reshape(-1, 1)
    return np.asarray(values, dtype=dtype).reshape(-1, 1)
