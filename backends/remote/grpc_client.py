"""A KServe v2 gRPC client on grpc.aio: one channel (one HTTP/2 connection) per endpoint,
generic unary calls on the wire names ``/inference.GRPCInferenceService/<Method>`` with the
messages of backends/proto/grpc_service.proto."""

from __future__ import annotations

from typing import Any

import grpc

from backends.common.tensors import Tensors
from backends.proto import grpc_service_pb2 as pb
from backends.remote.client import CallSpec
from backends.remote.errors import EndpointFailure, model_error
from backends.remote.settings import MAX_RESPONSE_BYTES
from backends.remote.wire import BadAnswer, grpc_outputs, grpc_request

_SERVICE = "/inference.GRPCInferenceService/"
# statuses that say the endpoint, not the model, failed: another endpoint may answer
_ENDPOINT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def channel_options(health_interval_s: float) -> list[tuple[str, Any]]:
    """Bounded answers; reconnection attempts no further apart than the health checks (gRPC's
    own backoff grows to two minutes, which would keep a restarted endpoint out that long)."""
    reconnect_ms = int(min(max(health_interval_s * 1000, 100), 1000))
    return [
        ("grpc.max_receive_message_length", MAX_RESPONSE_BYTES),
        ("grpc.max_send_message_length", -1),
        ("grpc.initial_reconnect_backoff_ms", reconnect_ms),
        ("grpc.min_reconnect_backoff_ms", reconnect_ms),
        ("grpc.max_reconnect_backoff_ms", reconnect_ms),
        ("grpc.enable_retries", 0),  # a retry is the scheduler's decision, on another endpoint
    ]


class GrpcClient:
    def __init__(self, endpoint: str, spec: CallSpec) -> None:
        self.endpoint = endpoint
        self._spec = spec
        settings = spec.settings
        self._timeout = settings.timeout_s
        self._channel = grpc.aio.insecure_channel(endpoint, options=channel_options(settings.health_interval_s))
        self._infer = self._method("ModelInfer", pb.ModelInferResponse)
        self._server_ready = self._method("ServerReady", pb.ServerReadyResponse)
        self._model_ready = self._method("ModelReady", pb.ModelReadyResponse)

    def _method(self, name: str, response: Any) -> Any:
        return self._channel.unary_unary(
            _SERVICE + name, request_serializer=_serialize, response_deserializer=response.FromString
        )

    async def infer(self, inputs: Tensors) -> Tensors:
        settings = self._spec.settings
        request = grpc_request(
            settings.remote_model, settings.remote_version, inputs, self._spec.input_types, self._spec.outputs
        )
        response = await self._call(self._infer, request)
        try:
            return grpc_outputs(response)
        except BadAnswer as error:
            raise EndpointFailure(self.endpoint, f"bad answer: {error.message}") from None

    async def check_ready(self) -> None:
        server = await self._call(self._server_ready, pb.ServerReadyRequest())
        if not server.ready:
            raise EndpointFailure(self.endpoint, "the server is not ready")
        settings = self._spec.settings
        request = pb.ModelReadyRequest(name=settings.remote_model, version=settings.remote_version)
        model = await self._call(self._model_ready, request)
        if not model.ready:
            raise EndpointFailure(self.endpoint, f"model '{settings.remote_model}' is not ready there")

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code in _ENDPOINT_CODES:
                timed_out = code is grpc.StatusCode.DEADLINE_EXCEEDED
                detail = f"timed out after {self._timeout * 1000:.0f} ms" if timed_out else error.details() or code.name
                raise EndpointFailure(self.endpoint, f"{code.name}: {detail}") from None
            raise model_error(code.name, error.details() or code.name) from None

    async def close(self) -> None:
        await self._channel.close(grace=None)


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()  # type: ignore[no-any-return]
