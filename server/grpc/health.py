"""The standard gRPC health service (``grpc.health.v1.Health``), for Kubernetes ``grpc`` probes
and grpc-health-probe: Check answers SERVING while the server is ready (NOT_SERVING while it
starts or stops), for the whole server (service "") or the inference service by name; any other
name is NOT_FOUND, as the protocol asks. Watch is UNIMPLEMENTED (probes only Check).

The two messages are one string and one enum: they are read and written by hand rather than
generated, so the project needs no grpcio-health-checking package."""

from __future__ import annotations

from typing import Any

import grpc

from server.core.dataplane import DataPlane

HEALTH_SERVICE = "grpc.health.v1.Health"
SERVING, NOT_SERVING = b"\x08\x01", b"\x08\x02"  # HealthCheckResponse{status: 1 | 2}


class BadHealthRequest(ValueError):
    pass


def service_name(request: bytes) -> str:
    """HealthCheckRequest{string service = 1}; other fields are skipped only if empty."""
    if not request:
        return ""
    if request[0] != 0x0A:
        raise BadHealthRequest("not a HealthCheckRequest")
    length, position, shift = 0, 1, 0
    while position < len(request) and shift < 35:
        byte = request[position]
        length |= (byte & 0x7F) << shift
        position += 1
        shift += 7
        if not byte & 0x80:
            break
    else:
        raise BadHealthRequest("not a HealthCheckRequest")
    if position + length != len(request):
        raise BadHealthRequest("not a HealthCheckRequest")
    try:
        return request[position:].decode()
    except UnicodeDecodeError:
        raise BadHealthRequest("the service name is not UTF-8") from None


def health_handlers(plane: DataPlane, inference_service: str) -> dict[str, grpc.RpcMethodHandler]:
    async def check(request: bytes, context: Any) -> bytes:
        try:
            name = service_name(request)
        except BadHealthRequest as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        if name not in ("", inference_service):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {name[:100]!r}")
        return SERVING if plane.ready() else NOT_SERVING

    async def watch(request: bytes, context: Any) -> bytes:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Watch is not supported: use Check")
        return b""

    return {
        "Check": grpc.unary_unary_rpc_method_handler(check),
        "Watch": grpc.unary_unary_rpc_method_handler(watch),
    }
