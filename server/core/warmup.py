"""Model warm-up at load (``model_warmup``): each sample (schedulers/warmup.py) is checked
against the version's signature like a client's request, then run ``count`` times on every
instance through the version's scheduler, before the version is published READY. Warm-up runs
are not counted in the version's statistics. A failing sample fails the load: the version stays
UNAVAILABLE with the sample's name and the error as its reason."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from backends.base import Tensors
from backends.common.errors import ClipperdError, Unavailable
from backends.proto import model_config_pb2 as mc
from schedulers.protocol import Scheduler
from schedulers.warmup import warmup_samples
from server.core import inference
from server.core.validation import ModelSignature

log = logging.getLogger(__name__)


async def warm_up(
    config: mc.ModelConfig, version: int, version_path: Path, scheduler: Scheduler, signature: ModelSignature
) -> None:
    """Runs the config's warm-up samples; Unavailable naming the sample when one fails."""
    if not config.model_warmup:
        return
    run = getattr(scheduler, "warm_up", None)
    if run is None:  # an ensemble or an application: its models warm up on their own
        log.warning("model '%s': model_warmup is ignored for this kind of model", config.name)
        return
    who = f"model '{config.name}' version {version}"
    try:
        samples = await asyncio.to_thread(warmup_samples, config, version_path.parent)
    except ClipperdError as error:
        raise Unavailable(f"{who}: warm-up failed: {error.message}") from None
    for sample in samples:
        try:
            inputs, batch = _checked(signature, sample.inputs)
            for _ in range(sample.count):
                await run(inputs, batch)
        except ClipperdError as error:
            raise Unavailable(f"{who}: warm-up sample '{sample.name}' failed: {error.message}") from None
        log.info("%s: warm-up sample '%s' ran %d time(s)", who, sample.name, sample.count)


def _checked(signature: ModelSignature, inputs: Tensors) -> tuple[Tensors, int]:
    return signature.validate([inference.Tensor(name, array) for name, array in inputs.items()])
