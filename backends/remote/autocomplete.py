"""Config auto-completion from the remote model itself: a remote model's config may leave out
its inputs, outputs and max_batch_size, which the first endpoint that answers then tells
(ModelConfig where the server has it, as clipperd and Triton do; else ModelMetadata, as every
KServe v2 server does). This runs while the config loads, on a worker thread (the repository
loads configs off the event loop), with blocking clients bounded by ``timeout_ms``."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

import grpc

from backends.common import datatypes
from backends.common.errors import ClipperdError, Unavailable
from backends.common.parameters import Parameters
from backends.proto import grpc_service_pb2 as pb
from backends.proto import model_config_pb2 as mc
from backends.remote.settings import MAX_ENDPOINTS, RemoteSettings, remote_settings

_SERVICE = "/inference.GRPCInferenceService/"
_MAX_METADATA_BYTES = 16 * 1024 * 1024  # a model's metadata or config; far above any real one


def complete(config: mc.ModelConfig) -> None:
    """Fills the inputs, outputs (and max_batch_size, when the config gives no inputs) that
    ``config`` leaves out; Unavailable when no endpoint answers."""
    if config.input and config.output:
        return
    settings = remote_settings(Parameters.of(config))
    remote, errors = None, []
    for address in _addresses(settings):
        try:
            remote = _fetch(settings, address)
            break
        except ClipperdError as error:
            errors.append(f"{address}: {error.message}")
    if remote is None:
        raise Unavailable(
            f"model '{config.name}': the config leaves out its inputs or outputs and no remote endpoint "
            f"answered for the model's metadata ({'; '.join(errors[:4])})"
        )
    _merge(config, remote)


def _merge(config: mc.ModelConfig, remote: mc.ModelConfig) -> None:
    if not config.input and config.max_batch_size == 0:
        config.max_batch_size = remote.max_batch_size
    if not config.input:
        for tensor in remote.input:
            config.input.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims, optional=tensor.optional)
    if not config.output:
        for output in remote.output:
            config.output.add(name=output.name, data_type=output.data_type, dims=output.dims)


def _addresses(settings: RemoteSettings) -> list[str]:
    if not settings.resolve:
        return [str(a) for a in settings.addresses]
    name = settings.addresses[0]
    try:
        infos = socket.getaddrinfo(name.host, name.port, type=socket.SOCK_STREAM)
    except OSError as error:
        raise Unavailable(f"model '{settings.model}': remote endpoints '{name}' do not resolve: {error}") from None
    return sorted({f"{info[4][0]}:{name.port}" for info in infos})[:MAX_ENDPOINTS]


def _fetch(settings: RemoteSettings, address: str) -> mc.ModelConfig:
    if settings.protocol == "http":
        return _fetch_http(settings, address)
    return _fetch_grpc(settings, address)


def _fetch_grpc(settings: RemoteSettings, address: str) -> mc.ModelConfig:
    options = [("grpc.max_receive_message_length", _MAX_METADATA_BYTES)]
    with grpc.insecure_channel(address, options=options) as channel:
        name, version = settings.remote_model, settings.remote_version
        try:
            call = channel.unary_unary(
                _SERVICE + "ModelConfig",
                request_serializer=pb.ModelConfigRequest.SerializeToString,
                response_deserializer=pb.ModelConfigResponse.FromString,
            )
            return call(pb.ModelConfigRequest(name=name, version=version), timeout=settings.timeout_s).config  # type: ignore[no-any-return]
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise Unavailable(f"{error.code().name}: {error.details()}") from None
        try:
            metadata = channel.unary_unary(
                _SERVICE + "ModelMetadata",
                request_serializer=pb.ModelMetadataRequest.SerializeToString,
                response_deserializer=pb.ModelMetadataResponse.FromString,
            )(pb.ModelMetadataRequest(name=name, version=version), timeout=settings.timeout_s)
        except grpc.RpcError as error:
            raise Unavailable(f"{error.code().name}: {error.details()}") from None
    tensors = {
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in metadata.inputs],
        "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in metadata.outputs],
    }
    return _from_metadata(tensors)


def _fetch_http(settings: RemoteSettings, address: str) -> mc.ModelConfig:
    model = f"http://{address}/v2/models/{quote(settings.remote_model, safe='')}"
    if settings.remote_version:
        model += f"/versions/{settings.remote_version}"
    found = _get_json(f"{model}/config", settings.timeout_s, missing_ok=True)
    if isinstance(found, dict) and "input" in found:
        return _from_config_json(found)
    return _from_metadata(_get_json(model, settings.timeout_s))


def _get_json(url: str, timeout_s: float, missing_ok: bool = False) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body = response.read(_MAX_METADATA_BYTES + 1)
    except urllib.error.HTTPError as error:
        if missing_ok and error.code in (400, 404):
            return None
        raise Unavailable(f"HTTP {error.code}") from None
    except (OSError, ValueError) as error:
        raise Unavailable(f"{type(error).__name__}: {error}") from None
    if len(body) > _MAX_METADATA_BYTES:
        raise Unavailable(f"the answer exceeds {_MAX_METADATA_BYTES} bytes")
    try:
        return json.loads(body)
    except ValueError:
        raise Unavailable("the answer is not JSON") from None


def _from_config_json(data: dict[str, Any]) -> mc.ModelConfig:
    """Triton's (and clipperd's) /config JSON: the fields this needs, with data types by name."""
    config = mc.ModelConfig(max_batch_size=int(data.get("max_batch_size", 0)))
    for kind, target in (("input", config.input), ("output", config.output)):
        for tensor in data.get(kind) or []:
            dtype = mc.DataType.Value(str(tensor.get("data_type", "TYPE_INVALID")))
            added = target.add(name=str(tensor["name"]), data_type=dtype, dims=[int(d) for d in tensor.get("dims", [])])
            if kind == "input" and tensor.get("optional"):
                added.optional = True  # type: ignore[union-attr]
    return config


def _from_metadata(data: Any) -> mc.ModelConfig:
    """ModelMetadata alone: shapes as they are (a leading -1 stays a dimension; the front end
    then passes whole requests through unbatched)."""
    if not isinstance(data, dict):
        raise Unavailable("the metadata is not a JSON object")
    config = mc.ModelConfig()
    for kind, target in (("inputs", config.input), ("outputs", config.output)):
        for tensor in data.get(kind) or []:
            wire = datatypes.BY_WIRE.get(str(tensor.get("datatype")))
            if wire is None:
                raise Unavailable(f"{kind} tensor '{str(tensor.get('name'))[:64]}' has an unknown data type")
            target.add(name=str(tensor["name"]), data_type=mc.DataType.Value(wire.config), dims=tensor["shape"])
    return config
