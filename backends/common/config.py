"""Loading, validating and normalizing model configurations (``<model>/config.pbtxt``).

A configuration is Triton's ``ModelConfig`` (our ``clipperd.inference.ModelConfig``, the same
schema), read from protobuf text format (``config.pbtxt``) or from YAML with the same field names
(``config.yaml`` / ``config.yml``). Every problem is a :class:`ConfigError` naming the file
(relative to the repository, ``<model>/config.pbtxt``) and the field (``input[1].dims``).

Repository scanning lives elsewhere (``server/core/repository.py``); this module reads one folder.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import descriptor as _descriptor
from google.protobuf import json_format, text_format

from backends.common.errors import ConfigError
from backends.proto import model_config_pb2 as mc

PBTXT = "config.pbtxt"
YAML_NAMES = ("config.yaml", "config.yml")
ENSEMBLE_PLATFORM = "ensemble"

Tensor = mc.ModelInput | mc.ModelOutput

__all__ = [
    "PBTXT",
    "YAML_NAMES",
    "config_to_json",
    "full_shape",
    "is_ensemble",
    "load_model_config",
    "normalize",
    "parse_pbtxt",
    "parse_yaml",
    "validate",
]


# ---------------------------------------------------------------------------------------------
# loading


def load_model_config(
    model_dir: Path, complete: Callable[[mc.ModelConfig, Path], None] | None = None
) -> mc.ModelConfig:
    """Read, validate and normalize the configuration of the model in ``model_dir``.

    An empty ``name`` is filled from the folder name (as Triton does); defaults are filled by
    :func:`normalize`. Raises :class:`ConfigError` when there is no configuration file, when
    there are several, when it does not parse, or when it is invalid. ``complete`` may fill the
    inputs and outputs a config leaves out from the model file (auto-completion)."""
    folder = model_dir.name
    path = _config_file(model_dir)
    source = f"{folder}/{path.name}"
    text = _read_text(path, source)
    config = parse_pbtxt(text, source) if path.name == PBTXT else parse_yaml(text, source)
    if complete is not None:
        if not config.name:
            config.name = folder
        complete(config, model_dir)  # the model file fills what the config leaves out
    validate(config, source, folder)
    return normalize(config)


def _config_file(model_dir: Path) -> Path:
    folder = model_dir.name
    found = [model_dir / n for n in (PBTXT, *YAML_NAMES) if (model_dir / n).is_file()]
    if not found:
        names = " or ".join((PBTXT, *YAML_NAMES))
        raise ConfigError(folder, "", f"no model configuration: expected {names}")
    if len(found) > 1:
        names = " and ".join(f"{folder}/{p.name}" for p in found)
        raise ConfigError(folder, "", f"several model configurations ({names}); keep exactly one")
    return found[0]


def _read_text(path: Path, source: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, "", f"cannot read the file: {exc}") from exc


def parse_pbtxt(text: str, source: str) -> mc.ModelConfig:
    """Parse protobuf text format; parse errors become ConfigError with ``line:column``."""
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as exc:
        raise ConfigError(source, "", f"cannot parse: {exc}") from exc


def parse_yaml(text: str, source: str) -> mc.ModelConfig:
    """Parse YAML with the ModelConfig field names; enum values by name (TYPE_FP32) or number.

    Scalars YAML types on its own (``7.5`` as a map key, ``1024`` as a string parameter value)
    are turned back into strings where the schema wants a string."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, "", f"cannot parse: {_yaml_error(exc)}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, "", "cannot parse: the top level must be a mapping of fields")
    try:
        return json_format.ParseDict(_coerce_message(data, mc.ModelConfig.DESCRIPTOR), mc.ModelConfig())
    except json_format.ParseError as exc:
        raise ConfigError(source, "", f"cannot parse: {exc}") from exc


