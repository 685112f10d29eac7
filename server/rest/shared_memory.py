"""The system shared memory extension's HTTP/REST endpoints (Triton's paths and bodies), a thin
adapter over the DataPlane's registry:

- ``GET|POST /v2/systemsharedmemory[/region/{name}]/status``: ``[{name, key, offset, byte_size}]``
- ``POST /v2/systemsharedmemory/region/{name}/register`` with ``{"key", "offset", "byte_size"}``
- ``POST /v2/systemsharedmemory[/region/{name}]/unregister``
- ``/v2/cudasharedmemory/...``: 501, as over gRPC, but for unregister, which has nothing to do."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from backends.common.errors import InvalidArgument, Unimplemented
from server.core.shared_memory import SharedMemoryRegistry
from server.rest.answers import json_response
from server.rest.body import BodyLimits, json_body
from server.rest.http_server import HttpRequest, HttpResponse
from server.rest.router import Route

_PREFIX = "/v2/systemsharedmemory"


class SharedMemoryApi:
    def __init__(self, registry: SharedMemoryRegistry, limits: BodyLimits) -> None:
        self.registry = registry
        self.limits = limits

    async def status(self, request: HttpRequest) -> HttpResponse:
        rows = self.registry.status(request.params.get("name", ""))
        return json_response([asdict(r) for r in rows])

    async def register(self, request: HttpRequest) -> HttpResponse:
        body = json_body(request, self.limits)
        key = body.get("key")
        if not isinstance(key, str):
            raise InvalidArgument("register needs 'key', a string")
        offset, byte_size = _integer(body, "offset", 0), _integer(body, "byte_size", None)
        self.registry.register(request.params["name"], key, offset, byte_size)
        return HttpResponse()

    async def unregister(self, request: HttpRequest) -> HttpResponse:
        json_body(request, self.limits)
        self.registry.unregister(request.params.get("name", ""))
        return HttpResponse()

    async def cuda_unsupported(self, request: HttpRequest) -> HttpResponse:
        raise Unimplemented("CUDA shared memory is not supported by this server")

    async def cuda_unregister(self, request: HttpRequest) -> HttpResponse:
        """No CUDA region can be registered, so there is none to unregister (perf_analyzer
        unregisters both kinds when it ends)."""
        json_body(request, self.limits)
        return HttpResponse()

    def routes(self) -> list[Route]:
        region = _PREFIX + "/region/{name}"
        return [
            Route("GET", _PREFIX + "/status", self.status),
            Route("POST", _PREFIX + "/status", self.status),
            Route("GET", region + "/status", self.status),
            Route("POST", region + "/status", self.status),
            Route("POST", region + "/register", self.register),
            Route("POST", region + "/unregister", self.unregister),
            Route("POST", _PREFIX + "/unregister", self.unregister),
            Route("POST", "/v2/cudasharedmemory/unregister", self.cuda_unregister),
            Route("POST", "/v2/cudasharedmemory/region/{name}/unregister", self.cuda_unregister),
            Route("*", "/v2/cudasharedmemory/{tail:*}", self.cuda_unsupported),
        ]


def _integer(body: dict[str, Any], field: str, default: int | None) -> int:
    value = body.get(field, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(f"register needs '{field}', an integer")
    return value
