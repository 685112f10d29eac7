"""Policies that do not learn: one model, the average of all, the majority vote of all."""

from __future__ import annotations

import numpy as np

from schedulers.applications.selection.base import Feedback, Predictions, State, agreement, majority, majority_decided


class SinglePolicy:
    """One model answers (the first linked; the application pins its version). Confidence is 1
    when it answered."""

    name = "single"

    def initial_state(self, models: list[str], seed: int) -> State:
        return {"models": list(models)}

    def select(self, state: State, x: np.ndarray) -> list[str]:
        models: list[str] = state["models"]
        return models[:1]

    def combine(self, state: State, x: np.ndarray, predictions: Predictions) -> tuple[np.ndarray, float]:
        y = next(iter(predictions.values()))
        return y, 1.0

    def observe(self, state: State, x: np.ndarray, feedback: Feedback) -> State:
        return state

    def decided(self, state: State, predictions: Predictions, waiting: list[str]) -> bool:
        return True


class AveragePolicy:
    """Every model answers; the answer is the element-wise mean (scores, probabilities,
    regression values); confidence is the share of members whose label matches the mean's."""

    name = "average"

    def initial_state(self, models: list[str], seed: int) -> State:
        return {"models": list(models)}

    def select(self, state: State, x: np.ndarray) -> list[str]:
        return list(state["models"])

    def combine(self, state: State, x: np.ndarray, predictions: Predictions) -> tuple[np.ndarray, float]:
        arrays = list(predictions.values())
        y = np.mean(np.stack([np.asarray(a, dtype=np.float64) for a in arrays]), axis=0).astype(arrays[0].dtype)
        return y, agreement(y, predictions)

    def observe(self, state: State, x: np.ndarray, feedback: Feedback) -> State:
        return state

    def decided(self, state: State, predictions: Predictions, waiting: list[str]) -> bool:
        return False  # every member moves the mean


class VotePolicy:
    """Every model answers; the majority label wins (ties: the model linked first)."""

    name = "vote"

    def initial_state(self, models: list[str], seed: int) -> State:
        return {"models": list(models)}

    def select(self, state: State, x: np.ndarray) -> list[str]:
        return list(state["models"])

    def combine(self, state: State, x: np.ndarray, predictions: Predictions) -> tuple[np.ndarray, float]:
        ordered = {m: predictions[m] for m in state["models"] if m in predictions}
        y = majority(ordered)
        return y, agreement(y, predictions)

    def observe(self, state: State, x: np.ndarray, feedback: Feedback) -> State:
        return state

    def decided(self, state: State, predictions: Predictions, waiting: list[str]) -> bool:
        return majority_decided(predictions, waiting)
