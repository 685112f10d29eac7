"""Clipper's model-selection layer: policies that pick which linked models answer a query,
combine their answers with a confidence, and learn from feedback (see base.py for the contract)."""

from __future__ import annotations

from schedulers.applications.selection.bandits import Exp3Policy, Exp4Policy, weights
from schedulers.applications.selection.base import Feedback, Policy, State
from schedulers.applications.selection.simple import AveragePolicy, SinglePolicy, VotePolicy

POLICIES: dict[str, Policy] = {
    p.name: p for p in (SinglePolicy(), Exp3Policy(), Exp4Policy(), AveragePolicy(), VotePolicy())
}


def policy(name: str) -> Policy:
    """The policy called ``name``; KeyError for an unknown one (callers turn it into a 400)."""
    return POLICIES[name]


def summary(state: State) -> dict[str, float]:
    """Each model's weight (1/K each for the policies that do not learn)."""
    if "losses" in state:
        return weights(state)
    models: list[str] = state.get("models", [])
    return {m: 1 / len(models) for m in models}


def with_models(name: str, state: State, models: list[str], seed: int) -> State:
    """``state`` after the linked models changed: learnt losses of the kept models stay, new
    models start at the mean loss (neither favoured nor shunned), removed ones are dropped."""
    fresh = policy(name).initial_state(models, seed)
    if "losses" in state and "losses" in fresh:
        old: dict[str, float] = state["losses"]
        kept = [old[m] for m in models if m in old]
        mean = sum(kept) / len(kept) if kept else 0.0
        fresh["losses"] = {m: float(old.get(m, mean)) for m in models}
    if "draws" in fresh:
        fresh["draws"] = int(state.get("draws", 0))
    return fresh


__all__ = [
    "POLICIES",
    "Feedback",
    "Policy",
    "State",
    "policy",
    "summary",
    "with_models",
]
