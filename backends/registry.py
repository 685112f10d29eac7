"""Which backend runs a model: by the config's ``backend`` or ``platform``, or, when both are
empty, by the model file in the version folder (Triton's rule).

Importing this module imports no framework: each backend imports its own (torch...) on load."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from backends.base import Backend
from backends.common.errors import ConfigError
from backends.common.versions import version_folders
from backends.onnx_backend import OnnxRuntimeBackend
from backends.proto import model_config_pb2 as mc
from backends.python_backend import PythonBackend
from backends.pytorch_backend import PyTorchBackend
from backends.remote.backend import RemoteBackend
from backends.sklearn_backend import SklearnBackend, XGBoostBackend
from backends.spark_backend import SparkBackend
from backends.tensorflow_backend import TensorFlowBackend

BACKENDS: dict[str, type[Backend]] = {
    "python": PythonBackend,
    "pytorch": PyTorchBackend,
    "onnxruntime": OnnxRuntimeBackend,
    "sklearn": SklearnBackend,
    "xgboost": XGBoostBackend,
    "tensorflow": TensorFlowBackend,
    "spark": SparkBackend,
    "remote": RemoteBackend,
}
PLATFORMS: dict[str, str] = {  # platform -> backend
    "pytorch_libtorch": "pytorch",
    "onnxruntime_onnx": "onnxruntime",
    "tensorflow_savedmodel": "tensorflow",
}
_SUFFIXES: dict[str, str] = {  # model file -> backend
    ".py": "python",
    ".pt": "pytorch",
    ".onnx": "onnxruntime",
    ".joblib": "sklearn",
    ".pkl": "sklearn",
    ".pickle": "sklearn",
    ".ubj": "xgboost",
    ".savedmodel": "tensorflow",
    ".sparkml": "spark",
}


def backend_name(config: mc.ModelConfig, version_path: Path | None = None) -> str:
    """The backend's name ("python", "pytorch"); ConfigError when it is unknown or ambiguous."""
    source = f"model '{config.name}'"
    if config.platform and config.platform not in PLATFORMS:
        raise ConfigError(source, "platform", f"unknown platform '{config.platform[:64]}' ({_known(PLATFORMS)})")
    if config.backend and config.backend not in BACKENDS:
        raise ConfigError(source, "backend", f"unknown backend '{config.backend[:64]}' ({_known(BACKENDS)})")
    from_platform = PLATFORMS.get(config.platform, "")
    if config.backend and from_platform and config.backend != from_platform:
        raise ConfigError(source, "backend", f"backend '{config.backend}' contradicts platform '{config.platform}'")
    name = config.backend or from_platform or _infer(config, version_path)
    if not name:
        raise ConfigError(source, "backend", "neither backend nor platform is set, and no model file shows it")
    return name


def _known(table: Mapping[str, object]) -> str:
    return "known: " + ", ".join(sorted(table))


def _infer(config: mc.ModelConfig, version_path: Path | None) -> str:
    """Triton-style: the default_model_filename's suffix, else the default file that exists."""
    if config.default_model_filename:
        return _SUFFIXES.get(Path(config.default_model_filename).suffix, "")
    if version_path is None:
        return ""
    # a backend without a model file (remote) is never inferred: only named
    found = [
        name
        for name, cls in BACKENDS.items()
        if cls.default_filename and (version_path / cls.default_filename).exists()
    ]
    return found[0] if len(found) == 1 else ""


def backend_class(config: mc.ModelConfig, version_path: Path | None = None) -> type[Backend]:
    """The Backend subclass that serves ``config`` (``version_path`` only matters when the config
    names neither backend nor platform)."""
    return BACKENDS[backend_name(config, version_path)]


def default_filename(config: mc.ModelConfig, version_path: Path | None = None) -> str:
    """The model file in a version folder: ``default_model_filename`` or the backend's default."""
    return config.default_model_filename or backend_class(config, version_path).default_filename


def autocomplete(config: mc.ModelConfig, model_dir: Path) -> None:
    """Fills what the model file tells of a config that leaves it out (Triton's auto-complete):
    for backends that can, from the newest version folder."""
    if config.input and config.output:
        return
    versions = version_folders(model_dir)
    if not versions:
        return
    newest = versions[max(versions)]
    try:
        name = backend_name(config, newest)
    except ConfigError:
        return  # validation reports it
    BACKENDS[name].autocomplete(config, newest)