def _yaml_error(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return str(problem)
    return f"{mark.line + 1}:{mark.column + 1} : {problem}"


def _coerce_message(data: Any, desc: _descriptor.Descriptor) -> Any:
    if not isinstance(data, dict):
        return data
    fields = {**desc.fields_by_camelcase_name, **desc.fields_by_name}
    return {k: _coerce_field(v, fields[k]) if k in fields else v for k, v in data.items()}


def _coerce_field(value: Any, field: _descriptor.FieldDescriptor) -> Any:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        if not isinstance(value, dict):
            return value
        key_f, val_f = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
        return {_coerce_scalar(k, key_f): _coerce_single(v, val_f) for k, v in value.items()}
    if field.is_repeated and isinstance(value, list):
        return [_coerce_single(v, field) for v in value]
    return _coerce_single(value, field)


def _coerce_single(value: Any, field: _descriptor.FieldDescriptor) -> Any:
    if field.message_type is not None:
        return _coerce_message(value, field.message_type)
    return _coerce_scalar(value, field)


def _coerce_scalar(value: Any, field: _descriptor.FieldDescriptor) -> Any:
    if field.type != _descriptor.FieldDescriptor.TYPE_STRING:
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


# ---------------------------------------------------------------------------------------------
# validation


def validate(config: mc.ModelConfig, source: str, folder_name: str) -> None:
    """Raise ConfigError(source, field, problem) for the first problem found.

    An empty ``name`` is filled with ``folder_name`` (Triton does the same), the only change
    made to ``config``. An empty platform and backend are accepted: the caller decides from the
    model files."""
    if not config.name:
        config.name = folder_name
    if config.name != folder_name:
        raise ConfigError(source, "name", f"'{config.name}' does not match the model folder '{folder_name}'")
    if config.max_batch_size < 0:
        raise ConfigError(source, "max_batch_size", f"must be >= 0, got {config.max_batch_size}")
    _check_tensors(config, source, "input", config.input)
    _check_tensors(config, source, "output", config.output)
    _check_instance_groups(config, source)
    _check_dynamic_batching(config, source)
    _check_version_policy(config, source)


def _check_tensors(config: mc.ModelConfig, source: str, kind: str, tensors: Sequence[Tensor]) -> None:
    if not tensors:
        raise ConfigError(source, kind, f"the model must declare at least one {kind}")
    seen: set[str] = set()
    for i, tensor in enumerate(tensors):
        where = f"{kind}[{i}]"
        if not tensor.name:
            raise ConfigError(source, f"{where}.name", f"every {kind} needs a name")
        if tensor.name in seen:
            raise ConfigError(source, f"{where}.name", f"duplicate {kind} name '{tensor.name}'")
        seen.add(tensor.name)
        _check_data_type(source, f"{where}.data_type", tensor.data_type)
        _check_dims(source, f"{where}.dims", tensor.dims)
        _check_shape_present(config, source, where, tensor)
        if tensor.HasField("reshape"):
            _check_reshape(source, where, tensor)


def _check_data_type(source: str, field: str, value: mc.DataType.ValueType) -> None:
    if value == mc.TYPE_INVALID or value not in mc.DataType.values():
        name = mc.DataType.Name(value) if value in mc.DataType.values() else str(int(value))
        raise ConfigError(source, field, f"unknown data type ({name}); use TYPE_FP32, TYPE_INT64, ...")


def _check_dims(source: str, field: str, dims: Iterable[int]) -> None:
    for j, dim in enumerate(dims):
        if dim == 0 or dim < -1:
            raise ConfigError(source, field, f"dimension {j} must be a positive size or -1, got {dim}")


def _check_shape_present(config: mc.ModelConfig, source: str, where: str, tensor: Tensor) -> None:
    if config.max_batch_size == 0 and not tensor.dims and not tensor.HasField("reshape"):
        raise ConfigError(source, f"{where}.dims", "dims must not be empty when max_batch_size is 0 (give a reshape)")


def _check_reshape(source: str, where: str, tensor: Tensor) -> None:
    shape = list(tensor.reshape.shape)
    _check_dims(source, f"{where}.reshape.shape", shape)
    dims = list(tensor.dims)
    if (-1 in dims) != (-1 in shape) or dims.count(-1) != shape.count(-1):
        raise ConfigError(
            source, f"{where}.reshape", f"variable dimensions of dims {dims} and reshape {shape} do not match"
        )
    fixed_dims = math.prod(d for d in dims if d != -1)
    fixed_shape = math.prod(d for d in shape if d != -1)
    if fixed_dims != fixed_shape:
        raise ConfigError(
            source,
            f"{where}.reshape",
            f"reshape {shape} holds {fixed_shape} elements but dims {dims} hold {fixed_dims}",
        )


def _check_instance_groups(config: mc.ModelConfig, source: str) -> None:
    for i, group in enumerate(config.instance_group):
        where = f"instance_group[{i}]"
        if group.count < 0:
            raise ConfigError(source, f"{where}.count", f"must be >= 0, got {group.count}")
        if group.kind not in mc.ModelInstanceGroup.Kind.values():
            raise ConfigError(source, f"{where}.kind", f"unknown kind {group.kind}")
        if any(gpu < 0 for gpu in group.gpus):
            raise ConfigError(source, f"{where}.gpus", f"GPU ids must be >= 0, got {list(group.gpus)}")
        if group.kind == mc.ModelInstanceGroup.KIND_CPU and group.gpus:
            raise ConfigError(source, f"{where}.gpus", "a KIND_CPU instance group must not list gpus")


def _check_dynamic_batching(config: mc.ModelConfig, source: str) -> None:
    if not config.HasField("dynamic_batching"):
        return
    batching = config.dynamic_batching
    if config.max_batch_size == 0:
        raise ConfigError(source, "dynamic_batching", "dynamic batching needs max_batch_size > 0")
    for size in batching.preferred_batch_size:
        if size <= 0 or size > config.max_batch_size:
            raise ConfigError(
                source,
                "dynamic_batching.preferred_batch_size",
                f"{size} is not in [1, max_batch_size = {config.max_batch_size}]",
            )
    _check_priorities(batching, source)


def _check_priorities(batching: mc.ModelDynamicBatching, source: str) -> None:
    levels = batching.priority_levels
    default = batching.default_priority_level
    if default > levels or (levels > 0 and default == 0):
        raise ConfigError(
            source,
            "dynamic_batching.default_priority_level",
            f"{default} is not in [1, priority_levels = {levels}]",
        )
    for level in batching.priority_queue_policy:
        if level == 0 or level > levels:
            raise ConfigError(
                source,
                f"dynamic_batching.priority_queue_policy[{level}]",
                f"priority level {level} is not in [1, priority_levels = {levels}]",
            )


def _check_version_policy(config: mc.ModelConfig, source: str) -> None:
    policy = config.version_policy
    if policy.WhichOneof("policy_choice") != "specific":
        return
    bad = [v for v in policy.specific.versions if v <= 0]
    if bad:
        raise ConfigError(source, "version_policy.specific.versions", f"versions must be >= 1, got {bad}")


# ---------------------------------------------------------------------------------------------
# helpers for the rest of the server


def full_shape(config: mc.ModelConfig, tensor: Tensor) -> list[int]:
    """The shape a client sends or receives: ``[-1] + dims`` when the model batches, else dims."""
    dims = [int(d) for d in tensor.dims]
    return [-1, *dims] if config.max_batch_size > 0 else dims


def normalize(config: mc.ModelConfig) -> mc.ModelConfig:
    """Fill the defaults Triton fills, in place; returns ``config``. Idempotent.

    - no version_policy: latest {num_versions: 1};
    - no instance_group: one group {count: 1, kind: KIND_AUTO} (not for ensembles, which run no
      instances of their own);
    - instance group count 0: 1; an unnamed group: ``<model>_<index>``."""
    if not config.HasField("version_policy") or not config.version_policy.WhichOneof("policy_choice"):
        config.version_policy.latest.num_versions = 1
    if is_ensemble(config):
        return config
    if not config.instance_group:
        config.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_AUTO)
    for i, group in enumerate(config.instance_group):
        if group.count == 0:
            group.count = 1
        if not group.name:
            group.name = f"{config.name}_{i}"
    return config


