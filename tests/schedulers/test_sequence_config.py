"""``sequence_batching`` read at load (schedulers/sequence_config.py): strategies and their
defaults, the control inputs' values and data types, implicit state, the config the backends load,
and the config errors that name the field. In-process, no server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from backends.common.errors import ConfigError
from backends.proto import model_config_pb2 as mc
from schedulers.sequence_config import CORRID, DEFAULT_IDLE_US, END, READY, START, SequenceSettings, backend_config

BASE = """
name: "m"
max_batch_size: 4
input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""
CONTROLS = """
  control_input [
    { name: "S" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "E" control [ { kind: CONTROL_SEQUENCE_END fp32_false_true: [ 0.5, 2.5 ] } ] },
    { name: "R" control [ { kind: CONTROL_SEQUENCE_READY bool_false_true: [ false, true ] } ] },
    { name: "C" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_STRING } ] }
  ]
"""


def settings(sequence: str, tmp_path: Path, base: str = BASE) -> SequenceSettings:
    config = text_format.Parse(base + f"sequence_batching {{ {sequence} }}", mc.ModelConfig())
    return SequenceSettings.of(config, tmp_path)


def test_direct_is_the_default_with_a_slot_per_batch_row(tmp_path: Path) -> None:
    got = settings("", tmp_path)
    assert (got.oldest, got.slots, got.max_batch, got.batched) == (False, 4, 4, True)
    assert got.idle_ns == DEFAULT_IDLE_US * 1000


def test_oldest_takes_its_candidates_preferred_sizes_and_delay(tmp_path: Path) -> None:
    got = settings(
        "oldest { max_candidate_sequences: 16 preferred_batch_size: [ 4, 2, 4 ] max_queue_delay_microseconds: 7 }",
        tmp_path,
    )
    assert (got.oldest, got.slots, got.preferred, got.delay_ns) == (True, 16, (2, 4), 7000)


def test_an_unbatched_model_has_one_slot(tmp_path: Path) -> None:
    got = settings("direct { }", tmp_path, BASE.replace("max_batch_size: 4", "max_batch_size: 0"))
    assert (got.slots, got.batched) == (1, False)


def test_controls_carry_their_values_and_types(tmp_path: Path) -> None:
    controls = {c.name: c for c in settings(CONTROLS, tmp_path).controls}
    assert [controls[n].kind for n in "SERC"] == [START, END, READY, CORRID]
    assert controls["S"].dtype == np.int32
    assert (controls["S"].value(False, 1), controls["S"].value(True, 1)) == (0, 1)
    assert controls["E"].dtype == np.float32
    assert controls["E"].value(True, 1) == pytest.approx(2.5)
    assert controls["R"].dtype == np.bool_
    assert controls["R"].value(True, 1) is True
    assert controls["C"].value(False, "abc") == "abc"


def test_the_backends_see_controls_and_state_as_inputs_and_outputs(tmp_path: Path) -> None:
    state = 'state [ { input_name: "ACC" output_name: "ACC_OUT" data_type: TYPE_FP32 dims: [ 3 ] } ]'
    config = text_format.Parse(BASE + f"sequence_batching {{ {CONTROLS} {state} }}", mc.ModelConfig())
    extended = backend_config(config, SequenceSettings.of(config, tmp_path))
    assert [i.name for i in extended.input] == ["INPUT", "S", "E", "R", "C", "ACC"]
    assert [o.name for o in extended.output] == ["OUTPUT", "ACC_OUT"]
    assert [mc.DataType.Name(i.data_type) for i in extended.input[1:5]] == [
        "TYPE_INT32",
        "TYPE_FP32",
        "TYPE_BOOL",
        "TYPE_STRING",
    ]
    assert list(config.input) == list(config.input[:1])  # the client's config is unchanged


def test_an_initial_state_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "initial_state").mkdir()
    (tmp_path / "initial_state" / "acc.bin").write_bytes(np.array([1.5, 2.5], dtype=np.float32).tobytes())
    state = (
        'state [ { input_name: "ACC" output_name: "ACC_OUT" data_type: TYPE_FP32 dims: [ 2 ] '
        'initial_state { data_type: TYPE_FP32 dims: [ 2 ] data_file: "acc.bin" name: "init" } } ]'
    )
    initial = settings(state, tmp_path).states[0].initial
    assert initial is not None
    np.testing.assert_array_equal(initial, [1.5, 2.5])


@pytest.mark.parametrize(
    ("sequence", "field"),
    [
        ('control_input [ { name: "S" control [ { kind: CONTROL_SEQUENCE_START } ] } ]', "control_input 'S'"),
        (
            'control_input [ { name: "C" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_FP32 } ] } ]',
            "control_input 'C'",
        ),
        ('state [ { input_name: "A" output_name: "B" data_type: TYPE_FP32 dims: [ -1 ] } ]', "dims"),
        ('state [ { input_name: "A" data_type: TYPE_FP32 dims: [ 1 ] } ]', "sequence_batching.state"),
        (
            'state [ { input_name: "A" output_name: "B" data_type: TYPE_FP32 dims: [ 1 ] '
            'initial_state { data_type: TYPE_FP32 dims: [ 1 ] data_file: "../../etc/passwd" } } ]',
            "data_file",
        ),
    ],
)
def test_config_errors_name_the_field(tmp_path: Path, sequence: str, field: str) -> None:
    with pytest.raises(ConfigError) as error:
        settings(sequence, tmp_path)
    assert field in str(error.value)
