"""The system shared memory extension's HTTP/REST endpoints (Triton's paths and bodies), a thin
adapter over the DataPlane's registry:

- ``GET|POST /v2/systemsharedmemory[/region/{name}]/status``: ``[{name, key, offset, byte_size}]``
- ``POST /v2/systemsharedmemory/region/{name}/register`` with ``{"key", "offset", "byte_size"}``
- ``POST /v2/systemsharedmemory[/region/{name}]/unregister``
- ``/v2/cudasharedmemory/...``: 501, as over gRPC, but for unregister, which has nothing to do."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from aiohttp import web

from backends.common.errors import InvalidArgument, Unimplemented
from server.http_body import json_body
from server.shared_memory import SharedMemoryRegistry

REGISTRY = web.AppKey("shared_memory", SharedMemoryRegistry)
_PREFIX = "/v2/systemsharedmemory"


def _registry(request: web.Request) -> SharedMemoryRegistry:
    return request.app[REGISTRY]


async def status(request: web.Request) -> web.Response:
    rows = _registry(request).status(request.match_info.get("name", ""))
    return web.json_response([asdict(r) for r in rows])


async def register(request: web.Request) -> web.Response:
    body = await json_body(request)
    key = body.get("key")
    if not isinstance(key, str):
        raise InvalidArgument("register needs 'key', a string")
    offset, byte_size = _integer(body, "offset", 0), _integer(body, "byte_size", None)
    _registry(request).register(request.match_info["name"], key, offset, byte_size)
    return web.Response()


def _integer(body: dict[str, Any], field: str, default: int | None) -> int:
    value = body.get(field, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(f"register needs '{field}', an integer")
    return value


async def unregister(request: web.Request) -> web.Response:
    await json_body(request)
    _registry(request).unregister(request.match_info.get("name", ""))
    return web.Response()


async def cuda_unsupported(request: web.Request) -> web.Response:
    raise Unimplemented("CUDA shared memory is not supported by this server")


async def cuda_unregister(request: web.Request) -> web.Response:
    """No CUDA region can be registered, so there is none to unregister (perf_analyzer
    unregisters both kinds when it ends)."""
    await json_body(request)
    return web.Response()


def shared_memory_routes(app: web.Application, registry: SharedMemoryRegistry) -> list[web.RouteDef]:
    app[REGISTRY] = registry
    region = _PREFIX + "/region/{name}"
    return [
        web.get(_PREFIX + "/status", status),
        web.post(_PREFIX + "/status", status),
        web.get(region + "/status", status),
        web.post(region + "/status", status),
        web.post(region + "/register", register),
        web.post(region + "/unregister", unregister),
        web.post(_PREFIX + "/unregister", unregister),
        web.post("/v2/cudasharedmemory/unregister", cuda_unregister),
        web.post("/v2/cudasharedmemory/region/{name}/unregister", cuda_unregister),
        web.route("*", "/v2/cudasharedmemory/{tail:.*}", cuda_unsupported),
    ]
