"""KServe v2 ``inference.GRPCInferenceService`` on grpc.aio: a thin adapter over the DataPlane.

Handlers are registered under the wire name by hand (not through protoc's servicer stubs): our
messages live in the proto package ``clipperd.inference`` so they can share a process with
tritonclient's ``inference.*`` classes, while the service keeps the name clients call."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError

from backends.common.errors import ClipperdError, InvalidArgument, PermissionDenied, Unimplemented
from server.access import AccessPolicy, Rule, grpc_peer_host
from server.core.dataplane import DataPlane
from server.core.inference import Streamed
from server.core.messages import InferResponse
from server.core.shared_memory import uses_shared_memory
from server.core.status import GRPC_STATUS
from server.grpc.codec import decode_request, infer_response_bytes, infer_response_message
from server.grpc.health import HEALTH_SERVICE, health_handlers
from server.grpc.http2.limits import MAX_HEADER_LIST, MAX_STREAMS, Http2Limits
from server.grpc.limits import CallLimits
from server.grpc.native import GrpcServer
from server.grpc.statistics import encode_statistics
from server.proto import grpc_service_pb2 as pb
from server.tls import ReloadingTls

log = logging.getLogger(__name__)
SERVICE = "inference.GRPCInferenceService"
# Requests of one ModelStreamInfer stream in flight (running, or answered and not yet sent); past
# it the stream's next request is not read, so its messages wait in the transport's bounded queue
# and then behind HTTP/2 flow control: one stream cannot start unbounded work.
STREAM_REQUESTS_IN_FLIGHT = 128

# Answers of one ModelStreamInfer stream waiting to be sent; past it a request's next answer
# waits, so its model's next send waits (backends/common/streaming.py ANSWERS_PER_REQUEST more
# per request): a client that reads slowly holds back its models, not the server's memory.
STREAM_ANSWERS_QUEUED = 16
TRACEPARENT = "traceparent"  # W3C trace context, gRPC metadata as HTTP headers
EMPTY_FINAL = "triton_enable_empty_final_response"  # Triton's request parameter
FINAL = "triton_final_response"  # Triton's parameter on each streamed answer

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
Send = Callable[[pb.ModelStreamInferResponse], Awaitable[None]]
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
    def __init__(self, plane: DataPlane, access: AccessPolicy | None = None) -> None:
        self.plane = plane
        # naming a shared-memory region needs what the shared-memory API needs (None: open)
        self.region_rule = (access or AccessPolicy()).grpc_region_rule()
        self.tracing = plane.tracing
        self.trace_update_rule = (access or AccessPolicy()).grpc_update_rule("TraceSetting")  # None: open

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
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse | bytes:
        decoded = decode_request(request)
        if self.region_rule is not None and uses_shared_memory(decoded):
            await _enforce(self.region_rule, context)
        if self.tracing.on and self.tracing.sampled(request.model_name):  # off: the one check it costs
            parent = _metadata(context).get(TRACEPARENT)
            run = functools.partial(self.plane.infer, decoded)
            return await self.tracing.traced(
                request.model_name, parent, "grpc", run, infer_response_message, _described
            )
        return infer_response_bytes(await self.plane.infer(decoded))

    @guarded
    async def TraceSetting(self, request: pb.TraceSettingRequest, context: Any) -> pb.TraceSettingResponse:
        """Triton's trace extension: no settings reads them (open); settings update them
        (management: loopback only unless opened, server/access.py)."""
        update = None
        if request.settings:
            if self.trace_update_rule is not None:
                await _enforce(self.trace_update_rule, context)
            update = {name: list(value.value) or None for name, value in request.settings.items()}
        answer = self.plane.trace_settings(request.model_name, update)
        response = pb.TraceSettingResponse()
        for name, values in answer.items():
            response.settings[name].value.extend(values)
        return response

    async def ModelStreamInfer(
        self, requests: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests of one stream run concurrently; each answer is sent as soon as it is ready and
        carries the request's id (errors travel in ``error_message``; the stream stays open). A
        decoupled model answers zero to many times; each answer says whether it is its request's
        last (``triton_final_response``), and a final flag without outputs becomes an empty
        answer when the request asks for it (``triton_enable_empty_final_response``)."""
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        room = asyncio.Semaphore(STREAM_ANSWERS_QUEUED)
        slots = asyncio.Semaphore(STREAM_REQUESTS_IN_FLIGHT)
        reader = asyncio.get_running_loop().create_task(self._read_stream(requests, answers, room, slots, context))
        try:
            while (answer := await answers.get()) is not None:
                room.release()
                yield answer
        finally:
            reader.cancel()

    async def _read_stream(
        self,
        requests: AsyncIterator[pb.ModelInferRequest],
        answers: asyncio.Queue[Any],
        room: asyncio.Semaphore,
        slots: asyncio.Semaphore,
        context: Any,
    ) -> None:
        tasks: set[asyncio.Task[None]] = set()
        send = functools.partial(_queue_answer, answers, room)
        try:
            async for request in requests:
                await slots.acquire()
                task = asyncio.get_running_loop().create_task(self._stream_one(request, send, context))
                task.add_done_callback(functools.partial(_request_done, tasks, slots))
                tasks.add(task)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            answers.put_nowait(None)

    async def _stream_one(self, request: pb.ModelInferRequest, send: Send, context: Any) -> None:
        if isinstance(request, Undecodable):
            await send(pb.ModelStreamInferResponse(error_message=f"request is not a valid {request.message_type}"))
            return
        try:
            decoded = decode_request(request)
            if self.region_rule is not None and uses_shared_memory(decoded):
                reason = _denial(self.region_rule, context)
                if reason is not None:
                    raise PermissionDenied(reason)
            empty_final = decoded.parameters.get(EMPTY_FINAL) is True
            async with contextlib.aclosing(self.plane.infer_stream(decoded)) as answers:
                async for answer in answers:
                    message = _stream_answer(request, answer, empty_final)
                    if message is not None:
                        await send(message)
        except ClipperdError as error:
            await send(pb.ModelStreamInferResponse(error_message=error.message, infer_response=_echo(request)))
        except Exception:
            log.exception("internal error in a stream request")
            await send(pb.ModelStreamInferResponse(error_message="internal error"))

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
    "LogSettings": "log settings",
}


