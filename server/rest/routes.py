"""KServe v2 HTTP/REST: the routes, each a thin adapter over the DataPlane, on the project's
HTTP/1.1 server (server/rest/http_server.py)."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import zlib
from collections.abc import AsyncGenerator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from backends.common.config import config_to_json
from backends.common.errors import ClipperdError, InvalidArgument, PermissionDenied, Unimplemented
from server.access import AccessPolicy, Rule
from server.applications.manager import ApplicationManager
from server.core.dataplane import DataPlane
from server.core.inference import Streamed
from server.core.messages import InferResponse
from server.core.shared_memory import uses_shared_memory
from server.core.status import HTTP_STATUS
from server.dashboard.feed import Dashboard
from server.rest import generate
from server.rest.answers import JSON, error_response, json_response
from server.rest.applications import ApplicationRoutes
from server.rest.body import BodyLimits, Overloaded, decode_content, decoded_body, json_body
from server.rest.clipper_management import ClipperManagementRoutes
from server.rest.codec import HEADER_LENGTH, binary_choices, decode_request, infer_response_body
from server.rest.dashboard import DashboardRoutes
from server.rest.feedback import FeedbackRoutes
from server.rest.http_server import HttpRequest, HttpResponse, HttpServer
from server.rest.limits import RETRY_AFTER_S, HttpLimits
from server.rest.monitoring import MonitoringRoutes
from server.rest.router import NoRoute, Route, RouteHandler, Router
from server.rest.shared_memory import SharedMemoryApi
from server.rest.statistics import statistics_json
from server.tls import ReloadingTls
from server.tracing.settings import Update

log = logging.getLogger(__name__)
OPENAPI_PATH = Path(__file__).with_name("openapi.yaml")
TRACEPARENT = "traceparent"  # W3C trace context
_OK = HttpResponse()
_NOT_READY = HttpResponse(503)


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


def _model(request: HttpRequest) -> tuple[str, str]:
    return request.params["model"], request.params.get("version", "")


def _flag(value: bool) -> HttpResponse:
    return _OK if value else _NOT_READY


def _compressed(response: HttpResponse, accept: str) -> HttpResponse:
    """gzip or deflate, as the client's Accept-Encoding asks; unchanged when it asks neither."""
    wanted = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    for name, wbits in (("gzip", 16 + zlib.MAX_WBITS), ("deflate", zlib.MAX_WBITS)):
        if name in wanted:
            packer = zlib.compressobj(6, zlib.DEFLATED, wbits)
            response.body = packer.compress(response.body) + packer.flush()
            response.headers["Content-Encoding"] = name
            response.headers["Vary"] = "Accept-Encoding"
            return response
    return response


