"""KServe v2 ``inference.GRPCInferenceService`` on grpc.aio: a thin adapter over the DataPlane.

Handlers are registered under the wire name by hand (not through protoc's servicer stubs): our
messages live in the proto package ``clipperd.inference`` so they can share a process with
tritonclient's ``inference.*`` classes, while the service keeps the name clients call."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError

from backends.common.errors import ClipperdError, InvalidArgument, Unimplemented
from server.dataplane import DataPlane
from server.grpc_codec import decode_request, encode_response
from server.grpc_health import HEALTH_SERVICE, health_handlers
from server.grpc_native import GrpcServer
from server.grpc_stats import encode_statistics
from server.http2_limits import Http2Limits
from server.proto import grpc_service_pb2 as pb
from server.status import GRPC_STATUS

log = logging.getLogger(__name__)
SERVICE = "inference.GRPCInferenceService"

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
S = TypeVar("S")
Q = TypeVar("Q")
R = TypeVar("R")


def guarded(handler: Callable[[S, Q, Any], Awaitable[R]]) -> Callable[[S, Q, Any], Awaitable[R]]:
    """Turns errors into statuses: ours keep their code and message, anything else is INTERNAL
    with nothing leaked (the details go to the log)."""

    @functools.wraps(handler)
    async def wrapper(self: S, request: Q, context: Any) -> R:
        try:
            if isinstance(request, Undecodable):
                raise InvalidArgument(f"request is not a valid {request.message_type}")
            return await handler(self, request, context)
        except ClipperdError as error:
            await context.abort(GRPC_STATUS[error.code], error.message)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("internal error in %s", getattr(handler, "__name__", "a handler"))
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        raise AssertionError("context.abort returned")  # abort always raises

    return wrapper


class InferenceService:
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    @guarded
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.plane.live())

    @guarded
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.plane.ready())

    @guarded
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version))

    @guarded
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        plane = self.plane
        return pb.ServerMetadataResponse(name=plane.name, version=plane.version, extensions=plane.extensions)

    @guarded
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        meta = self.plane.model_metadata(request.name, request.version)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta.name,
            versions=meta.versions,
            platform=meta.platform,
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.inputs],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.outputs],
        )

    @guarded
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(config=self.plane.model_config(request.name, request.version))

    @guarded
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Any) -> pb.ModelStatisticsResponse:
        rows = self.plane.statistics(request.name, request.version)
        return pb.ModelStatisticsResponse(model_stats=[encode_statistics(r) for r in rows])

    @guarded
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        return encode_response(await self.plane.infer(decode_request(request)))

    async def ModelStreamInfer(
        self, requests: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests of one stream run concurrently; each answer is sent as soon as it is ready and
        carries the request's id (errors travel in ``error_message``; the stream stays open)."""
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        reader = asyncio.get_running_loop().create_task(self._read_stream(requests, answers))
        try:
            while (answer := await answers.get()) is not None:
                yield answer
        finally:
            reader.cancel()

    async def _read_stream(self, requests: AsyncIterator[pb.ModelInferRequest], answers: asyncio.Queue[Any]) -> None:
        tasks: set[asyncio.Task[None]] = set()
        try:
            async for request in requests:
                task = asyncio.get_running_loop().create_task(self._stream_one(request, answers))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            answers.put_nowait(None)

    async def _stream_one(self, request: pb.ModelInferRequest, answers: asyncio.Queue[Any]) -> None:
        if isinstance(request, Undecodable):
            message = f"request is not a valid {request.message_type}"
            answers.put_nowait(pb.ModelStreamInferResponse(error_message=message))
            return
        try:
            response = encode_response(await self.plane.infer(decode_request(request)))
            answers.put_nowait(pb.ModelStreamInferResponse(infer_response=response))
        except ClipperdError as error:
            echo = pb.ModelInferResponse(
                model_name=request.model_name, model_version=request.model_version, id=request.id
            )
            answers.put_nowait(pb.ModelStreamInferResponse(error_message=error.message, infer_response=echo))
        except Exception:
            log.exception("internal error in a stream request")
            answers.put_nowait(pb.ModelStreamInferResponse(error_message="internal error"))

    @guarded
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:
        self._check_repository(request.repository_name)
        rows = self.plane.repository_index(request.ready)
        index = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(
            models=[index(name=r.name, version=r.version, state=r.state, reason=r.reason) for r in rows]
        )

    @guarded
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        self._check_repository(request.repository_name)
        if request.parameters:
            raise Unimplemented(
                "load parameters (config or file overrides) are not accepted: change the model's files "
                "in the repository and load it again"
            )
        await self.plane.load_model(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @guarded
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        self._check_repository(request.repository_name)
        await self.plane.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    @guarded
    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: Any
    ) -> pb.SystemSharedMemoryStatusResponse:
        region = pb.SystemSharedMemoryStatusResponse.RegionStatus
        response = pb.SystemSharedMemoryStatusResponse()
        for r in self.plane.shared_memory.status(request.name):
            response.regions[r.name].CopyFrom(region(name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size))
        return response

    @guarded
    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: Any
    ) -> pb.SystemSharedMemoryRegisterResponse:
        self.plane.shared_memory.register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @guarded
    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: Any
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        self.plane.shared_memory.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    @guarded
    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest, context: Any
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        """No CUDA region can be registered here, so there is none to unregister: success, as Triton
        answers for a name it does not hold (clients such as perf_analyzer unregister both kinds)."""
        return pb.CudaSharedMemoryUnregisterResponse()

    def _check_repository(self, name: str) -> None:
        if name and name != self.plane.repository.root.name:
            raise InvalidArgument(f"unknown model repository {name[:64]!r}: this server has one, unnamed")


