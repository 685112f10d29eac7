"""A model version's monitors as the dashboard shows them: whether drift is alarmed (and on
what), the rolling error from feedback and its change alarm.

The monitors (server/monitoring/) are optional attributes of a ModelVersion, None when off; their
``status()`` is the JSON of ``/v2/models/{m}/monitoring``. It is read loosely here (any nested
``alarm``, ``error_rate`` key), so that the page keeps working while that JSON grows, and a
monitor that fails to answer shows as unknown instead of breaking the feed."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

MAX_DEPTH = 4
MAX_ALARMS = 16  # names of alarmed features listed per model
_NAME_KEYS = ("feature", "name", "test", "output")


def _status(version: object, attribute: str) -> Any:
    monitor = getattr(version, attribute, None)
    if monitor is None:
        return None
    try:
        return monitor.status()
    except Exception as error:  # one monitor's failure must not take the page down
        log.debug("%s status of %s unavailable: %s", attribute, getattr(version, "name", "?"), error)
        return {}


def _walk(node: Any, key: str = "", depth: int = 0) -> list[tuple[str, dict[str, Any]]]:
    """Every dict inside ``node`` (itself included), to MAX_DEPTH levels, with the key it sits
    under (a feature's name, often)."""
    if depth > MAX_DEPTH:
        return []
    if isinstance(node, dict):
        found = [(key, node)]
        for name, value in list(node.items())[:256]:
            found += _walk(value, str(name), depth + 1)
        return found
    if isinstance(node, list):
        return [d for item in node[:256] for d in _walk(item, key, depth + 1)]
    return []


def _alarmed(node: dict[str, Any]) -> bool:
    """A key naming an alarm (``alarm``, ``change_alarm``) that is on (true, or 1 as in metrics)."""
    return any("alarm" in key and (value is True or (type(value) is int and value == 1)) for key, value in node.items())


def _label(node: dict[str, Any], unnamed: str) -> str:
    """What an alarmed entry is about: its feature (and test), else its name, else its key."""
    feature, test = node.get("feature"), node.get("test")
    if isinstance(feature, str) and isinstance(test, str):
        return f"{feature[:64]} ({test[:16]})"
    for key in _NAME_KEYS:
        value = node.get(key)
        if isinstance(value, str | int):
            return str(value)[:64]
    return unnamed


def drift_summary(version: object) -> dict[str, Any] | None:
    """None when drift monitoring is off; else {"alarm": bool, "on": [what is alarmed]}."""
    status = _status(version, "drift")
    if status is None:
        return None
    alarmed = [(key, node) for key, node in _walk(status) if _alarmed(node)]
    on = sorted({_label(node, key) for key, node in alarmed if node is not status})
    return {"alarm": bool(alarmed), "on": on[:MAX_ALARMS]}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def feedback_summary(version: object) -> dict[str, Any] | None:
    """None when feedback accuracy is off; else the rolling error (``metric``: error_rate, or
    mean_absolute_error for a regression without a threshold) with its interval, the labels
    received, and the change detector's alarm."""
    status = _status(version, "feedback")
    if status is None:
        return None
    nodes = [node for _, node in _walk(status)]
    error = status.get("error") if isinstance(status, dict) else None
    error = error if isinstance(error, dict) else {}
    return {
        "alarm": any(_alarmed(node) for node in nodes),
        "metric": str(error.get("metric", "error_rate"))[:32],
        "error": _number(error.get("value")),
        "low": _number(error.get("low")),
        "high": _number(error.get("high")),
        "labels": _number(status.get("labels")) if isinstance(status, dict) else None,
    }
