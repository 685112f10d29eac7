"""Clipper's adaptive batch sizing (§4.3.1 of the paper): additive increase, multiplicative
decrease of a cap on the batch size, driven by the measured latency of each batch against the
model's latency target. The batch size that keeps latency under the target does not move much,
so the cut is 10 %, not TCP's half.

Settings come from the model config's ``parameters`` (string values, as Triton's are):

  ``batch_latency_target_us``  the target for one batch's execution, µs; AIMD is on when set
  ``batch_size_step``          the additive increase, rows (default 1)
  ``batch_backoff``            the multiplicative decrease factor, (0, 1) (default 0.9)
  ``batch_size_initial``       where the cap starts (default 1)

Without a target the cap is fixed at max_batch_size (Triton's behaviour)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from backends.common.errors import ConfigError
from backends.proto import model_config_pb2 as mc

TARGET_KEY = "batch_latency_target_us"
STEP_KEY = "batch_size_step"
BACKOFF_KEY = "batch_backoff"
INITIAL_KEY = "batch_size_initial"


@dataclass(frozen=True)
class AimdSettings:
    target_ns: int | None  # None: a fixed cap
    step: int = 1
    backoff: float = 0.9
    initial: int = 1


class AimdController:
    """The batch-size cap of one (model version, device) queue."""

    def __init__(self, settings: AimdSettings, max_batch: int) -> None:
        self.settings = settings
        self.max_batch = max(max_batch, 1)
        self.adaptive = settings.target_ns is not None
        self.cap = min(settings.initial, self.max_batch) if self.adaptive else self.max_batch
        self.last_latency_ns = 0
        self.over_target = 0  # batches whose latency exceeded the target
        self.over_target_ns = 0  # and by how much, summed

    def observe(self, batch_size: int, latency_ns: int) -> None:
        """One executed batch of ``batch_size`` rows took ``latency_ns``."""
        self.last_latency_ns = latency_ns
        target = self.settings.target_ns
        if target is None:
            return
        if latency_ns > target:
            self.over_target += 1
            self.over_target_ns += latency_ns - target
            self.cap = max(1, min(self.cap - 1, math.floor(self.cap * self.settings.backoff)))
        elif batch_size >= self.cap:  # only a full batch tells that the cap itself is fast enough
            self.cap = min(self.max_batch, self.cap + self.settings.step)


def aimd_settings(config: mc.ModelConfig) -> AimdSettings:
    """The model's AIMD settings, or ConfigError naming the bad parameter."""
    params = {key: value.string_value for key, value in config.parameters.items()}
    source = f"model '{config.name}'"
    if TARGET_KEY not in params:
        for key in (STEP_KEY, BACKOFF_KEY, INITIAL_KEY):
            if key in params:
                raise ConfigError(source, f"parameters.{key}", f"needs parameters.{TARGET_KEY} to be set")
        return AimdSettings(None)
    if config.max_batch_size <= 0:
        raise ConfigError(source, f"parameters.{TARGET_KEY}", "adaptive batching needs max_batch_size > 0")
    target_us = _number(params, TARGET_KEY, source, float, None)
    step = int(_number(params, STEP_KEY, source, int, 1))
    backoff = _number(params, BACKOFF_KEY, source, float, 0.9)
    initial = int(_number(params, INITIAL_KEY, source, int, 1))
    if not (target_us > 0 and math.isfinite(target_us)):
        raise ConfigError(source, f"parameters.{TARGET_KEY}", f"must be a positive number of µs, got {target_us}")
    if step < 1:
        raise ConfigError(source, f"parameters.{STEP_KEY}", f"must be at least 1, got {step}")
    if not 0 < backoff < 1:
        raise ConfigError(source, f"parameters.{BACKOFF_KEY}", f"must be between 0 and 1, got {backoff}")
    if initial < 1:
        raise ConfigError(source, f"parameters.{INITIAL_KEY}", f"must be at least 1, got {initial}")
    return AimdSettings(int(target_us * 1000), step, backoff, initial)


def _number(params: dict[str, str], key: str, source: str, kind: type, default: float | None) -> float:
    if key not in params:
        assert default is not None
        return default
    text = params[key].strip()
    try:
        return kind(text)  # type: ignore[no-any-return]
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ConfigError(source, f"parameters.{key}", f"must be {what}, got {text[:32]!r}") from None