def _request_done(tasks: set[asyncio.Task[None]], slots: asyncio.Semaphore, task: asyncio.Task[None]) -> None:
    tasks.discard(task)
    slots.release()


async def _queue_answer(
    answers: asyncio.Queue[Any], room: asyncio.Semaphore, message: pb.ModelStreamInferResponse
) -> None:
    await room.acquire()  # released as the stream takes the answer to send it
    answers.put_nowait(message)


def _described(response: InferResponse) -> tuple[str, str]:
    return response.model_version, response.id


def _echo(request: pb.ModelInferRequest) -> pb.ModelInferResponse:
    """An answer without outputs that names its request (an error's, an empty final one)."""
    return pb.ModelInferResponse(model_name=request.model_name, model_version=request.model_version, id=request.id)


def _stream_answer(
    request: pb.ModelInferRequest, answer: Streamed[InferResponse], empty_final: bool
) -> pb.ModelStreamInferResponse | None:
    """One streamed answer as Triton sends it; None for a final flag alone nobody asked to see."""
    if answer.error is not None:
        response = _echo(request)
        response.parameters[FINAL].bool_param = answer.final
        return pb.ModelStreamInferResponse(error_message=answer.error.message, infer_response=response)
    if answer.response is None:
        if not (answer.final and empty_final):
            return None
        response = _echo(request)
    else:
        response = infer_response_message(answer.response)
    response.parameters[FINAL].bool_param = answer.final
    return pb.ModelStreamInferResponse(infer_response=response)


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


def _serializer(message_class: Any) -> Callable[[Any], bytes]:
    """The message's bytes; a handler may answer with bytes already (ModelInfer writes its
    answer directly: server/grpc/codec.py infer_response_bytes)."""
    serialize = message_class.SerializeToString

    def serialized(reply: Any) -> bytes:
        return reply if isinstance(reply, bytes) else serialize(reply)  # type: ignore[no-any-return]

    return serialized


def _message_types(method: str) -> tuple[Any, Any]:
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    rpc = service.methods_by_name[method]
    request_class = getattr(pb, rpc.input_type.name)
    response_class = getattr(pb, rpc.output_type.name)
    return request_class, response_class


