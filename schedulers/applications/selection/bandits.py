"""Exp3 and Exp4 (Clipper §5.1), on discounted losses so that they follow a model that degrades.

Both keep, per model, a discounted sum of losses ``L`` (each feedback multiplies every sum by
``discount`` before adding the new loss), and weigh the models by ``exp(-eta * L)``. With
``discount`` 0.98 (Exp4) the memory is about 50 feedbacks, 100 with Exp3's 0.99 (its
importance-weighted losses are noisier): a model that was best and starts to err loses its
weight within a few dozen feedbacks (tests/schedulers/test_applications_selection.py measures it), where
undiscounted sums would need as many feedbacks as it had been right before.

- Exp3 asks one model per query, drawn from ``(1 - gamma) * weights + gamma / K`` (the gamma
  share keeps exploring), and learns only about the model it asked: the loss is divided by the
  chance that model had to be drawn (an unbiased estimate of every model's loss).
- Exp4 asks every model and answers with their weighted majority; every answering model's loss
  is known at feedback. Weights close to each other (similar accuracies) make it a majority
  vote, which beats each member when their errors are independent; a clearly worse member gets
  too little weight to outvote the others."""

from __future__ import annotations

import math

import numpy as np

from schedulers.applications.selection.base import (
    Feedback,
    Predictions,
    State,
    agreement,
    loss,
    majority,
    majority_decided,
    normalised,
)

DISCOUNT = 0.98
EXP3_ETA = 0.05
EXP3_DISCOUNT = 0.99
EXP3_GAMMA = 0.2
EXP4_ETA = 0.1


def weights(state: State) -> dict[str, float]:
    """The current weight of each model (summing to 1), as the admin API reports them."""
    models: list[str] = state["models"]
    losses: dict[str, float] = state["losses"]
    eta: float = state["eta"]
    known = [losses[m] for m in models if m in losses]
    low = min(known) if known else 0.0  # shifted before exp(): no underflow after long runs
    raw = {m: math.exp(-eta * (losses.get(m, low) - low)) for m in models}
    return normalised(raw, models)


def _discount(state: State) -> dict[str, float]:
    factor: float = state["discount"]
    return {m: state["losses"].get(m, 0.0) * factor for m in state["models"]}


class Exp3Policy:
    name = "exp3"

    def initial_state(self, models: list[str], seed: int) -> State:
        return {
            "models": list(models),
            "losses": dict.fromkeys(models, 0.0),
            "eta": EXP3_ETA,
            "gamma": EXP3_GAMMA,
            "discount": EXP3_DISCOUNT,
            "seed": seed,
            "draws": 0,
        }

    def probabilities(self, state: State) -> dict[str, float]:
        gamma: float = state["gamma"]
        k = len(state["models"])
        return {m: (1 - gamma) * w + gamma / k for m, w in weights(state).items()}

    def select(self, state: State, x: np.ndarray) -> list[str]:
        """Draws one model; the draw is a function of (seed, draws so far), so a run with a given
        seed repeats. The draw counter is the one thing select changes in the state."""
        models: list[str] = state["models"]
        if not models:
            return []
        probs = self.probabilities(state)
        rng = np.random.default_rng([int(state["seed"]) & 0xFFFFFFFF, int(state["draws"])])
        state["draws"] = int(state["draws"]) + 1
        pick = rng.choice(len(models), p=np.array([probs[m] for m in models]) / sum(probs.values()))
        return [models[int(pick)]]

    def combine(self, state: State, x: np.ndarray, predictions: Predictions) -> tuple[np.ndarray, float]:
        y = next(iter(predictions.values()))
        return y, agreement(y, predictions)

    def observe(self, state: State, x: np.ndarray, feedback: Feedback) -> State:
        probs = self.probabilities(state)
        losses = _discount(state)
        for model in feedback.chosen:
            if model in feedback.predictions and model in losses:
                losses[model] += loss(feedback.predictions[model], feedback.label) / probs[model]
        return {**state, "losses": losses}

    def decided(self, state: State, predictions: Predictions, waiting: list[str]) -> bool:
        return True  # one member


class Exp4Policy:
    name = "exp4"

    def initial_state(self, models: list[str], seed: int) -> State:
        return {"models": list(models), "losses": dict.fromkeys(models, 0.0), "eta": EXP4_ETA, "discount": DISCOUNT}

    def select(self, state: State, x: np.ndarray) -> list[str]:
        return list(state["models"])

    def combine(self, state: State, x: np.ndarray, predictions: Predictions) -> tuple[np.ndarray, float]:
        w = weights(state)
        ordered = {m: predictions[m] for m in state["models"] if m in predictions}
        ordered.update({m: y for m, y in predictions.items() if m not in ordered})
        y = majority(ordered, w)
        return y, agreement(y, predictions)

    def observe(self, state: State, x: np.ndarray, feedback: Feedback) -> State:
        losses = _discount(state)
        for model, y in feedback.predictions.items():
            if model in losses:
                losses[model] += loss(y, feedback.label)
        return {**state, "losses": losses}

    def decided(self, state: State, predictions: Predictions, waiting: list[str]) -> bool:
        return majority_decided(predictions, waiting, weights(state))
