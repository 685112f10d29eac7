"""The ``feedback_*`` keys of a model's config ``parameters`` (docs/monitoring.md, "Feedback
accuracy"): read once at load, every bad value failing the load with the key named."""

from __future__ import annotations

from dataclasses import dataclass

from backends.common.parameters import Parameters
from backends.proto import model_config_pb2 as mc

KINDS = ("classification", "regression")
DETECTORS = ("page_hinkley", "adwin")
MAX_WINDOW = 10_000_000  # predictions kept for joins; the default keeps 100,000


@dataclass(frozen=True, slots=True)
class FeedbackConfig:
    output: str  # the output that is the prediction
    batched: bool  # the output's first dimension is the batch (max_batch_size > 0)
    kind: str = "classification"
    window: int = 100_000  # predictions kept for joins, the oldest forgotten first
    rolling: int = 1_000  # labelled predictions the rolling error is taken over
    confidence: float = 0.95  # of the interval around the rolling error
    threshold: float = 0.0  # regression: an absolute error above it is a miss (0: mean absolute error)
    detector: str = "adwin"  # no false alarm in our seeded runs where Page-Hinkley had some (docs)
    ph_delta: float = 0.01  # Page-Hinkley: the change in the mean that is tolerated
    ph_threshold: float = 50.0  # Page-Hinkley: the cumulative deviation that raises the alarm
    ph_min_instances: int = 30  # Page-Hinkley: labels seen before it may raise an alarm
    adwin_delta: float = 0.002  # ADWIN: the confidence of a cut


def feedback_config(config: mc.ModelConfig) -> FeedbackConfig | None:
    """The version's feedback settings, or None when ``feedback_enable`` is not true."""
    p = Parameters.of(config)
    if not p.boolean("feedback_enable", False):
        return None
    outputs = [o.name for o in config.output]
    output = p.text("feedback_output", outputs[0] if outputs else "")
    if output not in outputs:
        raise p.fail("feedback_output", f"must name one of the model's outputs ({', '.join(outputs)[:200]})")
    return FeedbackConfig(
        output=output,
        batched=config.max_batch_size > 0,
        kind=p.choice("feedback_kind", KINDS, "classification"),
        window=p.integer("feedback_window", 100_000, 1, MAX_WINDOW, "predictions"),
        rolling=p.integer("feedback_rolling", 1_000, 2, 1_000_000, "labels"),
        confidence=p.number("feedback_confidence", 0.95, 0.0, 1.0, open_low=True, open_high=True),
        threshold=p.number("feedback_threshold", 0.0, 0.0),
        detector=p.choice("feedback_detector", DETECTORS, "adwin"),
        ph_delta=p.number("feedback_ph_delta", 0.01, 0.0),
        ph_threshold=p.number("feedback_ph_threshold", 50.0, 0.0, open_low=True),
        ph_min_instances=p.integer("feedback_ph_min_instances", 30, 1, 1_000_000, "labels"),
        adwin_delta=p.number("feedback_adwin_delta", 0.002, 0.0, 1.0, open_low=True, open_high=True),
    )
