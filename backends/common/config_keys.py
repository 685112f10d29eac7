"""Config keys clipperd parses but does not implement yet, and what loading does about them.

A key that would change a model's answers if ignored is refused: the model stays UNAVAILABLE
with a reason naming the key. A key that only tunes speed is accepted with one warning. The
lists are documented in docs/repository.md; remove a key from here when it is implemented."""

from __future__ import annotations

from backends.proto import model_config_pb2 as mc

# key -> why ignoring it would change answers
REFUSED = {
    "parameters.EXECUTION_ENV_PATH": "custom Python execution environments are not implemented",
    "batch_input": "batch inputs (tensors the batcher would add, e.g. element counts) are not implemented",
    "batch_output": "batch outputs (tensors split back by another input's shape) are not implemented",
    "sequence_batching.iterative_sequence": "iterative sequences (models rescheduling requests) are not implemented",
}
# key -> what is given up by ignoring it
WARNED: dict[str, str] = {}


def refused_keys(config: mc.ModelConfig) -> list[str]:
    """The keys of ``config`` that clipperd refuses (see REFUSED), in REFUSED's order."""
    present = {
        "parameters.EXECUTION_ENV_PATH": "EXECUTION_ENV_PATH" in config.parameters,
        "batch_input": len(config.batch_input) > 0,
        "batch_output": len(config.batch_output) > 0,
        "sequence_batching.iterative_sequence": config.sequence_batching.iterative_sequence,
    }
    return [key for key in REFUSED if present[key]]


def warned_keys(config: mc.ModelConfig) -> list[str]:
    """The keys of ``config`` that clipperd accepts but ignores (see WARNED)."""
    present: dict[str, bool] = {}  # none today: each key implemented since was taken out
    return [key for key in WARNED if present[key]]


def refusal(config: mc.ModelConfig) -> str:
    """Why the model cannot be served as configured, naming each key; "" when it can."""
    keys = refused_keys(config)
    if not keys:
        return ""
    reasons = "; ".join(f"{key}: {REFUSED[key]}" for key in keys)
    return f"model '{config.name}' uses config keys clipperd does not implement yet ({reasons})"


def warning(config: mc.ModelConfig) -> str:
    """One line naming the ignored speed-only keys; "" when there are none."""
    keys = warned_keys(config)
    if not keys:
        return ""
    effects = "; ".join(f"{key}: {WARNED[key]}" for key in keys)
    return f"model '{config.name}': config keys accepted but ignored, answers are unchanged ({effects})"
