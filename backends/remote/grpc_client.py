"""A KServe v2 gRPC client on the lean HTTP/2 connection of backends/remote/h2.py: one
connection per endpoint, unary calls on the wire names ``/inference.GRPCInferenceService/<Method>``
with the messages of backends/proto/grpc_service.proto."""

from __future__ import annotations

from typing import Any

from google.protobuf.message import DecodeError

from backends.common.tensors import Tensors
from backends.proto import grpc_service_pb2 as pb
from backends.remote.client import CallSpec
from backends.remote.errors import EndpointFailure, model_error
from backends.remote.h2 import GrpcStatus, H2Channel, ProtocolError, request_head
from backends.remote.settings import MAX_RESPONSE_BYTES
from backends.remote.wire import BadAnswer, grpc_outputs, grpc_request_bytes

_SERVICE = "/inference.GRPCInferenceService/"
# statuses that say the endpoint, not the model, failed: another endpoint may answer
_ENDPOINT_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})


class GrpcClient:
    def __init__(self, endpoint: str, spec: CallSpec) -> None:
        self.endpoint = endpoint
        self._spec = spec
        self._timeout = spec.settings.timeout_s
        host, _, port = endpoint.rpartition(":")
        self._channel = H2Channel(host.strip("[]"), int(port), spec.connections, MAX_RESPONSE_BYTES)
        self._heads = {
            name: request_head(_SERVICE + name, endpoint, self._timeout)
            for name in ("ModelInfer", "ServerReady", "ModelReady")
        }

    async def infer(self, inputs: Tensors) -> Tensors:
        settings = self._spec.settings
        request = grpc_request_bytes(
            settings.remote_model, settings.remote_version, inputs, self._spec.input_types, self._spec.outputs
        )
        response = await self._call("ModelInfer", request, pb.ModelInferResponse)
        try:
            return grpc_outputs(response)
        except BadAnswer as error:
            raise EndpointFailure(self.endpoint, f"bad answer: {error.message}") from None

    async def check_ready(self) -> None:
        server = await self._call("ServerReady", b"", pb.ServerReadyResponse)  # an empty message
        if not server.ready:
            raise EndpointFailure(self.endpoint, "the server is not ready")
        settings = self._spec.settings
        request = pb.ModelReadyRequest(name=settings.remote_model, version=settings.remote_version)
        model = await self._call("ModelReady", request.SerializeToString(), pb.ModelReadyResponse)
        if not model.ready:
            raise EndpointFailure(self.endpoint, f"model '{settings.remote_model}' is not ready there")

    async def _call(self, method: str, request: bytes, response_type: Any) -> Any:
        try:
            answer = await self._channel.call(self._heads[method], request, self._timeout)
            return response_type.FromString(answer)
        except GrpcStatus as error:
            if error.code in _ENDPOINT_CODES:
                raise EndpointFailure(self.endpoint, f"{error.code}: {error.message}") from None
            raise model_error(error.code, error.message) from None
        except TimeoutError:
            raise EndpointFailure(self.endpoint, f"timed out after {self._timeout * 1000:.0f} ms") from None
        except (OSError, ProtocolError, DecodeError) as error:
            raise EndpointFailure(self.endpoint, f"{type(error).__name__}: {error}") from None

    async def close(self) -> None:
        self._channel.close()
