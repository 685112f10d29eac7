"""KServe v2 HTTP/REST on aiohttp: a thin adapter over the DataPlane."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from backends.common.config import config_to_json
from backends.common.errors import ClipperdError, InvalidArgument, Unimplemented
from server.dataplane import DataPlane
from server.http_body import LIMITS, BodyLimits, json_body, read_body
from server.http_codec import HEADER_LENGTH, binary_choices, decode_request, encode_response
from server.http_shared_memory import shared_memory_routes
from server.http_stats import statistics_json
from server.status import HTTP_STATUS

log = logging.getLogger(__name__)


class _ClientFaults(logging.Filter):
    """aiohttp logs every malformed request (bad header bytes, oversized lines) as an ERROR with a
    traceback: the client's fault, already answered with 400, so it goes to DEBUG instead, and a
    flood of junk cannot flood the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError) and record.levelno >= logging.ERROR:
            log.debug("malformed HTTP request: %s", error)
            return False
        return True


CLIENT_FAULTS = _ClientFaults()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PLANE = web.AppKey("plane", DataPlane)


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def guarded(handler: Handler) -> Handler:
    """Errors become ``{"error": ...}`` answers. A wrapper per handler rather than a middleware:
    aiohttp builds a middleware chain anew for every request."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception as error:
            return error_answer(request, error)

    return wrapper


def error_answer(request: web.BaseRequest, error: Exception) -> web.Response:
    """Ours keep their code and message, anything else is 500 with nothing leaked (the details
    go to the log)."""
    if isinstance(error, ClipperdError):
        return error_response(HTTP_STATUS[error.code], error.message)
    log.error("internal error in %s %s", request.method, request.path, exc_info=error)
    return error_response(500, "internal error")


async def no_route(request: web.Request) -> web.Response:
    """The last route, for any path and method: 405 naming the allowed methods when another
    route has the path, 404 otherwise; both as JSON errors."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not request.match_info.route.resource:
            match, methods = await resource.resolve(request)
            allowed |= methods if match is None else set()
    if allowed:
        headers = {"Allow": ", ".join(sorted(allowed))}
        return web.json_response(
            {"error": f"method {request.method[:16]} is not allowed here"}, status=405, headers=headers
        )
    return error_response(404, "Not Found")


def _plane(request: web.Request) -> DataPlane:
    return request.app[PLANE]


def _model(request: web.Request) -> tuple[str, str]:
    return request.match_info["model"], request.match_info.get("version", "")


def _flag(value: bool) -> web.Response:
    return web.Response(status=200 if value else 503)


async def live(request: web.Request) -> web.Response:
    return _flag(_plane(request).live())


async def ready(request: web.Request) -> web.Response:
    return _flag(_plane(request).ready())


async def server_metadata(request: web.Request) -> web.Response:
    plane = _plane(request)
    return web.json_response({"name": plane.name, "version": plane.version, "extensions": plane.extensions})


async def model_ready(request: web.Request) -> web.Response:
    return _flag(_plane(request).model_ready(*_model(request)))


async def model_metadata(request: web.Request) -> web.Response:
    meta = _plane(request).model_metadata(*_model(request))
    return web.json_response(asdict(meta))


async def model_config(request: web.Request) -> web.Response:
    return web.json_response(config_to_json(_plane(request).model_config(*_model(request))))


async def model_stats(request: web.Request) -> web.Response:
    name, version = request.match_info.get("model", ""), request.match_info.get("version", "")
    return web.json_response(statistics_json(_plane(request).statistics(name, version)))


async def repository_index(request: web.Request) -> web.Response:
    ready_only = (await json_body(request)).get("ready", False)
    if not isinstance(ready_only, bool):
        raise InvalidArgument("'ready' must be a boolean")
    rows = _plane(request).repository_index(ready_only)
    return web.json_response([asdict(r) for r in rows])


async def load(request: web.Request) -> web.Response:
    parameters = (await json_body(request)).get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidArgument("'parameters' must be a JSON object")
    if parameters:
        raise Unimplemented(
            "load parameters (config or file overrides) are not accepted: change the model's files "
            "in the repository and load it again"
        )
    await _plane(request).load_model(request.match_info["model"])
    return web.Response()


async def unload(request: web.Request) -> web.Response:
    await json_body(request)
    await _plane(request).unload_model(request.match_info["model"])
    return web.Response()


async def infer(request: web.Request) -> web.Response:
    name, version = _model(request)
    return await answer_infer(request, _plane(request), request.app[LIMITS], name, version)