def is_ensemble(config: mc.ModelConfig) -> bool:
    """Whether the config declares an ensemble (it runs steps, not instances of its own)."""
    return config.platform == ENSEMBLE_PLATFORM or config.HasField("ensemble_scheduling")


def config_to_json(config: mc.ModelConfig, *, include_defaults: bool = False) -> dict[str, Any]:
    """The configuration as JSON (field names as in config.pbtxt, enums by name).

    64-bit integers are numbers, as in Triton's own JSON (protobuf's JSON mapping would print
    them as strings: ``"dims": ["3"]``). ``include_defaults`` also prints fields left at zero."""
    data = json_format.MessageToDict(
        config,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=include_defaults,
    )
    result: dict[str, Any] = _ints_of_message(data, mc.ModelConfig.DESCRIPTOR)
    return result


_INT64_TYPES = frozenset(
    {
        _descriptor.FieldDescriptor.CPPTYPE_INT64,
        _descriptor.FieldDescriptor.CPPTYPE_UINT64,
    }
)


def _ints_of_message(data: dict[str, Any], desc: _descriptor.Descriptor) -> dict[str, Any]:
    return {k: _ints_of_field(v, desc.fields_by_name[k]) if k in desc.fields_by_name else v for k, v in data.items()}


def _ints_of_field(value: Any, field: _descriptor.FieldDescriptor) -> Any:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        val_f = field.message_type.fields_by_name["value"]
        return {k: _ints_of_single(v, val_f) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints_of_single(v, field) for v in value]
    return _ints_of_single(value, field)


def _ints_of_single(value: Any, field: _descriptor.FieldDescriptor) -> Any:
    if field.message_type is not None:
        return _ints_of_message(value, field.message_type)
    if field.cpp_type in _INT64_TYPES and isinstance(value, str):
        return int(value)
    return value
