"""A model's ``sequence_batching`` read once at load: the strategy and its knobs, the control
inputs the server fills per request (START, END, READY, CORRID with their false/true values and
data types) and the implicit state it keeps per sequence. The backends see the control and state
tensors as ordinary inputs and outputs: ``backend_config`` adds them to the config they load."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from backends.common import datatypes
from backends.common.errors import ConfigError
from backends.common.outputs import OutputSpec
from backends.proto import model_config_pb2 as mc

Control = mc.ModelSequenceBatching.Control
DEFAULT_IDLE_US = 1_000_000  # Triton's max_sequence_idle_microseconds default
START, READY, END, CORRID = "start", "ready", "end", "corrid"
_KINDS = {
    Control.CONTROL_SEQUENCE_START: START,
    Control.CONTROL_SEQUENCE_READY: READY,
    Control.CONTROL_SEQUENCE_END: END,
    Control.CONTROL_SEQUENCE_CORRID: CORRID,
}
_CORRID_TYPES = ("TYPE_UINT64", "TYPE_INT64", "TYPE_UINT32", "TYPE_INT32", "TYPE_STRING")


@dataclass(frozen=True)
class ControlSpec:
    """One control input: which signal it carries and how false and true (or the id) are written."""

    name: str
    kind: str  # START, READY, END or CORRID
    config_type: str  # TYPE_INT32 ...
    values: tuple[Any, Any]  # (false, true); unused for CORRID

    @property
    def dtype(self) -> np.dtype[Any]:
        return datatypes.from_config(self.config_type).numpy

    def value(self, flag: bool, corrid: int | str) -> Any:
        if self.kind == CORRID:
            return corrid if self.dtype.kind in "OSU" else (corrid if isinstance(corrid, int) else 0)
        return self.values[1] if flag else self.values[0]


@dataclass(frozen=True)
class StateSpec:
    """One implicit state: fed as ``input_name``, taken back from ``output_name`` after each step."""

    input_name: str
    output_name: str
    config_type: str
    dims: tuple[int, ...]
    initial: np.ndarray | None  # the initial_state's data, None: zeros

    @property
    def config_dtype(self) -> np.dtype[Any]:
        return datatypes.from_config(self.config_type).numpy


@dataclass(frozen=True)
class SequenceSettings:
    """Everything the sequence scheduler reads from the config."""

    model: str
    oldest: bool
    slots: int  # per instance: max_batch_size (direct) or max_candidate_sequences (oldest)
    max_batch: int  # rows in one batch: max_batch_size, at least 1
    batched: bool  # max_batch_size > 0: tensors carry a batch dimension
    delay_ns: int
    min_utilization: float  # direct only
    preferred: tuple[int, ...]  # oldest only
    idle_ns: int
    controls: tuple[ControlSpec, ...]
    states: tuple[StateSpec, ...]
    preserve_ordering: bool = False  # oldest only: answers leave in the order batches were formed

    @classmethod
    def of(cls, config: mc.ModelConfig, model_dir: Path) -> SequenceSettings:
        seq = config.sequence_batching
        oldest = seq.WhichOneof("strategy_choice") == "oldest"
        batch = max(config.max_batch_size, 1)
        strategy: Any = seq.oldest if oldest else seq.direct
        slots = (seq.oldest.max_candidate_sequences or batch) if oldest else batch
        if slots < 1:
            raise ConfigError(
                f"model '{config.name}'", "sequence_batching.oldest.max_candidate_sequences", "must be > 0"
            )
        idle_us = seq.max_sequence_idle_microseconds or DEFAULT_IDLE_US
        return cls(
            config.name,
            oldest,
            slots,
            batch,
            config.max_batch_size > 0,
            strategy.max_queue_delay_microseconds * 1000,
            0.0 if oldest else seq.direct.minimum_slot_utilization,
            tuple(sorted(set(seq.oldest.preferred_batch_size))) if oldest else (),
            idle_us * 1000,
            tuple(_controls(config)),
            tuple(_state(config, s, model_dir) for s in seq.state),
            oldest and seq.oldest.preserve_ordering,
        )

    def state_output_specs(self) -> tuple[OutputSpec, ...]:
        specs = []
        for state in self.states:
            info = datatypes.from_config(state.config_type)
            specs.append(OutputSpec(state.output_name, info.wire, info.numpy, state.dims, None))
        return tuple(specs)


def _controls(config: mc.ModelConfig) -> list[ControlSpec]:
    where = f"model '{config.name}'"
    specs = []
    for control_input in config.sequence_batching.control_input:
        if len(control_input.control) != 1:
            raise ConfigError(where, f"control_input '{control_input.name}'", "must have exactly one control")
        control = control_input.control[0]
        kind = _KINDS[control.kind]
        specs.append(_control(where, control_input.name, kind, control))
    return specs


def _control(where: str, name: str, kind: str, control: Any) -> ControlSpec:
    field = f"control_input '{name}'"
    if kind == CORRID:
        type_name = mc.DataType.Name(control.data_type)
        if type_name not in _CORRID_TYPES:
            raise ConfigError(where, field, f"CORRID data_type must be one of {', '.join(_CORRID_TYPES)}")
        return ControlSpec(name, kind, type_name, (0, 0))
    choices = [
        ("TYPE_INT32", tuple(control.int32_false_true)),
        ("TYPE_FP32", tuple(control.fp32_false_true)),
        ("TYPE_BOOL", tuple(control.bool_false_true)),
    ]
    given = [(t, v) for t, v in choices if v]
    if len(given) != 1 or len(given[0][1]) != 2:
        raise ConfigError(where, field, "needs exactly one of int32/fp32/bool_false_true with two values")
    type_name, values = given[0]
    return ControlSpec(name, kind, type_name, (values[0], values[1]))


def _state(config: mc.ModelConfig, state: Any, model_dir: Path) -> StateSpec:
    where = f"model '{config.name}'"
    if not state.input_name or not state.output_name:
        raise ConfigError(where, "sequence_batching.state", "needs input_name and output_name")
    type_name = mc.DataType.Name(state.data_type)
    if type_name not in datatypes.BY_CONFIG:
        raise ConfigError(where, f"state '{state.input_name}' data_type", "is not set")
    dtype = datatypes.from_config(type_name)
    dims = tuple(state.dims)
    if any(d < 1 for d in dims):
        raise ConfigError(where, f"state '{state.input_name}' dims", "must be fixed and positive")
    initial = None
    if state.initial_state:
        initial = _initial(where, state, dtype.numpy, dims, model_dir)
    return StateSpec(state.input_name, state.output_name, type_name, dims, initial)


def _initial(where: str, state: Any, dtype: np.dtype[Any], dims: tuple[int, ...], model_dir: Path) -> np.ndarray:
    """The state's start value: zeros (``zero_data``) or the raw bytes of ``initial_state/<file>``."""
    initial = state.initial_state[0]
    shape = tuple(initial.dims) or dims
    if shape != dims:
        raise ConfigError(
            where, f"state '{state.input_name}' initial_state dims", f"must equal the state's {list(dims)}"
        )
    if initial.WhichOneof("state_data") != "data_file":
        return np.zeros(dims, dtype)
    path = model_dir / "initial_state" / initial.data_file
    if path.parent != model_dir / "initial_state" or not path.is_file():
        raise ConfigError(where, f"state '{state.input_name}' initial_state.data_file", f"'{path}' not found")
    data = np.frombuffer(path.read_bytes(), dtype)
    if data.size != int(np.prod(dims)):
        raise ConfigError(where, f"state '{state.input_name}' initial_state.data_file", f"must hold {list(dims)}")
    return data.reshape(dims)


def backend_config(config: mc.ModelConfig, settings: SequenceSettings) -> mc.ModelConfig:
    """The config the backends load: the control and state tensors as inputs, the state outputs
    as outputs (as Triton's backends see them), so that they feed and return them by name."""
    extended = mc.ModelConfig()
    extended.CopyFrom(config)
    for control in settings.controls:
        extended.input.add(name=control.name, data_type=mc.DataType.Value(control.config_type), dims=[1])
    for state in settings.states:
        data_type = mc.DataType.Value(state.config_type)
        extended.input.add(name=state.input_name, data_type=data_type, dims=list(state.dims))
        extended.output.add(name=state.output_name, data_type=data_type, dims=list(state.dims))
    return extended
