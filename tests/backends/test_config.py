"""Model configuration loading, validation and helpers (backends/common/config.py)."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as triton_mc

from backends.common.config import config_to_json, full_shape, load_model_config, normalize, validate
from backends.common.errors import ConfigError, InvalidArgument
from backends.proto import model_config_pb2 as mc
from tests.serverproc import ROOT

DATA = ROOT / "tests" / "data" / "configs"
REAL_CONFIGS = sorted(p.name for p in DATA.iterdir() if (p / "config.pbtxt").is_file())


def write_model(root: Path, name: str, files: dict[str, str]) -> Path:
    model_dir = root / name
    model_dir.mkdir(parents=True, exist_ok=True)
    for filename, text in files.items():
        (model_dir / filename).write_text(textwrap.dedent(text))
    return model_dir


# ---------------------------------------------------------------------------------------------
# real-world configurations


def test_there_are_real_configs() -> None:
    assert len(REAL_CONFIGS) >= 6


@pytest.mark.parametrize("model", REAL_CONFIGS)
def test_real_config_parses_like_triton(model: str) -> None:
    text = (DATA / model / "config.pbtxt").read_text()
    ours = text_format.Parse(text, mc.ModelConfig())
    theirs = text_format.Parse(text, triton_mc.ModelConfig())
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(deterministic=True)
    assert text_format.MessageToString(ours) == text_format.MessageToString(theirs)


@pytest.mark.parametrize("model", REAL_CONFIGS)
def test_real_config_loads_and_validates(model: str) -> None:
    config = load_model_config(DATA / model)
    assert config.name == model
    raw = text_format.Parse((DATA / model / "config.pbtxt").read_text(), mc.ModelConfig())
    # loading only adds defaults: everything written in the file is kept
    assert normalize(raw) == config


@pytest.mark.parametrize("model", REAL_CONFIGS)
def test_same_schema_as_yaml_gives_an_equal_message(model: str, tmp_path: Path) -> None:
    raw = text_format.Parse((DATA / model / "config.pbtxt").read_text(), mc.ModelConfig())
    shutil.copytree(DATA / model, tmp_path / model, ignore=shutil.ignore_patterns("config.pbtxt"))
    (tmp_path / model / "config.yaml").write_text(yaml.safe_dump(config_to_json(raw)))
    assert load_model_config(tmp_path / model) == load_model_config(DATA / model)


def test_specific_real_config_details() -> None:
    trt = load_model_config(DATA / "resnet50_trt")
    accel = trt.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accel.name == "tensorrt"
    assert accel.parameters["precision_mode"] == "FP16"
    assert trt.cc_model_filenames["7.5"] == "model_t4.onnx"

    seq = load_model_config(DATA / "tts_sequence")
    assert [c.name for c in seq.sequence_batching.control_input] == ["START", "READY", "END", "CORRID"]
    assert seq.sequence_batching.state[0].initial_state[0].zero_data
    assert seq.version_policy.latest.num_versions == 2

    ens = load_model_config(DATA / "image_pipeline")
    steps = ens.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["image_decode", "resnet50_trt", "top1_label"]
    assert steps[0].input_map["ENCODED"] == "IMAGE_BYTES"
    assert steps[0].model_version == -1
    assert not ens.instance_group  # ensembles run no instances of their own

    ranker = load_model_config(DATA / "ranker_priority")
    assert ranker.dynamic_batching.priority_queue_policy[1].timeout_action == mc.ModelQueuePolicy.DELAY
    assert ranker.dynamic_batching.priority_queue_policy[3].max_queue_size == 32
    assert [g.name for g in ranker.instance_group] == ["ranker_cpu", "ranker_priority_1"]

    warm = load_model_config(DATA / "bert_warmup")
    assert warm.model_warmup[1].inputs["input_ids"].input_data_file == "raw_input_ids"
    assert list(warm.version_policy.specific.versions) == [1, 3]
    assert warm.instance_group[0].count == 1

    py = load_model_config(DATA / "python_preprocess")
    env = py.parameters["EXECUTION_ENV_PATH"].string_value
    assert env == "$$TRITON_MODEL_DIRECTORY/python3.11_env.tar.gz"
    assert list(py.instance_group[0].gpus) == [0, 1]


# ---------------------------------------------------------------------------------------------
# YAML

YAML_CONFIG = """\
name: yaml_model
backend: python
max_batch_size: 8
input:
  - {name: IN, data_type: TYPE_FP32, dims: [4]}
