"""scikit-learn and XGBoost models: ``backend: "sklearn"`` (a joblib or pickle file holding any
estimator with ``predict``: scikit-learn's, a Pipeline, XGBoost's or LightGBM's scikit-learn
wrappers) and ``backend: "xgboost"`` (XGBoost's own ``model.json`` / ``model.ubj``).

The model takes one input, the feature matrix: ``dims: [ n_features ]`` with ``max_batch_size``
> 0 (the batch is the rows), or ``dims: [ -1, n_features ]`` with ``max_batch_size: 0``. Its
one output is what the config's ``method`` parameter returns: ``predict`` (the default: one value
a row, ``dims: [ 1 ]``), ``predict_proba`` (``dims: [ n_classes ]``), ``decision_function`` or
``transform``. The result is cast to the output's data type (labels that are strings need
TYPE_STRING).

**Pickle runs code.** Loading a joblib or pickle file executes whatever its author put in it:
serve only repositories you trust, as you would only run code you trust. clipperd only ever
unpickles the file in the model's version folder, never anything a request carries."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np

from backends.base import Backend, Capabilities, InstanceContext, Tensors
from backends.common import datatypes
from backends.common.error_text import exception_text
from backends.common.errors import InvalidArgument, ModelExecutionError, Unavailable
from backends.common.imports import IMPORT_LOCK
from backends.proto import model_config_pb2 as mc

METHODS = ("predict", "predict_proba", "decision_function", "transform")
XGBOOST_ESTIMATORS = ("classifier", "regressor")


class SklearnBackend(Backend):
    default_filename = "model.joblib"
    # predict holds no per-thread state; thread pools are bounded process-wide
    capabilities = Capabilities(off_thread=True)

    def __init__(self, context: InstanceContext) -> None:
        super().__init__(context)
        self._model: Any = None
        self._method: Any = None
        self._input = ""
        self._output = ""
        self._dtype: np.dtype[Any] | None = None
        self._flatten = False

    def load(self) -> None:
        config = self.context.config
        who = self.context.who
        if len(config.input) != 1 or len(config.output) != 1:
            raise InvalidArgument(f"{who}: a {config.backend} model has one input (the features) and one output")
        path = self.existing_model_file()
        self._model = self._read()
        _bound_blas_threads(self.context)
        name = self.context.params.choice("method", METHODS, "predict")
        self._method = getattr(self._model, name, None)
        if not callable(self._method):
            raise InvalidArgument(f"{who}: the {type(self._model).__name__} in {path.name} has no {name}()")
        self._check_features()
        self._input, self._output = config.input[0].name, config.output[0].name
        output = config.output[0]
        self._dtype = datatypes.from_config(mc.DataType.Name(output.data_type)).numpy
        self._flatten = list(output.dims) == [1]  # predict's (rows,) is the config's [rows, 1]

    def _read(self) -> Any:
        path = self.model_file
        try:
            with IMPORT_LOCK:  # unpickling imports the estimator's modules
                if path.suffix in (".pkl", ".pickle"):
                    with path.open("rb") as file:
                        return pickle.load(file)
                joblib = _import("joblib", "sklearn")
                return joblib.load(path)
        except (Unavailable, ModuleNotFoundError) as exc:
            raise Unavailable(f"{self.context.who}: {path.name} needs a package that is missing: {exc}") from None
        except Exception as exc:  # corrupt, truncated, written by an incompatible version
            reason = exception_text(exc, hide=path, with_type=True)
            raise InvalidArgument(f"{self.context.who}: {path.name} cannot be loaded: {reason}") from None

    def _check_features(self) -> None:
        expected = getattr(self._model, "n_features_in_", None)
        dims = list(self.context.config.input[0].dims)
        if expected is not None and dims and dims[-1] != -1 and dims[-1] != expected:
            raise InvalidArgument(
                f"{self.context.who}: the estimator takes {expected} features, "
                f"the config's input '{self.context.config.input[0].name}' has {dims[-1]}"
            )

    def execute(self, inputs: Tensors) -> Tensors:
        features = inputs[self._input]
        try:
            result = np.asarray(self._method(features))
        except Exception as exc:
            raise ModelExecutionError(f"{self.context.who} failed: {exception_text(exc, with_type=True)}") from exc
        if self._flatten and result.ndim == 1:
            result = result.reshape(-1, 1)
        return {self._output: _cast(result, self._dtype)}

    def unload(self) -> None:
        self._model = self._method = None


class XGBoostBackend(SklearnBackend):
    """XGBoost's own format through its scikit-learn wrapper (``xgboost_estimator``: classifier
    or regressor, default classifier), so ``method`` means the same as for ``sklearn``."""

    default_filename = "model.json"

    def _read(self) -> Any:
        with IMPORT_LOCK:
            xgboost = _import("xgboost", "xgboost")
        kind = self.context.params.choice("xgboost_estimator", XGBOOST_ESTIMATORS, "classifier")
        model = xgboost.XGBClassifier() if kind == "classifier" else xgboost.XGBRegressor()
        path = self.model_file
        try:
            model.load_model(str(path))
        except Exception as exc:
            reason = exception_text(exc, hide=path)
            raise InvalidArgument(f"{self.context.who}: {path.name} cannot be loaded by xgboost: {reason}") from None
        # XGBoost's OpenMP pool, bounded like every backend's intra-op threads: the saved model
        # may carry n_jobs, and by default it takes every core, the event loop's included
        model.set_params(n_jobs=_blas_threads(self.context))
        return model


def _bound_blas_threads(context: InstanceContext) -> None:
    """BLAS (and OpenMP) pools are process-wide: bounded to the instance's share of the cores
    (``blas_threads`` overrides), as every backend's intra-op threads are, so that a GEMM inside
    an estimator does not take the cores the server and the other instances need."""
    with IMPORT_LOCK:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=_blas_threads(context))


def _blas_threads(context: InstanceContext) -> int:
    """The instance's share of the cores, or the config's ``blas_threads``; at least 1."""
    return max(1, context.params.integer("blas_threads", context.threads))


def _import(module: str, extra: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise Unavailable(f"this backend needs {module}: pip install 'clipperd[{extra}]'") from None


def _cast(result: np.ndarray, dtype: np.dtype[Any] | None) -> np.ndarray:
    if dtype is None or result.dtype == dtype:
        return result
    if dtype.kind == "O":
        return np.array([str(v).encode() for v in result.reshape(-1)], dtype=object).reshape(result.shape)
    return result.astype(dtype)
