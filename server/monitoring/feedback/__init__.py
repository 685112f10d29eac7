"""Accuracy from feedback: the predictions a model version served (by request id, a bounded
window), joined to the true labels clients send later, giving a rolling error with a confidence
interval and a change detector (Page-Hinkley or ADWIN, river's) per version."""

from server.monitoring.feedback.config import FeedbackConfig, feedback_config
from server.monitoring.feedback.monitor import FeedbackMonitor

__all__ = ["FeedbackConfig", "FeedbackMonitor", "feedback_config", "feedback_monitor"]


def feedback_monitor(model: str, version: int, config: FeedbackConfig | None) -> FeedbackMonitor | None:
    return None if config is None else FeedbackMonitor(model, version, config)