output:
  - name: OUT
    data_type: 11          # TYPE_FP32 by number
    dims: [-1]
instance_group:
  - {kind: KIND_CPU, count: 2}
  - {kind: 1, gpus: [0]}   # KIND_GPU by number
dynamic_batching:
  max_queue_delay_microseconds: 100
  priority_levels: 2
  default_priority_level: 1
  priority_queue_policy:
    2: {timeout_action: DELAY, max_queue_size: 8}
cc_model_filenames:
  7.5: model_t4.pt
parameters:
  latency_target_ms: {string_value: 20}
  EXECUTION_ENV_PATH: {string_value: "$$TRITON_MODEL_DIRECTORY/env.tar.gz"}
optimization:
  execution_accelerators:
    gpu_execution_accelerator:
      - name: tensorrt
        parameters: {precision_mode: FP16, max_workspace_size_bytes: 1073741824}
"""

PBTXT_EQUIVALENT = """\
name: "yaml_model"
backend: "python"
max_batch_size: 8
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] } ]
instance_group [ { kind: KIND_CPU count: 2 }, { kind: KIND_GPU gpus: [ 0 ] } ]
dynamic_batching {
  max_queue_delay_microseconds: 100
  priority_levels: 2
  default_priority_level: 1
  priority_queue_policy { key: 2 value { timeout_action: DELAY max_queue_size: 8 } }
}
cc_model_filenames { key: "7.5" value: "model_t4.pt" }
parameters { key: "latency_target_ms" value { string_value: "20" } }
parameters { key: "EXECUTION_ENV_PATH" value { string_value: "$$TRITON_MODEL_DIRECTORY/env.tar.gz" } }
optimization {
  execution_accelerators {
    gpu_execution_accelerator {
      name: "tensorrt"
      parameters { key: "precision_mode" value: "FP16" }
      parameters { key: "max_workspace_size_bytes" value: "1073741824" }
    }
  }
}
"""


@pytest.mark.parametrize("filename", ["config.yaml", "config.yml"])
def test_yaml_equals_pbtxt(tmp_path: Path, filename: str) -> None:
    from_yaml = load_model_config(write_model(tmp_path / "a", "yaml_model", {filename: YAML_CONFIG}))
    from_pbtxt = load_model_config(write_model(tmp_path / "b", "yaml_model", {"config.pbtxt": PBTXT_EQUIVALENT}))
    assert from_yaml == from_pbtxt


def test_empty_yaml_is_an_empty_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"m/config\.yaml: field 'input'"):
        load_model_config(write_model(tmp_path, "m", {"config.yaml": ""}))


def test_yaml_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"m/config\.yaml: cannot parse: the top level must be a mapping"):
        load_model_config(write_model(tmp_path, "m", {"config.yaml": "- a\n- b\n"}))


# ---------------------------------------------------------------------------------------------
# files and parse errors


def test_both_pbtxt_and_yaml_is_refused(tmp_path: Path) -> None:
    model = write_model(tmp_path, "m", {"config.pbtxt": PBTXT_EQUIVALENT, "config.yaml": YAML_CONFIG})
    with pytest.raises(ConfigError) as info:
        load_model_config(model)
    assert "m/config.pbtxt" in str(info.value)
    assert "m/config.yaml" in str(info.value)


def test_yaml_and_yml_is_refused(tmp_path: Path) -> None:
    model = write_model(tmp_path, "m", {"config.yml": YAML_CONFIG, "config.yaml": YAML_CONFIG})
    with pytest.raises(ConfigError, match=r"m/config\.yaml and m/config\.yml"):
        load_model_config(model)


def test_no_config_file(tmp_path: Path) -> None:
    model = write_model(tmp_path, "m", {"model.py": ""})
    with pytest.raises(ConfigError, match=r"^m: no model configuration: expected config\.pbtxt") as info:
        load_model_config(model)
    assert isinstance(info.value, InvalidArgument)


def test_pbtxt_parse_error_names_file_and_line(tmp_path: Path) -> None:
    text = 'name: "m"\nmax_batch_size: 1\ninput [ { nmae: "x" } ]\n'
    with pytest.raises(ConfigError) as info:
        load_model_config(write_model(tmp_path, "m", {"config.pbtxt": text}))
    message = str(info.value)
    assert message.startswith("m/config.pbtxt: cannot parse: 3:")
    assert "nmae" in message


def test_pbtxt_bad_enum_names_file_and_line(tmp_path: Path) -> None:
    text = 'name: "m"\ninput [ { name: "x" data_type: TYPE_FLOAT32 } ]\n'
    with pytest.raises(ConfigError, match=r"^m/config\.pbtxt: cannot parse: 2:\d+ .*TYPE_FLOAT32"):
        load_model_config(write_model(tmp_path, "m", {"config.pbtxt": text}))


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    text = "name: m\ninput: [ {name: x}\noutput: []\n"
    with pytest.raises(ConfigError, match=r"^m/config\.yaml: cannot parse: 3:\d+ : "):
        load_model_config(write_model(tmp_path, "m", {"config.yaml": text}))


def test_yaml_schema_error_names_file_and_field(tmp_path: Path) -> None:
    text = "name: m\ninput:\n  - {name: x, data_type: TYPE_FP32, dims: [a]}\n"
    with pytest.raises(ConfigError, match=r"^m/config\.yaml: cannot parse: .*dims"):
        load_model_config(write_model(tmp_path, "m", {"config.yaml": text}))


def test_yaml_unknown_field_is_an_error(tmp_path: Path) -> None:
    text = "name: m\nmax_batch: 3\n"
    with pytest.raises(ConfigError, match=r"^m/config\.yaml: cannot parse: .*max_batch"):
        load_model_config(write_model(tmp_path, "m", {"config.yaml": text}))


# ---------------------------------------------------------------------------------------------
# validation errors

BASE = """\
name: "m"
backend: "python"
max_batch_size: 8
input [
  { name: "A" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "B" data_type: TYPE_INT64 dims: [ -1, 2 ] }
]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""