async def answer_infer(
    request: web.Request, plane: DataPlane, limits: BodyLimits, name: str, version: str
) -> web.Response:
    body = await read_body(request, limits)
    decoded = decode_request(name, version, body, request.headers.get(HEADER_LENGTH))
    binary = binary_choices(decoded)
    body, header_length = encode_response(await plane.infer(decoded), binary)
    if header_length is None:
        response = web.Response(body=body, content_type="application/json")
    else:
        headers = {HEADER_LENGTH: str(header_length)}  # of the header before any compression
        response = web.Response(body=body, content_type="application/octet-stream", headers=headers)
    if "Accept-Encoding" in request.headers:  # only clients that ask pay for compression
        response.enable_compression()
    return response


def infer_target(path: str) -> tuple[str, str] | None:
    """(model, version) when ``path`` is ``/v2/models/{m}[/versions/{v}]/infer``."""
    if not (path.startswith("/v2/models/") and path.endswith("/infer")):
        return None
    parts = path[11:-6].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], ""
    if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
        return parts[0], parts[2]
    return None


def with_infer_fast_path(
    routed: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]], plane: DataPlane, limits: BodyLimits
) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    """The server's request handler, with infer taken before the router: for every request
    aiohttp resolves the route, builds its match info and freezes it, which costs about a tenth of
    a small request's time on the one busy thread. Everything else goes through the router."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "POST" and (target := infer_target(request.path)) is not None:
            try:
                # the app's request factory made it: a web.Request (without match info, unused here)
                return await answer_infer(request, plane, limits, *target)  # type: ignore[arg-type]
            except Exception as error:
                return error_answer(request, error)
        return await routed(request)

    return handle


OPENAPI_PATH = Path(__file__).with_name("openapi.yaml")


def openapi_routes() -> list[web.RouteDef]:
    """The API's OpenAPI document, as YAML (the source) and JSON."""
    text = OPENAPI_PATH.read_bytes()
    as_json = json.dumps(yaml.safe_load(text)).encode()

    async def yaml_doc(request: web.Request) -> web.Response:
        return web.Response(body=text, content_type="application/yaml")

    async def json_doc(request: web.Request) -> web.Response:
        return web.Response(body=as_json, content_type="application/json")

    return [web.get("/openapi.yaml", yaml_doc), web.get("/openapi.json", json_doc)]


def _model_routes(suffix: str, method: str, handler: Handler) -> list[web.RouteDef]:
    return [
        web.route(method, f"/v2/models/{{model}}{suffix}", handler),
        web.route(method, f"/v2/models/{{model}}/versions/{{version}}{suffix}", handler),
    ]


def build_http_app(plane: DataPlane, limits: BodyLimits) -> web.Application:
    app = web.Application(client_max_size=limits.max_body_bytes)
    app[PLANE] = plane
    app[LIMITS] = limits
    # infer first: the router tries the routes under /v2/models in the order they were added
    routes = _model_routes("/infer", "POST", infer)
    for suffix, method, handler in (
        ("", "GET", model_metadata),
        ("/ready", "GET", model_ready),
        ("/config", "GET", model_config),
        ("/stats", "GET", model_stats),
    ):
        routes += _model_routes(suffix, method, handler)
    routes += [
        web.get("/v2/health/live", live),
        web.get("/v2/health/ready", ready),
        web.get("/v2", server_metadata),
        web.get("/v2/models/stats", model_stats),
        web.post("/v2/repository/index", repository_index),
        web.post("/v2/repository/models/{model}/load", load),
        web.post("/v2/repository/models/{model}/unload", unload),
        *shared_memory_routes(app, plane.shared_memory),
        *openapi_routes(),
        web.route("*", "/{path:.*}", no_route),
    ]
    app.add_routes([web.RouteDef(r.method, r.path, guarded(r.handler), r.kwargs) for r in routes])
    return app


@dataclass(frozen=True)
class HttpOptions:
    host: str
    port: int  # 0 picks a free one
    limits: BodyLimits  # larger bodies get 413
    grace_secs: float  # on shutdown, how long in-flight requests may take


async def start_http_server(plane: DataPlane, opts: HttpOptions) -> tuple[web.AppRunner, int]:
    """Serves the app; returns the runner (``cleanup()`` stops it) and the bound port."""
    logging.getLogger("aiohttp.server").addFilter(CLIENT_FAULTS)  # adding it twice is a no-op
    app = build_http_app(plane, opts.limits)
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=opts.grace_secs, auto_decompress=False
    )
    await runner.setup()
    assert runner.server is not None  # set up just now
    runner.server.request_handler = with_infer_fast_path(runner.server.request_handler, plane, opts.limits)
    site = web.TCPSite(runner, opts.host, opts.port, reuse_port=False)
    await site.start()
    addresses = runner.addresses
    return runner, int(addresses[0][1]) if addresses else opts.port