class RestApi:
    """Every route of the REST API over one DataPlane."""

    def __init__(
        self,
        plane: DataPlane,
        limits: BodyLimits,
        access: AccessPolicy | None = None,
        applications: ApplicationManager | None = None,
        dashboard: Dashboard | None = None,
    ) -> None:
        self.plane = plane
        self.dashboard = dashboard
        self.limits = limits
        self.applications = applications
        self.access = access or AccessPolicy()
        self.shared_memory = SharedMemoryApi(plane.shared_memory, limits)
        self.router = Router(guard_routes(self.routes(), self.access))
        self._infer_rule = self.access.http_rule("/v2/models/{model}/infer")  # the fast path's (None: open)
        self._region_rule = self.access.http_region_rule()  # naming a shared-memory region (None: open)
        self.tracing = plane.tracing
        text = OPENAPI_PATH.read_bytes()
        self._openapi_yaml = text
        self._openapi_json = json.dumps(yaml.safe_load(text)).encode()

    async def handle(self, request: HttpRequest) -> HttpResponse:
        """Infer is taken before the router (it is nearly all the traffic); errors become
        ``{"error": ...}`` answers: ours with their code and message, anything else 500 with
        nothing leaked (the details go to the log)."""
        try:
            if "content-encoding" in request.headers:
                # in slices, the loop served between them; every body of this API is JSON first
                await decode_content(request, self.limits, starts_with=b"{")
            if request.method == "POST" and (target := infer_target(request.path)) is not None:
                if self._infer_rule is not None:
                    check(self._infer_rule, request)
                return await self.infer_model(request, *target)
            handler, request.params = self.router.resolve(request.method, request.path)
            return await handler(request)
        except Overloaded as error:
            return error_response(503, error.message, {"Retry-After": str(RETRY_AFTER_S)})
        except ClipperdError as error:
            return error_response(HTTP_STATUS[error.code], error.message)
        except NoRoute as missing:
            if not missing.allowed:
                return error_response(404, "Not Found")
            allow = ", ".join(sorted(missing.allowed))
            return error_response(405, f"method {request.method[:16]} is not allowed here", {"Allow": allow})
        except Exception:
            log.exception("internal error in %s %s", request.method, request.path[:200])
            return error_response(500, "internal error")

    # ---- inference

    async def infer(self, request: HttpRequest) -> HttpResponse:
        return await self.infer_model(request, *_model(request))

    async def infer_model(self, request: HttpRequest, name: str, version: str) -> HttpResponse:
        body = decoded_body(request, self.limits)
        decoded = decode_request(name, version, body, request.headers.get("inference-header-content-length"))
        if self._region_rule is not None and uses_shared_memory(decoded):
            check(self._region_rule, request)
        binary = binary_choices(decoded)
        if self.tracing.on and self.tracing.sampled(name):  # off: the one check tracing costs
            run = functools.partial(self.plane.infer, decoded)
            encode = functools.partial(infer_response_body, binary=binary)
            parent = request.headers.get(TRACEPARENT)
            body, header_length = await self.tracing.traced(name, parent, "http", run, encode, _described)
        else:
            body, header_length = infer_response_body(await self.plane.infer(decoded), binary)
        if header_length is None:
            response = HttpResponse(200, body, JSON)
        else:  # the header's length before any compression, as tritonclient reads it
            response = HttpResponse(200, body, "application/octet-stream", {HEADER_LENGTH: str(header_length)})
        accept = request.headers.get("accept-encoding")
        return response if accept is None else _compressed(response, accept)

    async def generate(self, request: HttpRequest) -> HttpResponse:
        """Triton's generate extension (server/rest/generate.py): one JSON answer."""
        answers = self._generate_answers(request)
        async with contextlib.aclosing(answers):
            return json_response(await generate.one_answer(answers))

    async def generate_stream(self, request: HttpRequest) -> HttpResponse:
        """Triton's generate extension: each answer a server-sent event, as the model sends it."""
        answers = self._generate_answers(request)
        try:
            first = await generate.first_event(answers)
        except BaseException:
            await answers.aclose()
            raise
        return HttpResponse(200, content_type=generate.SSE, stream=generate.events(first, answers))

    def _generate_answers(self, request: HttpRequest) -> AsyncGenerator[Streamed[InferResponse], None]:
        name, version = _model(request)
        body = json_body(request, self.limits)
        decoded = generate.generate_request(self.plane.model_metadata(name, version), version, body)
        return self.plane.infer_stream(decoded)

    # ---- health and metadata

    async def live(self, request: HttpRequest) -> HttpResponse:
        return _flag(self.plane.live())

    async def ready(self, request: HttpRequest) -> HttpResponse:
        return _flag(self.plane.ready())

    async def server_metadata(self, request: HttpRequest) -> HttpResponse:
        plane = self.plane
        mode = {"model_control_mode": plane.repository.mode.value}  # clipperd's: the admin client reads it
        return json_response(
            {"name": plane.name, "version": plane.version, "extensions": plane.extensions, "parameters": mode}
        )

    async def model_ready(self, request: HttpRequest) -> HttpResponse:
        return _flag(self.plane.model_ready(*_model(request)))

    async def model_metadata(self, request: HttpRequest) -> HttpResponse:
        return json_response(asdict(self.plane.model_metadata(*_model(request))))

    async def model_config(self, request: HttpRequest) -> HttpResponse:
        return json_response(config_to_json(self.plane.model_config(*_model(request))))

    async def model_stats(self, request: HttpRequest) -> HttpResponse:
        name, version = request.params.get("model", ""), request.params.get("version", "")
        return json_response(statistics_json(self.plane.statistics(name, version)))

    # ---- repository

    async def repository_index(self, request: HttpRequest) -> HttpResponse:
        ready_only = json_body(request, self.limits).get("ready", False)
        if not isinstance(ready_only, bool):
            raise InvalidArgument("'ready' must be a boolean")
        return json_response([asdict(r) for r in self.plane.repository_index(ready_only)])

    async def load(self, request: HttpRequest) -> HttpResponse:
        parameters = json_body(request, self.limits).get("parameters", {})
        if not isinstance(parameters, dict):
            raise InvalidArgument("'parameters' must be a JSON object")
        if parameters:
            raise Unimplemented(
                "load parameters (config or file overrides) are not accepted: change the model's files "
                "in the repository and load it again"
            )
        await self.plane.load_model(request.params["model"])
        return HttpResponse()

    async def unload(self, request: HttpRequest) -> HttpResponse:
        json_body(request, self.limits)
        await self.plane.unload_model(request.params["model"])
        return HttpResponse()

    # ---- traces (Triton's trace extension)

    async def trace_setting(self, request: HttpRequest) -> HttpResponse:
        """GET reads the settings (global, or a model's); POST updates the ones it names."""
        update = trace_update(json_body(request, self.limits)) if request.method == "POST" else None
        return json_response(self.plane.tracing_json(request.params.get("model", ""), update))

    # ---- the API's description

    async def openapi_yaml(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, self._openapi_yaml, "application/yaml")

    async def openapi_json(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, self._openapi_json, JSON)

    def routes(self) -> list[Route]:
        routes = [
            Route("GET", "/v2/health/live", self.live),
            Route("GET", "/v2/health/ready", self.ready),
            Route("GET", "/v2", self.server_metadata),
            Route("GET", "/v2/models/stats", self.model_stats),  # before /v2/models/{model}
            Route("POST", "/v2/repository/index", self.repository_index),
            Route("POST", "/v2/repository/models/{model}/load", self.load),
            Route("POST", "/v2/repository/models/{model}/unload", self.unload),
            Route("GET", "/v2/trace/setting", self.trace_setting),
            Route("POST", "/v2/trace/setting", self.trace_setting),
            Route("GET", "/v2/models/{model}/trace/setting", self.trace_setting),  # before /v2/models/{model}...
            Route("POST", "/v2/models/{model}/trace/setting", self.trace_setting),
            Route("GET", "/openapi.yaml", self.openapi_yaml),
            Route("GET", "/openapi.json", self.openapi_json),
        ]
        for suffix, method, handler in (
            ("/infer", "POST", self.infer),
            ("/generate", "POST", self.generate),
            ("/generate_stream", "POST", self.generate_stream),
            ("", "GET", self.model_metadata),
            ("/ready", "GET", self.model_ready),
            ("/config", "GET", self.model_config),
            ("/stats", "GET", self.model_stats),
        ):
            routes.append(Route(method, f"/v2/models/{{model}}{suffix}", handler))
            routes.append(Route(method, f"/v2/models/{{model}}/versions/{{version}}{suffix}", handler))
        routes += self.shared_memory.routes()
        if self.dashboard is not None:
            routes += DashboardRoutes(self.dashboard).routes()
        routes += FeedbackRoutes(self.plane, self.limits).routes() + MonitoringRoutes(self.plane).routes()
        if self.applications is not None:  # after the others: /{app}/predict matches any first segment
            routes += ClipperManagementRoutes(self.applications, self.limits).routes()  # Clipper's /admin/*
            routes += ApplicationRoutes(self.applications, self.limits).routes()
        return routes


