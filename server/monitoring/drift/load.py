"""A version's drift monitor from its config, for the model loader: the ``drift_*`` keys are
checked first, and scipy is imported only when a model asks for a monitor (it takes a moment to
import)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from backends.common.parameters import Parameters
from backends.proto import model_config_pb2 as mc
from server.monitoring.drift.config import drift_config, load_reference

if TYPE_CHECKING:
    from server.monitoring.drift.monitor import DriftMonitor


def drift_monitor(config: mc.ModelConfig, version: int, model_dir: Path) -> DriftMonitor | None:
    """The version's monitor as its config asks (not started), or None; ConfigError for a bad
    key, a missing or malformed reference file, an unknown tensor."""
    drift = drift_config(config, model_dir)
    if drift is None:
        return None
    from server.monitoring.drift.monitor import DriftMonitor  # scipy, only when asked for

    reference = load_reference(drift, Parameters.of(config))
    return DriftMonitor(config.name, version, drift, reference)
