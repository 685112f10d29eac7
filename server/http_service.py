"""KServe v2 HTTP/REST on aiohttp: a thin adapter over the DataPlane."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from backends.common.config import config_to_json
from backends.common.errors import ClipperdError, InvalidArgument, Unimplemented
from server.dataplane import DataPlane
from server.http_body import BodyLimits, read_body
from server.http_codec import HEADER_LENGTH, binary_choices, decode_request, encode_response, parse_json
from server.http_shared_memory import add_shared_memory_routes
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
LIMITS = web.AppKey("limits", BodyLimits)


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors become ``{"error": ...}``: ours keep their code and message, anything else is 500
    with nothing leaked (the details go to the log)."""
    try:
        return await handler(request)
    except ClipperdError as error:
        return error_response(HTTP_STATUS[error.code], error.message)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        detail = error.text if error.status == 413 and error.text else error.reason  # 413 names the limit
        return error_response(error.status, detail)
    except Exception:
        log.exception("internal error in %s %s", request.method, request.path)
        return error_response(500, "internal error")


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


async def _body(request: web.Request) -> dict[str, Any]:
    return parse_json(await read_body(request, request.app[LIMITS]))


async def repository_index(request: web.Request) -> web.Response:
    ready_only = (await _body(request)).get("ready", False)
    if not isinstance(ready_only, bool):
        raise InvalidArgument("'ready' must be a boolean")
    rows = _plane(request).repository_index(ready_only)
    return web.json_response([asdict(r) for r in rows])


async def load(request: web.Request) -> web.Response:
    parameters = (await _body(request)).get("parameters", {})
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
    await _body(request)
    await _plane(request).unload_model(request.match_info["model"])
    return web.Response()


async def infer(request: web.Request) -> web.Response:
    name, version = _model(request)
    body = await read_body(request, request.app[LIMITS])
    decoded = decode_request(name, version, body, request.headers.get(HEADER_LENGTH))
    binary = binary_choices(decoded)
    body, header_length = encode_response(await _plane(request).infer(decoded), binary)
    if header_length is None:
        response = web.Response(body=body, content_type="application/json")
    else:
        headers = {HEADER_LENGTH: str(header_length)}  # of the header before any compression
        response = web.Response(body=body, content_type="application/octet-stream", headers=headers)
    if "Accept-Encoding" in request.headers:  # only clients that ask pay for compression
        response.enable_compression()
    return response


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
    app = web.Application(middlewares=[errors], client_max_size=limits.max_body_bytes)
    app[PLANE] = plane
    app[LIMITS] = limits
    app.add_routes(
        [
            web.get("/v2/health/live", live),
            web.get("/v2/health/ready", ready),
            web.get("/v2", server_metadata),
            web.get("/v2/models/stats", model_stats),
            web.post("/v2/repository/index", repository_index),
            web.post("/v2/repository/models/{model}/load", load),
            web.post("/v2/repository/models/{model}/unload", unload),
            *openapi_routes(),
        ]
    )
    for suffix, method, handler in (
        ("", "GET", model_metadata),
        ("/ready", "GET", model_ready),
        ("/config", "GET", model_config),
        ("/stats", "GET", model_stats),
        ("/infer", "POST", infer),
    ):
        app.add_routes(_model_routes(suffix, method, handler))
    add_shared_memory_routes(app, plane.shared_memory)
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
    site = web.TCPSite(runner, opts.host, opts.port, reuse_port=False)
    await site.start()
    addresses = runner.addresses
    return runner, int(addresses[0][1]) if addresses else opts.port
