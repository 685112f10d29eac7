"""The selection-policy contract (Clipper §5): ``select(state, x)`` names the models to ask,
``combine(state, x, predictions)`` makes one answer and its confidence, ``observe(state, x,
feedback)`` learns. State is a JSON-able dict, kept per application and per user id, so that it
can be stored and shared between replicas; policies hold no state of their own."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

State = dict[str, Any]
Predictions = Mapping[str, np.ndarray]  # model name -> its output for one input


@dataclass(frozen=True)
class Feedback:
    """The true label of an input and what the models had predicted for it."""

    label: np.ndarray
    predictions: Predictions  # the members' answers for this input (those that answered)
    chosen: tuple[str, ...] = ()  # what select() picked when the input was predicted


class Policy(Protocol):
    name: str

    def initial_state(self, models: list[str], seed: int) -> State: ...

    def select(self, state: State, x: np.ndarray) -> list[str]: ...

    def combine(self, state: State, x: np.ndarray, predictions: Predictions) -> tuple[np.ndarray, float]: ...

    def observe(self, state: State, x: np.ndarray, feedback: Feedback) -> State: ...

    def decided(self, state: State, predictions: Predictions, waiting: list[str]) -> bool:
        """True when the members still ``waiting`` can no longer change the answer: the
        application then answers without them (before its deadline)."""
        ...


def label_of(y: np.ndarray) -> Any:
    """What two answers must share to agree: the class of a score vector (argmax), otherwise
    the value itself (a scalar, a class id, a string)."""
    flat = np.asarray(y).reshape(-1)
    if flat.size > 1 and flat.dtype.kind in "fiu":
        return int(np.argmax(flat))
    if flat.size == 1:
        value = flat[0]
        return value.item() if hasattr(value, "item") else value
    return tuple(v.item() if hasattr(v, "item") else v for v in flat)


def agreement(answer: np.ndarray, predictions: Predictions) -> float:
    """Clipper's confidence: the share of the members that answered with the answer's label."""
    if not predictions:
        return 0.0
    wanted = label_of(answer)
    return sum(1 for y in predictions.values() if label_of(y) == wanted) / len(predictions)


def loss(y: np.ndarray, label: np.ndarray) -> float:
    """0/1 loss on labels: bandit rewards must lie in [0, 1]."""
    return 0.0 if label_of(y) == label_of(label) else 1.0


def majority(predictions: Predictions, weights: Mapping[str, float] | None = None) -> np.ndarray:
    """The answer of the (weighted) majority label; ties go to the model listed first."""
    tally = _tally(predictions, weights)
    first: dict[Any, np.ndarray] = {}
    for y in predictions.values():
        first.setdefault(label_of(y), y)
    best = max(tally.values())
    winner = next(key for key in first if tally[key] == best)
    return first[winner]


def majority_decided(predictions: Predictions, waiting: list[str], weights: Mapping[str, float] | None = None) -> bool:
    """Whether the leading label keeps the lead whatever the waiting members answer."""
    ranked = [*sorted(_tally(predictions, weights).values(), reverse=True), 0.0]
    pending = float(len(waiting)) if weights is None else sum(weights.get(m, 0.0) for m in waiting)
    return ranked[0] > ranked[1] + pending


def _tally(predictions: Predictions, weights: Mapping[str, float] | None) -> dict[Any, float]:
    """Votes (or weights) per label."""
    tally: dict[Any, float] = {}
    for name, y in predictions.items():
        key = label_of(y)
        tally[key] = tally.get(key, 0.0) + (1.0 if weights is None else weights.get(name, 0.0))
    return tally


def normalised(weights: Mapping[str, float], models: list[str]) -> dict[str, float]:
    """Weights over exactly ``models`` (new members get the mean weight), summing to 1."""
    known = [weights[m] for m in models if m in weights]
    fill = sum(known) / len(known) if known else 1.0
    raw = {m: max(float(weights.get(m, fill)), 0.0) for m in models}
    total = sum(raw.values()) or 1.0
    return {m: w / total for m, w in raw.items()} if any(raw.values()) else {m: 1 / len(models) for m in models}
