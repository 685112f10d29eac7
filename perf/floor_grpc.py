"""The floor: the least a KServe v2 gRPC server in Python can do on this machine.

    python perf/floor_grpc.py [--host 127.0.0.1] [--port 38001]

grpc.aio on uvloop, one model (identity_fp32: FP32 INPUT0 -> OUTPUT0, dims [-1, 16],
max_batch_size 64), the project's own protobuf messages, and nothing else: ModelInfer echoes
the first raw input back as OUTPUT0 without validating it, without batching and without
statistics. ServerLive/Ready, ModelReady, ServerMetadata, ModelMetadata and ModelConfig answer
what perf_analyzer and tritonclient ask before they infer. Whatever clipperd does beyond this
(parsing and checking the request, scheduling, batching, the model, statistics) shows up as
the distance to this server in perf/side_by_side.py; a real server cannot beat it by much."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere; the messages live at the root

from backends.proto import model_config_pb2 as mc  # noqa: E402
from server.proto import grpc_service_pb2 as pb  # noqa: E402

MODEL = "identity_fp32"
DIM = 16
MAX_BATCH = 64
SERVICE = "inference.GRPCInferenceService"

_LIVE = pb.ServerLiveResponse(live=True)
_READY = pb.ServerReadyResponse(ready=True)
_MODEL_READY = pb.ModelReadyResponse(ready=True)
_MODEL_NOT_READY = pb.ModelReadyResponse(ready=False)
_SERVER_METADATA = pb.ServerMetadataResponse(name="clipperd-floor", version="0", extensions=[])
_TENSOR = pb.ModelMetadataResponse.TensorMetadata
_MODEL_METADATA = pb.ModelMetadataResponse(
    name=MODEL,
    versions=["1"],
    platform="python",
    inputs=[_TENSOR(name="INPUT0", datatype="FP32", shape=[-1, DIM])],
    outputs=[_TENSOR(name="OUTPUT0", datatype="FP32", shape=[-1, DIM])],
)
_MODEL_CONFIG = pb.ModelConfigResponse(
    config=mc.ModelConfig(
        name=MODEL,
        backend="python",
        max_batch_size=MAX_BATCH,
        input=[mc.ModelInput(name="INPUT0", data_type=mc.TYPE_FP32, dims=[DIM])],
        output=[mc.ModelOutput(name="OUTPUT0", data_type=mc.TYPE_FP32, dims=[DIM])],
    )
)


async def server_live(request: Any, context: Any) -> Any:
    return _LIVE


async def server_ready(request: Any, context: Any) -> Any:
    return _READY


async def model_ready(request: Any, context: Any) -> Any:
    return _MODEL_READY if request.name == MODEL else _MODEL_NOT_READY


async def server_metadata(request: Any, context: Any) -> Any:
    return _SERVER_METADATA


async def model_metadata(request: Any, context: Any) -> Any:
    if request.name != MODEL:
        await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model: '{request.name}'")
    return _MODEL_METADATA


async def model_config(request: Any, context: Any) -> Any:
    if request.name != MODEL:
        await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model: '{request.name}'")
    return _MODEL_CONFIG


async def model_infer(request: Any, context: Any) -> Any:
    # echo: no checks of names, types or sizes; the first input comes back as OUTPUT0
    output = pb.ModelInferResponse.InferOutputTensor(name="OUTPUT0", datatype="FP32", shape=request.inputs[0].shape)
    return pb.ModelInferResponse(
        model_name=MODEL,
        model_version="1",
        id=request.id,
        outputs=[output],
        raw_output_contents=request.raw_input_contents[:1],
    )


Handler = Callable[[Any, Any], Awaitable[Any]]
METHODS: dict[str, tuple[Handler, Any, Any]] = {
    "ServerLive": (server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": (model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": (server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": (model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelConfig": (model_config, pb.ModelConfigRequest, pb.ModelConfigResponse),
    "ModelInfer": (model_infer, pb.ModelInferRequest, pb.ModelInferResponse),
}


def generic_handler() -> Any:
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            function,
            request_deserializer=request_type.FromString,
            response_serializer=response_type.SerializeToString,
        )
        for name, (function, request_type, response_type) in METHODS.items()
    }
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


async def serve(host: str, port: int) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((generic_handler(),))
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"floor: KServe v2 gRPC on {host}:{bound}, model {MODEL}", flush=True)
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=38001)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