def with_fields(extra: str, base: str = BASE) -> str:
    return base + textwrap.dedent(extra)


def sub(*pairs: str, base: str = BASE) -> str:
    """BASE with each (old, new) pair replaced; every old text must be present."""
    text = base
    for old, new in zip(pairs[::2], pairs[1::2], strict=True):
        assert old in text, old
        text = text.replace(old, new)
    return text


NO_BATCH = ("max_batch_size: 8", "max_batch_size: 0")
DIMS_B = "dims: [ -1, 2 ]"
DYN = "dynamic_batching"


def bad(case_id: str, text: str, field: str, problem: str) -> Any:
    return pytest.param(text, field, problem, id=case_id)


INVALID = [
    bad("name", sub('name: "m"', 'name: "other"'), "name", "does not match"),
    bad("mbs", sub("max_batch_size: 8", "max_batch_size: -1"), "max_batch_size", ">= 0"),
    bad(
        "no-input",
        'name: "m"\noutput [ { name: "Y" data_type: TYPE_FP32 dims: [1] } ]',
        "input",
        "at least one",
    ),
    bad(
        "no-output",
        'name: "m"\ninput [ { name: "Y" data_type: TYPE_FP32 dims: [1] } ]',
        "output",
        "at least one",
    ),
    bad("input-name", sub('name: "B" ', ""), "input[1].name", "needs a name"),
    bad(
        "output-name",
        with_fields("output [ { data_type: TYPE_FP32 dims: [1] } ]"),
        "output[1].name",
        "needs a name",
    ),
    bad("dup-input", sub('name: "B"', 'name: "A"'), "input[1].name", "duplicate input name 'A'"),
    bad(
        "dup-output",
        with_fields('output [ { name: "Y" data_type: TYPE_FP32 dims: [1] } ]'),
        "output[1].name",
        "duplicate output name 'Y'",
    ),
    bad(
        "type-invalid",
        sub("data_type: TYPE_INT64", "data_type: TYPE_INVALID"),
        "input[1].data_type",
        "unknown data type (TYPE_INVALID)",
    ),
    bad(
        "type-missing",
        sub("data_type: TYPE_FP32 dims: [ 4 ] },", "dims: [ 4 ] },"),
        "input[0].data_type",
        "unknown data type",
    ),
    bad(
        "type-number",
        sub("data_type: TYPE_INT64", "data_type: 99"),
        "input[1].data_type",
        "unknown data type (99)",
    ),
    bad(
        "dims-zero",
        sub(DIMS_B, "dims: [ -1, 0 ]"),
        "input[1].dims",
        "dimension 1 must be a positive size or -1, got 0",
    ),
    bad("dims-negative", sub(DIMS_B, "dims: [ -2, 2 ]"), "input[1].dims", "got -2"),
    bad("output-dims", sub("dims: [ 4 ] } ]", "dims: [ 4, -3 ] } ]"), "output[0].dims", "got -3"),
    bad("dims-empty", sub(*NO_BATCH, DIMS_B, ""), "input[1].dims", "must not be empty"),
    bad(
        "reshape-count",
        sub(DIMS_B, "dims: [ 2, 3 ] reshape { shape: [ 5 ] }"),
        "input[1].reshape",
        "holds 5 elements but dims [2, 3] hold 6",
    ),
    bad(
        "reshape-variable",
        sub(DIMS_B, "dims: [ -1, 2 ] reshape { shape: [ 2 ] }"),
        "input[1].reshape",
        "variable dimensions",
    ),
    bad("reshape-zero", sub(DIMS_B, "dims: [ 2 ] reshape { shape: [ 0 ] }"), "input[1].reshape.shape", "got 0"),
    bad(
        "count",
        with_fields("instance_group [ { count: 1 }, { count: -2 } ]"),
        "instance_group[1].count",
        ">= 0, got -2",
    ),
    bad(
        "cpu-gpus",
        with_fields("instance_group [ { kind: KIND_CPU gpus: [ 0 ] } ]"),
        "instance_group[0].gpus",
        "KIND_CPU",
    ),
    bad(
        "gpu-id",
        with_fields("instance_group [ { kind: KIND_GPU gpus: [ 0, -1 ] } ]"),
        "instance_group[0].gpus",
        "GPU ids must be >= 0",
    ),
    bad("dyn-no-batch", with_fields(f"{DYN} {{ }}", sub(*NO_BATCH)), DYN, "max_batch_size > 0"),
    bad(
        "preferred-big",
        with_fields(f"{DYN} {{ preferred_batch_size: [ 4, 16 ] }}"),
        f"{DYN}.preferred_batch_size",
        "16 is not in [1, max_batch_size = 8]",
    ),
    bad(
        "preferred-zero",
        with_fields(f"{DYN} {{ preferred_batch_size: [ 0 ] }}"),
        f"{DYN}.preferred_batch_size",
        "0 is not in",
    ),
    bad(
        "priority-default",
        with_fields(f"{DYN} {{ priority_levels: 2 default_priority_level: 3 }}"),
        f"{DYN}.default_priority_level",
        "3 is not in [1, priority_levels = 2]",
    ),
    bad(
        "priority-default-unset",
        with_fields(f"{DYN} {{ priority_levels: 2 }}"),
        f"{DYN}.default_priority_level",
        "0 is not in",
    ),
    bad(
        "priority-policy",
        with_fields(
            f"{DYN} {{ priority_levels: 2 default_priority_level: 1\n"
            "  priority_queue_policy { key: 5 value { } } }"
        ),
        f"{DYN}.priority_queue_policy[5]",
        "not in [1, priority_levels = 2]",
    ),
    bad(
        "versions",
        with_fields("version_policy { specific { versions: [ 1, 0, -2 ] } }"),
        "version_policy.specific.versions",
        "[0, -2]",
    ),
]