_UNIMPLEMENTED = {
    "CudaSharedMemoryStatus": "CUDA shared memory",
    "CudaSharedMemoryRegister": "CUDA shared memory",
    "TraceSetting": "trace settings",
    "LogSettings": "log settings",
}


def _unimplemented(feature: str) -> Handler:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{feature} is not supported by this server")

    return handler


class Undecodable:
    """What the deserializer hands over for bytes that are not the method's message: the
    handler answers INVALID_ARGUMENT (grpc itself would answer UNKNOWN and log a traceback)."""

    def __init__(self, message_type: str) -> None:
        self.message_type = message_type


def _lenient(message_class: Any) -> Callable[[bytes], Any]:
    undecodable = Undecodable(message_class.DESCRIPTOR.name)

    def deserialize(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except DecodeError:
            return undecodable

    return deserialize


def _message_types(method: str) -> tuple[Any, Any]:
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    rpc = service.methods_by_name[method]
    request_class = getattr(pb, rpc.input_type.name)
    response_class = getattr(pb, rpc.output_type.name)
    return request_class, response_class


def method_handlers(service: InferenceService) -> dict[str, grpc.RpcMethodHandler]:
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name:
        request_class, response_class = _message_types(method)
        codec = {
            "request_deserializer": _lenient(request_class),
            "response_serializer": response_class.SerializeToString,
        }
        if method == "ModelStreamInfer":
            handlers[method] = grpc.stream_stream_rpc_method_handler(service.ModelStreamInfer, **codec)
        elif method in _UNIMPLEMENTED:
            handlers[method] = grpc.unary_unary_rpc_method_handler(_unimplemented(_UNIMPLEMENTED[method]), **codec)
        else:
            handlers[method] = grpc.unary_unary_rpc_method_handler(getattr(service, method), **codec)
    return handlers


@dataclass(frozen=True)
class GrpcOptions:
    max_message_bytes: int
    bdp_probe: bool  # HTTP/2 PINGs that size flow-control windows: CPU on every call
    lookahead_bytes: int  # each stream's flow-control window (fixed when bdp_probe is off)
    frontend: str = "native"  # or "grpcio" (grpc.aio)
    http2: Http2Limits = field(
        default_factory=Http2Limits
    )  # timeouts and connection limits (grpcio takes the timeouts)


class GrpcFrontend(Protocol):
    async def stop(self, grace: float) -> None: ...


async def start_grpc_server(plane: DataPlane, host: str, port: int, opts: GrpcOptions) -> tuple[GrpcFrontend, int]:
    """The gRPC server of ``opts.frontend``, started; returns it and the port it bound."""
    if opts.frontend == "native":
        services = {SERVICE: method_handlers(InferenceService(plane)), HEALTH_SERVICE: health_handlers(plane, SERVICE)}
        native = GrpcServer(services, opts.max_message_bytes, opts.lookahead_bytes)
        native.http2.limits = opts.http2
        return native, await native.start(host, port)
    server, bound = build_grpc_server(plane, f"{_bracketed(host)}:{port}", opts)
    await server.start()
    return server, bound


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def build_grpc_server(plane: DataPlane, address: str, opts: GrpcOptions) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server for ``address`` (host:port); returns it and the port it bound."""
    options = [
        ("grpc.max_receive_message_length", opts.max_message_bytes),
        ("grpc.max_send_message_length", opts.max_message_bytes),
        ("grpc.so_reuseport", 0),  # a port already taken must fail, not be shared silently
        ("grpc.http2.bdp_probe", int(opts.bdp_probe)),
        ("grpc.http2.lookahead_bytes", opts.lookahead_bytes),
        ("grpc.server_handshake_timeout_ms", int(opts.http2.handshake_timeout_s * 1000)),
        ("grpc.max_connection_idle_ms", int(opts.http2.idle_timeout_s * 1000)),
    ]
    server = grpc.aio.server(options=options)
    handlers = method_handlers(InferenceService(plane))
    if hasattr(server, "add_registered_method_handlers"):
        server.add_registered_method_handlers(SERVICE, handlers)
    else:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    health = health_handlers(plane, SERVICE)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(HEALTH_SERVICE, health),))
    port = server.add_insecure_port(address)
    return server, port