def _metadata(context: Any) -> dict[str, str]:
    """The call's text metadata by lower-case name (both front ends' contexts give pairs)."""
    return {str(k).lower(): v for k, v in context.invocation_metadata() or () if isinstance(v, str)}


def _denial(rule: Rule, context: Any) -> str | None:
    """Why ``rule`` refuses the call, or None (neither front end logs metadata: the credential
    stays out of the log)."""
    metadata: dict[str, str] | None = None

    def header(name: str) -> str | None:
        nonlocal metadata
        if metadata is None:
            metadata = _metadata(context)
        return metadata.get(name)

    reason = rule.denial(grpc_peer_host(context.peer() or ""), header)
    if reason is not None:
        log.debug("refused a %s call from %s", rule.api, context.peer())
    return reason


async def _enforce(rule: Rule, context: Any) -> None:
    """Aborts the call with PERMISSION_DENIED when ``rule`` refuses it."""
    reason = _denial(rule, context)
    if reason is not None:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)


def _checked(handler: grpc.RpcMethodHandler, rule: Rule) -> grpc.RpcMethodHandler:
    """The same handler with ``rule`` checked before it runs."""
    codec = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.stream_stream is not None:
        stream = handler.stream_stream

        async def checked_stream(requests: Any, context: Any) -> AsyncIterator[Any]:
            await _enforce(rule, context)
            async for reply in stream(requests, context):
                yield reply

        return grpc.stream_stream_rpc_method_handler(checked_stream, **codec)
    unary = handler.unary_unary

    async def checked(request: Any, context: Any) -> Any:
        await _enforce(rule, context)
        return await unary(request, context)

    return grpc.unary_unary_rpc_method_handler(checked, **codec)


Handlers = dict[str, grpc.RpcMethodHandler]


def guard_handlers(handlers: Handlers, access: AccessPolicy) -> Handlers:
    """Each method's access rule (server/access.py) in front of its handler; methods open to all
    keep their handler as it is (no cost on their calls)."""
    guarded_handlers = {}
    for method, handler in handlers.items():
        rule = access.grpc_rule(method)
        guarded_handlers[method] = handler if rule is None else _checked(handler, rule)
    return guarded_handlers


