"""Clipper's adaptive batch sizing (§4.3.1 of the paper): additive increase, multiplicative
decrease of a cap on the batch size, driven by the measured latency of each batch against the
model's latency target. The batch size that keeps latency under the target does not move much,
so the cut is 10 %, not TCP's half.

Settings come from the model config's ``parameters`` (string values, as Triton's are):

  ``batch_latency_target_us``  the target for one batch's execution, µs; AIMD is on when set
  ``batch_size_step``          the additive increase, rows (default 1)
  ``batch_backoff``            the multiplicative decrease factor, (0, 1) (default 0.9)
  ``batch_size_initial``       where the cap starts (default 1)
  ``batch_fill_delay_us``      Clipper's delayed batching (§4.3.2), µs: right after a batch
                               completes, a batch under the cap waits this long for more rows
                               (default: 5 % of the target; 0 without one)

Without a target the cap is fixed at max_batch_size (Triton's behaviour).

Why the fill delay: under a closed loop (each client sends its next request when the last one
is answered) the callers of a batch come back while the next batch executes. Dispatching the
rows that waited at once splits the load into cohorts that never merge again, each batch short
of the cap, and a short batch tells AIMD nothing about the cap. Waiting a little after a
completion lets the returning cohort join, like Nagle's algorithm holds a segment until the
previous one is acknowledged."""

from __future__ import annotations

import math
from dataclasses import dataclass

from backends.common.parameters import Parameters
from backends.proto import model_config_pb2 as mc

TARGET_KEY = "batch_latency_target_us"
STEP_KEY = "batch_size_step"
BACKOFF_KEY = "batch_backoff"
INITIAL_KEY = "batch_size_initial"
FILL_DELAY_KEY = "batch_fill_delay_us"
_DEFAULT_FILL_SHARE = 0.05  # of the target: a wait the target absorbs


@dataclass(frozen=True)
class AimdSettings:
    target_ns: int | None  # None: a fixed cap
    step: int = 1
    backoff: float = 0.9
    initial: int = 1
    fill_delay_ns: int = 0


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

    def observe(self, batch_size: int, latency_ns: int, cap_bound: bool = False) -> None:
        """One executed batch of ``batch_size`` rows took ``latency_ns``; ``cap_bound``: more rows
        waited than the cap let in (the batcher shared them out in equal batches)."""
        self.last_latency_ns = latency_ns
        target = self.settings.target_ns
        if target is None:
            return
        if latency_ns > target:
            self.over_target += 1
            self.over_target_ns += latency_ns - target
            self.cap = max(1, min(self.cap - 1, math.floor(self.cap * self.settings.backoff)))
        elif batch_size >= self.cap or cap_bound:  # only a batch the cap limited tells it is fast enough
            self.cap = min(self.max_batch, self.cap + self.settings.step)


def aimd_settings(config: mc.ModelConfig) -> AimdSettings:
    """The model's AIMD settings, or ConfigError naming the bad parameter."""
    params = Parameters.of(config)
    fill_us = params.number(FILL_DELAY_KEY, -1.0, low=0)  # -1: left to the default
    if TARGET_KEY not in params:
        for key in (STEP_KEY, BACKOFF_KEY, INITIAL_KEY):
            if key in params:
                raise params.fail(key, f"needs parameters.{TARGET_KEY} to be set")
        return AimdSettings(None, fill_delay_ns=int(max(fill_us, 0) * 1000))
    if config.max_batch_size <= 0:
        raise params.fail(TARGET_KEY, "adaptive batching needs max_batch_size > 0")
    target_us = params.number(TARGET_KEY, 0.0, low=0, open_low=True)
    if not target_us:
        raise params.fail(TARGET_KEY, "must be a number > 0")
    step = params.integer(STEP_KEY, 1, low=1)
    backoff = params.number(BACKOFF_KEY, 0.9, low=0, high=1, open_low=True, open_high=True)
    initial = params.integer(INITIAL_KEY, 1, low=1)
    if fill_us < 0:
        fill_us = target_us * _DEFAULT_FILL_SHARE
    return AimdSettings(int(target_us * 1000), step, backoff, initial, int(fill_us * 1000))