@pytest.mark.parametrize(("text", "field", "problem"), INVALID)
def test_validation_errors_name_file_and_field(tmp_path: Path, text: str, field: str, problem: str) -> None:
    model = write_model(tmp_path, "m", {"config.pbtxt": text})
    with pytest.raises(ConfigError) as info:
        load_model_config(model)
    err = info.value
    assert (err.source, err.field) == ("m/config.pbtxt", field)
    assert problem in err.problem
    assert str(err).startswith(f"m/config.pbtxt: field '{field}': ")


@pytest.mark.parametrize(("text", "field", "problem"), INVALID)
def test_validation_errors_in_yaml_name_the_yaml_file(tmp_path: Path, text: str, field: str, problem: str) -> None:
    config = text_format.Parse(text, mc.ModelConfig())
    model = write_model(tmp_path, "m", {"config.yml": yaml.safe_dump(config_to_json(config))})
    with pytest.raises(ConfigError) as info:
        load_model_config(model)
    assert (info.value.source, info.value.field) == ("m/config.yml", field)


VALID = [
    pytest.param(sub('name: "m"\n', ""), id="name-from-folder"),
    pytest.param(sub(*NO_BATCH), id="no-batching"),
    pytest.param(sub(DIMS_B, ""), id="batch-of-scalars"),
    pytest.param(sub(*NO_BATCH, DIMS_B, "dims: [ 1 ] reshape { shape: [ ] }"), id="scalar-reshape"),
    pytest.param(sub(DIMS_B, "dims: [ -1, 2, 3 ] reshape { shape: [ -1, 6 ] }"), id="reshape-variable"),
    pytest.param(sub('backend: "python"\n', ""), id="no-backend"),
    pytest.param(with_fields("instance_group [ { count: 0 kind: KIND_GPU gpus: [ 0, 1 ] } ]"), id="count-zero"),
    pytest.param(
        with_fields(
            f"{DYN} {{ preferred_batch_size: [ 1, 8 ] priority_levels: 2 default_priority_level: 2\n"
            "  priority_queue_policy { key: 1 value { } } }"
        ),
        id="priorities",
    ),
    pytest.param(with_fields("sequence_batching { }", sub(*NO_BATCH)), id="sequence-no-batch"),
    pytest.param(with_fields("version_policy { all { } }"), id="all-versions"),
]