def _described(response: InferResponse) -> tuple[str, str]:
    return response.model_version, response.id


def trace_update(body: dict[str, Any]) -> Update:
    """Triton's trace setting request: trace_level a list of strings, every other setting a
    string (a list of one string is taken too), null to clear; InvalidArgument otherwise."""
    update: Update = {}
    for name, value in body.items():
        if value is None:
            update[name] = None
        elif isinstance(value, str) and name != "trace_level":
            update[name] = [value]
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            update[name] = value
        else:
            shape = "a list of strings" if name == "trace_level" else "a string (or a list of one string)"
            raise InvalidArgument(f"trace setting {name[:64]!r}: expected {shape} or null, got {type(value).__name__}")
    return update


def check(rule: Rule, request: HttpRequest) -> None:
    """PermissionDenied (403) when ``rule`` refuses the request (no header is ever logged)."""
    reason = rule.denial(request.peer, request.headers.get)
    if reason is not None:
        log.debug("refused a %s request from %s", rule.api, request.peer)
        raise PermissionDenied(reason)


def _checked(handler: RouteHandler, rule: Rule) -> RouteHandler:
    async def checked(request: HttpRequest) -> HttpResponse:
        check(rule, request)
        return await handler(request)

    return checked


def guard_routes(routes: list[Route], access: AccessPolicy) -> list[Route]:
    """Each route's access rule (server/access.py) in front of its handler; routes open to all
    keep their handler as it is."""
    guarded = []
    for route in routes:
        rule = access.http_rule(route.path, route.method)
        guarded.append(route if rule is None else Route(route.method, route.path, _checked(route.handler, rule)))
    return guarded


@dataclass(frozen=True)
class HttpOptions:
    host: str
    port: int  # 0 picks a free one
    limits: BodyLimits  # larger bodies get 413
    grace_secs: float  # on shutdown, how long in-flight requests may take
    access: AccessPolicy = field(default_factory=AccessPolicy)  # who may call what (server/access.py)
    tls: ReloadingTls | None = None  # None: plaintext
    applications: ApplicationManager | None = None  # Clipper's REST and admin routes of applications
    handshake_timeout_s: float = 10.0  # a TLS handshake not done by then is cut
    connection_limits: HttpLimits = field(default_factory=HttpLimits)  # timeouts, connections, load
    dashboard: Dashboard | None = None  # GET /dashboard and its feed (None: not served)


async def start_http_server(plane: DataPlane, opts: HttpOptions) -> tuple[HttpServer, int]:
    """Serves the API; returns the server (``stop(grace)`` ends it) and the bound port."""
    api = RestApi(plane, opts.limits, opts.access, opts.applications, opts.dashboard)
    server = HttpServer(api.handle, error_response, opts.limits.max_body_bytes, opts.connection_limits)
    context = opts.tls.front if opts.tls is not None else None
    port = await server.start(opts.host, opts.port, context, opts.handshake_timeout_s)
    return server, port
