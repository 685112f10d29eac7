"""The response cache on the request path: DataPlane.infer looks a request up before the
scheduler and stores its outputs after a successful execution; the statistics follow Triton's
(``cache_hit``: count and lookup time; ``cache_miss``: count, lookup and insertion time).

Requests that do not use the cache: those of models without ``response_cache { enable: true }``
(or of a server without ``--cache-config``), and those that carry a sequence (``sequence_id``
other than 0 or "", ``sequence_start``, ``sequence_end``): Triton's sequence batcher does not
cache. Every input is keyed by its bytes, BYTES included."""

from __future__ import annotations

from server.messages import InferRequest, Params
from server.model_version import CacheProbe, ModelVersion


def _in_sequence(parameters: Params) -> bool:
    return bool(parameters.get("sequence_id")) or "sequence_start" in parameters or "sequence_end" in parameters


def lookup(model: ModelVersion, request: InferRequest) -> CacheProbe | None:
    """The request's cache lookup, counted as a hit or a miss; None when it does not use the cache.
    Call after validation and after shared-memory inputs are read."""
    if request.parameters and _in_sequence(request.parameters):
        return None
    return model.cache_probe((t.name, t.datatype, t.shape, t.data) for t in request.inputs)
