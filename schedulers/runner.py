"""How code in ``schedulers/`` runs a model version: through the server's one entry point
(validation, response cache, queue, statistics, as a client's request), which the server hands
in. Ensemble steps and application members use it; the server implements it."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Protocol

import numpy as np

from backends.base import Tensors


class ModelRunner(Protocol):
    """A loaded model version, as the repository serves it to clients."""

    def infer_tensors(
        self, inputs: Mapping[str, np.ndarray], priority: int = 0, timeout_us: int = 0
    ) -> Awaitable[Tensors]:
        """Validates ``inputs`` against the version's config, answers from its response cache or
        runs them through its scheduler, and counts the request in its statistics."""
        ...
