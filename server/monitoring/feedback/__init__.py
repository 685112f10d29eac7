"""Accuracy from feedback: the predictions a model version served (by request id, a bounded
window), joined to the true labels clients send later, giving a rolling error with a confidence
interval and a change detector (Page-Hinkley or ADWIN, river's) per version."""

import asyncio
import importlib

from server.monitoring.feedback.config import FeedbackConfig, feedback_config
from server.monitoring.feedback.monitor import FeedbackMonitor

__all__ = ["FeedbackConfig", "FeedbackMonitor", "feedback_config", "feedback_monitor"]


async def feedback_monitor(model: str, version: int, config: FeedbackConfig | None) -> FeedbackMonitor | None:
    """The version's monitor, or None when feedback is off. river's first import takes about a
    second: it is done on a worker thread, not on the event loop."""
    if config is None:
        return None
    await asyncio.to_thread(importlib.import_module, "river.drift")
    return FeedbackMonitor(model, version, config)
