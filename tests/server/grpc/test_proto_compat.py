"""Our .proto files against tritonclient's generated modules (the oracle for Triton's protocol).

Every message, nested message, enum, map and oneof must match in names, numbers, labels and
types; only the package differs (``clipperd.inference`` instead of ``inference``)."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import descriptor as d
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as triton_mc
from tritonclient.grpc import service_pb2 as triton_svc

from backends.proto import model_config_pb2 as mc
from server.proto import grpc_service_pb2 as svc

OURS_PKG = "clipperd.inference."
THEIRS_PKG = "inference."

PAIRS = [(mc.DESCRIPTOR, triton_mc.DESCRIPTOR), (svc.DESCRIPTOR, triton_svc.DESCRIPTOR)]


def _strip(full_name: str, pkg: str) -> str:
    assert full_name.startswith(pkg), full_name
    return full_name[len(pkg) :]


def _enum_summary(e: d.EnumDescriptor) -> list[tuple[str, int]]:
    return [(v.name, v.number) for v in e.values]


def _field_summary(f: d.FieldDescriptor, pkg: str) -> tuple[Any, ...]:
    ref = f.message_type or f.enum_type
    return (
        f.name,
        f.number,
        f.is_repeated,
        f.is_required,
        f.type,
        f.cpp_type,
        _strip(ref.full_name, pkg) if ref is not None else None,
        f.containing_oneof.name if f.containing_oneof is not None else None,
        f.has_presence,
    )


def _message_summary(m: d.Descriptor, pkg: str) -> dict[str, Any]:
    """Everything that matters for the wire and text formats, package removed."""
    opts = m.GetOptions()
    return {
        "name": _strip(m.full_name, pkg),
        "map_entry": opts.map_entry,
        "fields": sorted(_field_summary(f, pkg) for f in m.fields),
        "oneofs": sorted((o.name, sorted(f.name for f in o.fields)) for o in m.oneofs),
        "enums": {e.name: _enum_summary(e) for e in m.enum_types},
        "nested": sorted(n.name for n in m.nested_types),
    }


def _all_messages(fd: d.FileDescriptor) -> dict[str, d.Descriptor]:
    out: dict[str, d.Descriptor] = {}

    def walk(m: d.Descriptor) -> None:
        out[m.name if m.containing_type is None else _qualified(m)] = m
        for n in m.nested_types:
            walk(n)

    for m in fd.message_types_by_name.values():
        walk(m)
    return out


def _qualified(m: d.Descriptor) -> str:
    parts = []
    cur: d.Descriptor | None = m
    while cur is not None:
        parts.append(cur.name)
        cur = cur.containing_type
    return ".".join(reversed(parts))


@pytest.mark.parametrize(("ours", "theirs"), PAIRS, ids=["model_config", "grpc_service"])
def test_same_message_set(ours: d.FileDescriptor, theirs: d.FileDescriptor) -> None:
    assert sorted(_all_messages(ours)) == sorted(_all_messages(theirs))
    assert ours.package == "clipperd.inference"
    assert theirs.package == "inference"


@pytest.mark.parametrize(("ours", "theirs"), PAIRS, ids=["model_config", "grpc_service"])
def test_same_top_level_enums(ours: d.FileDescriptor, theirs: d.FileDescriptor) -> None:
    assert {n: _enum_summary(e) for n, e in ours.enum_types_by_name.items()} == {
        n: _enum_summary(e) for n, e in theirs.enum_types_by_name.items()
    }


def _message_cases() -> list[Any]:
    cases = []
    for ours_fd, theirs_fd in PAIRS:
        ours_all, theirs_all = _all_messages(ours_fd), _all_messages(theirs_fd)
        for name, theirs in sorted(theirs_all.items()):
            cases.append(pytest.param(ours_all.get(name), theirs, id=name))
    return cases


@pytest.mark.parametrize(("ours", "theirs"), _message_cases())
def test_message_matches(ours: d.Descriptor | None, theirs: d.Descriptor) -> None:
    assert ours is not None, f"missing message {theirs.full_name}"
    assert _message_summary(ours, OURS_PKG) == _message_summary(theirs, THEIRS_PKG)


def test_same_service_methods() -> None:
    ours = svc.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton_svc.DESCRIPTOR.services_by_name["GRPCInferenceService"]

    def summary(s: d.ServiceDescriptor, pkg: str) -> list[tuple[str, str, str, bool, bool]]:
        return [
            (
                m.name,
                _strip(m.input_type.full_name, pkg),
                _strip(m.output_type.full_name, pkg),
                m.client_streaming,
                m.server_streaming,
            )
            for m in s.methods
        ]

    assert summary(ours, OURS_PKG) == summary(theirs, THEIRS_PKG)


FULL_CONFIG = """
name: "everything"
platform: "onnxruntime_onnx"
backend: "onnxruntime"
runtime: "libtriton_onnxruntime.so"
version_policy { specific { versions: [1, 3] } }
max_batch_size: 8
input [
  {
    name: "INPUT0" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [3, -1, -1]
    reshape { shape: [3, -1, -1] } allow_ragged_batch: true optional: true
  },
  { name: "SHAPE" data_type: TYPE_INT32 dims: [2] is_shape_tensor: true is_non_linear_format_io: true }
]
output [
  {
    name: "OUTPUT0" data_type: TYPE_FP16 dims: [1000] label_filename: "labels.txt"
    reshape { shape: [1, 1000] } is_shape_tensor: false
  }
]
batch_input [
  { kind: BATCH_ACCUMULATED_ELEMENT_COUNT target_name: "ACC" data_type: TYPE_FP32 source_input: "INPUT0" }
]
batch_output [ { target_name: "OUT" kind: BATCH_SCATTER_WITH_INPUT_SHAPE source_input: "INPUT0" } ]
optimization {
  graph { level: 1 }
  priority: PRIORITY_MAX
  cuda {
    graphs: true busy_wait_events: true output_copy_stream: true
    graph_spec [
      {
        batch_size: 4
        input { key: "INPUT0" value { dim: [3, 224, 224] } }
        graph_lower_bound { batch_size: 1 input { key: "INPUT0" value { dim: [3, 100, 100] } } }
      }
    ]
  }
  execution_accelerators {
    gpu_execution_accelerator: [
      { name: "tensorrt" parameters { key: "precision_mode" value: "FP16" } }
    ]
    cpu_execution_accelerator: [ { name: "openvino" } ]
  }
  input_pinned_memory { enable: true }
  output_pinned_memory { enable: false }
  gather_kernel_buffer_threshold: 4
  eager_batching: true
}
dynamic_batching {
  preferred_batch_size: [4, 8]
  max_queue_delay_microseconds: 100
  preserve_ordering: true
  priority_levels: 3
  default_priority_level: 2
  default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 5000
    allow_timeout_override: true max_queue_size: 16 }
  priority_queue_policy { key: 1 value { timeout_action: REJECT max_queue_size: 4 } }
}
instance_group [
  {
    name: "g0" kind: KIND_GPU count: 2 gpus: [0, 1]
    rate_limiter { resources [ { name: "R1" global: true count: 2 } ] priority: 1 }
    secondary_devices [ { kind: KIND_NVDLA device_id: 0 } ]
    profile: ["0"] passive: true host_policy: "numa0"
  }
]
default_model_filename: "model.onnx"
cc_model_filenames { key: "7.5" value: "model_t4.plan" }
metric_tags { key: "team" value: "vision" }
parameters { key: "EXECUTION_ENV_PATH" value { string_value: "$$TRITON_MODEL_DIRECTORY/env.tar.gz" } }
model_warmup [
  {
    name: "warm" batch_size: 2 count: 3
    inputs { key: "INPUT0" value { data_type: TYPE_FP32 dims: [3, 8, 8] random_data: true } }
  }
]
model_operations { op_library_filename: "libops.so" }
model_transaction_policy { decoupled: true }
model_repository_agents {
  agents [ { name: "checksum" parameters { key: "MD5:1/model.onnx" value: "abc" } } ]
}
response_cache { enable: true }
model_metrics {
  metric_control [
    { metric_identifier { family: "nv_inference_first_response_histogram_ms" }
      histogram_options { buckets: [1, 2, 4] } }
  ]
}
"""

SEQUENCE_CONFIG = """
name: "seq"
backend: "python"
max_batch_size: 4
input [ { name: "IN" data_type: TYPE_INT32 dims: [1] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [1] } ]
sequence_batching {
  max_sequence_idle_microseconds: 5000000
  oldest { max_candidate_sequences: 4 preferred_batch_size: [2] max_queue_delay_microseconds: 10
    preserve_ordering: true }
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [0, 1] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY fp32_false_true: [0, 1] } ] },
    { name: "END" control [ { kind: CONTROL_SEQUENCE_END bool_false_true: [false, true] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }
  ]
  state [
    { input_name: "INPUT_STATE" output_name: "OUTPUT_STATE" data_type: TYPE_FP32 dims: [-1]
      initial_state [ { data_type: TYPE_FP32 dims: [1] zero_data: true name: "init" } ]
      use_same_buffer_for_input_output: true use_growable_memory: true }
  ]
  iterative_sequence: true
}
"""

ENSEMBLE_CONFIG = """
name: "ens"
platform: "ensemble"
max_batch_size: 1
input [ { name: "RAW" data_type: TYPE_STRING dims: [1] } ]
output [ { name: "PROBS" data_type: TYPE_FP32 dims: [10] } ]
ensemble_scheduling {
  step [
    { model_name: "pre" model_version: -1 input_map { key: "IN" value: "RAW" }
      output_map { key: "OUT" value: "tensor" } model_namespace: "ns" },
    { model_name: "cls" model_version: 2 input_map { key: "x" value: "tensor" }
      output_map { key: "y" value: "PROBS" } }
  ]
  max_inflight_requests: 8
}
version_policy { all {} }
"""


@pytest.mark.parametrize("text", [FULL_CONFIG, SEQUENCE_CONFIG, ENSEMBLE_CONFIG], ids=["full", "seq", "ens"])
def test_model_config_round_trip_through_tritonclient(text: str) -> None:
    ours = text_format.Parse(text, mc.ModelConfig())
    theirs = triton_mc.ModelConfig.FromString(ours.SerializeToString())
    assert text_format.MessageToString(theirs) == text_format.MessageToString(ours)
    # and back again, through the oracle's own text parser
    parsed = text_format.Parse(text, triton_mc.ModelConfig())
    assert mc.ModelConfig.FromString(parsed.SerializeToString()) == ours


def test_service_messages_round_trip_through_tritonclient() -> None:
    req = svc.ModelInferRequest(model_name="m", model_version="1", id="42")
    req.parameters["priority"].uint64_param = 2
    inp = req.inputs.add(name="IN", datatype="FP32", shape=[1, 2])
    inp.parameters["binary_data_size"].int64_param = 8
    inp.contents.fp32_contents.extend([1.0, 2.0])
    req.outputs.add(name="OUT").parameters["binary_data"].bool_param = True
    req.raw_input_contents.append(b"\x00" * 8)
    theirs = triton_svc.ModelInferRequest.FromString(req.SerializeToString())
    assert text_format.MessageToString(theirs) == text_format.MessageToString(req)

    cfg = svc.ModelConfigResponse(config=text_format.Parse(SEQUENCE_CONFIG, mc.ModelConfig()))
    theirs_cfg = triton_svc.ModelConfigResponse.FromString(cfg.SerializeToString())
    assert text_format.MessageToString(theirs_cfg) == text_format.MessageToString(cfg)

    stats = svc.ModelStatisticsResponse()
    ms = stats.model_stats.add(name="m", version="1", last_inference=123, inference_count=4)
    ms.inference_stats.success.count = 4
    ms.batch_stats.add(batch_size=2).compute_infer.ns = 10
    ms.memory_usage.add(type="GPU", id=0, byte_size=1)
    ms.response_stats["0"].success.count = 1
    theirs_stats = triton_svc.ModelStatisticsResponse.FromString(stats.SerializeToString())
    assert text_format.MessageToString(theirs_stats) == text_format.MessageToString(stats)