def method_handlers(service: InferenceService, access: AccessPolicy | None = None) -> Handlers:
    """The service's handlers, behind ``access`` (the default policy when None)."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name:
        request_class, response_class = _message_types(method)
        codec = {
            "request_deserializer": _lenient(request_class),
            "response_serializer": _serializer(response_class),
        }
        if method == "ModelStreamInfer":
            handlers[method] = grpc.stream_stream_rpc_method_handler(service.ModelStreamInfer, **codec)
        elif method in _UNIMPLEMENTED:
            handlers[method] = grpc.unary_unary_rpc_method_handler(_unimplemented(_UNIMPLEMENTED[method]), **codec)
        else:
            handlers[method] = grpc.unary_unary_rpc_method_handler(getattr(service, method), **codec)
    return guard_handlers(handlers, access or AccessPolicy())


@dataclass(frozen=True)
class GrpcOptions:
    max_message_bytes: int
    bdp_probe: bool  # HTTP/2 PINGs that size flow-control windows: CPU on every call
    lookahead_bytes: int  # each stream's flow-control window (fixed when bdp_probe is off)
    frontend: str = "native"  # or "grpcio" (grpc.aio)
    access: AccessPolicy = field(default_factory=AccessPolicy)  # who may call what (server/access.py)
    tls: ReloadingTls | None = None  # None: plaintext
    handshake_timeout_s: float = 10.0  # a TLS handshake not done by then is cut
    http2: Http2Limits = field(default_factory=Http2Limits)  # timeouts, connection limits (grpcio: timeouts)
    max_calls: int = CallLimits.max_calls  # in flight, all connections (both front ends)
    max_inflight_bytes: int = CallLimits.max_bytes  # request bytes held, all connections (native)
    max_connection_bytes: int = CallLimits.max_connection_bytes  # request bytes held, one connection (native)

    def limits(self) -> CallLimits:
        return CallLimits(self.max_message_bytes, self.max_calls, self.max_inflight_bytes, self.max_connection_bytes)


class GrpcFrontend(Protocol):
    async def stop(self, grace: float) -> None: ...


async def start_grpc_server(plane: DataPlane, host: str, port: int, opts: GrpcOptions) -> tuple[GrpcFrontend, int]:
    """The gRPC server of ``opts.frontend``, started; returns it and the port it bound."""
    if opts.frontend == "native":
        services = {
            SERVICE: method_handlers(InferenceService(plane, opts.access), opts.access),
            HEALTH_SERVICE: guard_handlers(health_handlers(plane, SERVICE), opts.access),
        }
        native = GrpcServer(services, opts.limits(), opts.lookahead_bytes)
        native.http2.limits = opts.http2
        context = opts.tls.front if opts.tls is not None else None
        return native, await native.start(host, port, context, opts.handshake_timeout_s)
    server, bound = build_grpc_server(plane, f"{_bracketed(host)}:{port}", opts)
    await server.start()
    return server, bound


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


# grpcio's own bounds, set to what the native front end enforces where grpc has a knob for it
# (grpc's channel arguments, include/grpc/impl/channel_arg_names.h). What grpcio cannot bound
# from Python: the request bytes held by calls in flight (its resource quota is not exposed),
# and a refusal carries no grpc-retry-pushback-ms (docs/grpc.md).
GRPCIO_KEEPALIVE_MS = 60_000  # the server pings an idle peer to find dead connections ...
GRPCIO_KEEPALIVE_TIMEOUT_MS = 20_000  # ... and closes it if no PING ACK comes back
GRPCIO_MIN_CLIENT_PING_MS = 10_000  # clients' pings more often than this are strikes ...
GRPCIO_MAX_PING_STRIKES = 2  # ... and past this many, GOAWAY ENHANCE_YOUR_CALM (ping floods)


def grpcio_options(opts: GrpcOptions) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", opts.max_message_bytes),
        ("grpc.max_send_message_length", opts.max_message_bytes),
        ("grpc.so_reuseport", 0),  # a port already taken must fail, not be shared silently
        ("grpc.http2.bdp_probe", int(opts.bdp_probe)),
        ("grpc.http2.lookahead_bytes", opts.lookahead_bytes),
        ("grpc.max_concurrent_streams", MAX_STREAMS),
        ("grpc.max_metadata_size", MAX_HEADER_LIST),
        ("grpc.absolute_max_metadata_size", MAX_HEADER_LIST),
        # a connection that has not completed its handshake (TLS's, or the HTTP/2 preface's) is cut
        ("grpc.server_handshake_timeout_ms", round(_handshake_s(opts) * 1000)),
        ("grpc.max_connection_idle_ms", round(opts.http2.idle_timeout_s * 1000)),
        ("grpc.keepalive_time_ms", GRPCIO_KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", GRPCIO_KEEPALIVE_TIMEOUT_MS),
        ("grpc.http2.min_ping_interval_without_data_ms", GRPCIO_MIN_CLIENT_PING_MS),
        ("grpc.http2.max_ping_strikes", GRPCIO_MAX_PING_STRIKES),
    ]


def _handshake_s(opts: GrpcOptions) -> float:
    return opts.handshake_timeout_s if opts.tls is not None else opts.http2.handshake_timeout_s


def build_grpc_server(plane: DataPlane, address: str, opts: GrpcOptions) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server for ``address`` (host:port); returns it and the port it bound. Calls
    past ``opts.max_calls`` in flight are refused at once with RESOURCE_EXHAUSTED."""
    server = grpc.aio.server(options=grpcio_options(opts), maximum_concurrent_rpcs=opts.max_calls)
    handlers = method_handlers(InferenceService(plane, opts.access), opts.access)
    if hasattr(server, "add_registered_method_handlers"):
        server.add_registered_method_handlers(SERVICE, handlers)
    else:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    health = guard_handlers(health_handlers(plane, SERVICE), opts.access)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(HEALTH_SERVICE, health),))
    if opts.tls is None:
        return server, server.add_insecure_port(address)
    return server, server.add_secure_port(address, opts.tls.grpc_credentials())
