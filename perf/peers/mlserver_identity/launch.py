"""Peer: Seldon MLServer 1.7 serving identity_fp32 (FP32 INPUT0 -> OUTPUT0, dims [-1, 16]) with
its adaptive batching (up to 64 requests, 1 ms), from this folder (settings.json,
identity_fp32/model-settings.json).

    ~/.cache/clipperd-bench/mlserver/bin/python perf/peers/mlserver_identity/launch.py [FOLDER]

Listens on 127.0.0.1: HTTP 28080, gRPC 28081 (metrics 28082). Runs in the MLServer virtual
environment (perf/install_peers.sh), not the project's. MLServer's Prometheus files go to a
temporary folder ($MLSERVER_METRICS_DIR when set), not to ./.metrics.

MLServer implements the KServe v2 calls but not Triton's ModelConfig extension, and
perf_analyzer asks for the model configuration before its first request (for max_batch_size).
This launcher is `mlserver start FOLDER` plus that one RPC: when MLServer registers its
inference service on the gRPC server, a generic handler for ModelConfig is added beside it. The
answer (name, max_batch_size 64, the input and output) is encoded here by hand: importing a
second `inference` protobuf package next to MLServer's own would clash in the descriptor pool.
Inference traffic is untouched."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

MODEL = "identity_fp32"
DIM = 16
MAX_BATCH = 64
TYPE_FP32 = 11  # inference.DataType.TYPE_FP32
SERVICE = "inference.GRPCInferenceService"


# ---- protobuf wire format, just what ModelConfigRequest/ModelConfigResponse need ----


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 values take ten bytes, two's complement
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _packed_ints(number: int, values: list[int]) -> bytes:
    return _len_field(number, b"".join(_varint(v) for v in values))


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def requested_name(request: bytes) -> str:
    """Field 1 (name) of an encoded inference.ModelConfigRequest; '' when absent."""
    pos = 0
    while pos < len(request):
        key, pos = _read_varint(request, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _read_varint(request, pos)
        elif wire == 2:
            size, pos = _read_varint(request, pos)
            if number == 1:
                return request[pos : pos + size].decode()
            pos += size
        else:  # nothing else appears in a ModelConfigRequest
            raise ValueError(f"unexpected wire type {wire}")
    return ""


def model_config_response(name: str, max_batch: int = MAX_BATCH, in_dim: int = DIM, out_dim: int = DIM) -> bytes:
    """inference.ModelConfigResponse{config: ModelConfig{name, max_batch_size, input, output}}."""
    tensor_input = _len_field(1, b"INPUT0") + _int_field(2, TYPE_FP32) + _packed_ints(4, [in_dim])  # ModelInput
    tensor_output = _len_field(1, b"OUTPUT0") + _int_field(2, TYPE_FP32) + _packed_ints(3, [out_dim])  # ModelOutput
    config = (
        _len_field(1, name.encode())
        + _int_field(4, max_batch)
        + _len_field(5, tensor_input)
        + _len_field(6, tensor_output)
    )
    return _len_field(1, config)


def add_model_config_rpc(model: str, answer: bytes) -> None:
    """Adds ModelConfig, answering ``answer`` for ``model``, when MLServer registers its service."""
    import grpc
    import mlserver.grpc.server as grpc_server  # type: ignore[import-not-found]

    async def model_config(request: bytes, context: Any) -> bytes:
        name = requested_name(request)
        if name != model:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"Model {name} not found")
        return answer

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"ModelConfig": grpc.unary_unary_rpc_method_handler(model_config)}
    )
    register = grpc_server.add_GRPCInferenceServiceServicer_to_server

    def register_with_model_config(servicer: Any, server: Any) -> None:
        register(servicer, server)
        server.add_generic_rpc_handlers((handler,))

    grpc_server.add_GRPCInferenceServiceServicer_to_server = register_with_model_config


def _metrics_dir_outside_cwd() -> None:
    # MLServer keeps its multiprocess Prometheus files in ./.metrics unless told otherwise
    if "MLSERVER_METRICS_DIR" not in os.environ:
        folder = tempfile.mkdtemp(prefix="mlserver-metrics-")
        os.environ["MLSERVER_METRICS_DIR"] = folder
        atexit.register(shutil.rmtree, folder, ignore_errors=True)


def main() -> None:
    folder = sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parent)
    _metrics_dir_outside_cwd()
    add_model_config_rpc(MODEL, model_config_response(MODEL))
    from mlserver.cli import main as mlserver_main  # type: ignore[import-not-found]

    sys.argv = ["mlserver", "start", folder]
    sys.exit(mlserver_main())


if __name__ == "__main__":
    main()
