"""A version's drift monitor from its config, for the model loader: the ``drift_*`` keys are
checked first, and scipy (the ``monitoring`` extra) is imported only when a model asks for a
monitor, so that a server without it runs every other model."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from backends.common.errors import ConfigError
from backends.common.parameters import Parameters
from backends.proto import model_config_pb2 as mc
from server.monitoring.drift.config import drift_config, load_reference

if TYPE_CHECKING:
    from server.monitoring.drift.monitor import DriftMonitor


def drift_monitor(config: mc.ModelConfig, version: int, model_dir: Path) -> DriftMonitor | None:
    """The version's monitor as its config asks (not started), or None; ConfigError for a bad
    key, a missing or malformed reference file, an unknown tensor, or scipy missing."""
    drift = drift_config(config, model_dir)
    if drift is None:
        return None
    if importlib.util.find_spec("scipy") is None:
        raise ConfigError(
            f"model '{config.name}'",
            "parameters.drift_*",
            "drift monitors need scipy: pip install 'clipperd[monitoring]'",
        )
    from server.monitoring.drift.monitor import DriftMonitor  # scipy, only when asked for

    reference = load_reference(drift, Parameters.of(config))
    return DriftMonitor(config.name, version, drift, reference)