@pytest.mark.parametrize("text", VALID)
def test_valid_configs_load(tmp_path: Path, text: str) -> None:
    config = load_model_config(write_model(tmp_path, "m", {"config.pbtxt": text}))
    assert config.name == "m"


def test_validate_directly_fills_the_name_only() -> None:
    config = text_format.Parse(BASE.replace('name: "m"\n', ""), mc.ModelConfig())
    validate(config, "m/config.pbtxt", "m")
    expected = text_format.Parse(BASE, mc.ModelConfig())
    assert config == expected


# ---------------------------------------------------------------------------------------------
# helpers


def test_full_shape() -> None:
    config = text_format.Parse(BASE, mc.ModelConfig())
    assert full_shape(config, config.input[1]) == [-1, -1, 2]
    assert full_shape(config, config.output[0]) == [-1, 4]
    config.max_batch_size = 0
    assert full_shape(config, config.input[1]) == [-1, 2]
    assert full_shape(config, config.output[0]) == [4]


def test_normalize_fills_triton_defaults() -> None:
    config = text_format.Parse(BASE, mc.ModelConfig())
    normalize(config)
    assert config.version_policy.WhichOneof("policy_choice") == "latest"
    assert config.version_policy.latest.num_versions == 1
    assert len(config.instance_group) == 1
    group = config.instance_group[0]
    assert (group.name, group.count, group.kind) == ("m_0", 1, mc.ModelInstanceGroup.KIND_AUTO)
    assert normalize(config) == config  # idempotent


def test_normalize_keeps_what_is_given() -> None:
    text = with_fields("""\
        version_policy { latest { num_versions: 3 } }
        instance_group [ { name: "gpu" kind: KIND_GPU count: 0 }, { kind: KIND_CPU count: 4 } ]
    """)
    config = normalize(text_format.Parse(text, mc.ModelConfig()))
    assert config.version_policy.latest.num_versions == 3
    assert [(g.name, g.count, g.kind) for g in config.instance_group] == [
        ("gpu", 1, mc.ModelInstanceGroup.KIND_GPU),
        ("m_1", 4, mc.ModelInstanceGroup.KIND_CPU),
    ]


def test_normalize_empty_version_policy_message() -> None:
    config = text_format.Parse(with_fields("version_policy { }"), mc.ModelConfig())
    assert normalize(config).version_policy.latest.num_versions == 1


def test_config_to_json() -> None:
    config = load_model_config(DATA / "ranker_priority")
    data = config_to_json(config)
    assert data["name"] == "ranker_priority"
    assert data["max_batch_size"] == 64
    assert data["input"][1] == {"name": "candidate_ids", "data_type": "TYPE_INT64", "dims": [-1]}
    assert data["dynamic_batching"]["max_queue_delay_microseconds"] == 2000  # uint64: a number
    assert data["dynamic_batching"]["priority_queue_policy"]["1"]["timeout_action"] == "DELAY"
    assert data["instance_group"][0]["kind"] == "KIND_CPU"
    assert data["parameters"]["latency_target_ms"] == {"string_value": "20"}
    assert data["version_policy"] == {"latest": {"num_versions": 1}}


def test_config_to_json_include_defaults() -> None:
    config = text_format.Parse(BASE, mc.ModelConfig())
    data = config_to_json(config, include_defaults=True)
    assert data["platform"] == ""
    assert data["input"][0]["format"] == "FORMAT_NONE"
    assert data["input"][0]["is_shape_tensor"] is False
    assert "platform" not in config_to_json(config)
