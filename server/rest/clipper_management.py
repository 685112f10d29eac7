"""Clipper's management REST API (``/admin/add_app``, ``/admin/add_model``, ...) and its JSON
``GET /metrics``, as Clipper's ``clipper_admin`` package calls them, on the HTTP port and over
clipperd's own applications and model repository. Clipper's bodies and answers: a success is a
sentence (``Successfully added application with name 'a'``) or JSON; every refusal is 400 with
a sentence, a malformed body ``Error parsing JSON: <why>. Expected JSON schema: <schema>``;
``get_application`` / ``get_model`` of an unknown name answer ``{}`` (200), as Clipper's did.

The mapping:
- an application added here is a clipperd application with the ``single`` policy (Clipper's
  applications query one model) and no model until one is linked;
- ``add_model`` registers a version of a model that is in the repository and loaded (Clipper's
  versions are clipperd's version folders) and makes it the model's current version;
- linking a model pins its current version in the application; ``set_model_version`` (and a new
  ``add_model``) pins the chosen version in every application that links the model.

Applications, links and pinned versions are kept by the application state store
(server/applications/state.py). Registrations (labels, input type, container name) and an
application's Clipper input type live in this process only: after a restart a model is
registered again with ``add_model`` (an application's input type is then read from its model)."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from backends.common.errors import AlreadyExists, ClipperdError, InvalidArgument, NotFound
from schedulers.applications.application import Application
from schedulers.applications.definition import MAX_MODELS, MAX_SLO_MICROS, NAME
from schedulers.stats import LATENCY_BUCKETS_NS
from server.applications.manager import ApplicationManager
from server.core.status import HTTP_STATUS
from server.rest.answers import json_response
from server.rest.body import BodyLimits, json_body
from server.rest.http_server import HttpRequest, HttpResponse
from server.rest.router import Route

TEXT = "text/plain; charset=utf-8"
MAX_TEXT = 1024  # characters of a label, a container name, a data path, a version
MAX_DEFAULT_OUTPUT = 4096  # characters of an application's default output
MAX_LABELS = 64
MAX_REGISTERED = 4096  # registered (model, version) pairs, all models together
CONTAINERLESS = "NO_CONTAINER"  # clipper_admin's image name for a model it did not deploy

# Clipper's input types and their aliases (its parse_input_type), by the name Clipper reports
INPUT_TYPES = {
    "bytes": ("bytes", "byte", "b"),
    "integers": ("integers", "ints", "integer", "int", "i"),
    "floats": ("floats", "float", "f"),
    "doubles": ("doubles", "double", "d"),
    "strings": ("strings", "string", "str", "strs", "s"),
}
_CANONICAL = {alias: name for name, aliases in INPUT_TYPES.items() for alias in aliases}
# the KServe data types a model's input may have for each Clipper input type
_FITS = {
    "bytes": ("BYTES", "UINT8", "INT8"),
    "integers": ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"),
    "floats": ("FP16", "FP32", "FP64", "BF16"),
    "doubles": ("FP16", "FP32", "FP64", "BF16"),
    "strings": ("BYTES",),
}
_INPUT_TYPE_OF = {"BYTES": "strings", "FP64": "doubles", "FP32": "floats", "FP16": "floats", "BF16": "floats"}

_TYPES = " | ".join(f'"{t}"' for t in INPUT_TYPES)
SCHEMAS = {
    "add_app": f'{{"name": string, "input_type": {_TYPES}, "default_output": string, "latency_slo_micros": int}}',
    "delete_app": '{"name": string}',
    "add_model_links": '{"app_name": string, "model_names": [string]}',
    "delete_model_links": '{"app_name": string, "model_names": [string]}',
    "add_model": (
        f'{{"model_name": string, "model_version": string, "labels": [string], "input_type": {_TYPES}, '
        '"container_name": string, "model_data_path": string, "batch_size": int}'
    ),
    "verbose": '{"verbose": bool}',
    "get_application": '{"name": string}',
    "get_linked_models": '{"app_name": string}',
    "get_model": '{"model_name": string, "model_version": string}',
    "set_model_version": '{"model_name": string, "model_version": string}',
}


class BadBody(Exception):
    """A body that does not follow the route's schema: 400, with the schema."""


class Refused(Exception):
    """A well-formed request Clipper's management frontend refuses: 400 with the sentence."""


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, dict):
        return "object"
    return "array" if isinstance(value, list) else "string" if isinstance(value, str) else "number"


def _get(body: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    if key not in body:
        raise BadBody(f"JSON object does not have required key: {key}")
    value = body[key]
    if isinstance(value, bool) and kind is not bool:
        raise BadBody(f"JSON key {key} must be {what}, not bool")
    if not isinstance(value, kind):
        raise BadBody(f"JSON key {key} must be {what}, not {_kind(value)}")
    return value


def _text(body: dict[str, Any], key: str, limit: int = MAX_TEXT) -> str:
    value: str = _get(body, key, str, "a string")
    if len(value) > limit:
        raise BadBody(f"JSON key {key} is longer than {limit} characters")
    return value


def _name(body: dict[str, Any], key: str) -> str:
    value = _text(body, key)
    if not NAME.match(value):
        raise BadBody(f"JSON key {key} must be 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit")
    return value


def _input_type(body: dict[str, Any]) -> str:
    value = _text(body, "input_type")
    if value not in _CANONICAL:
        raise BadBody(f"{value[:64]} is not a valid input type")
    return _CANONICAL[value]


def _int(body: dict[str, Any], key: str) -> int:
    value: int = _get(body, key, int, "an integer")
    return value


def _strings(body: dict[str, Any], key: str, limit: int) -> list[str]:
    values: list[Any] = _get(body, key, list, "an array of strings")
    if len(values) > limit:
        raise BadBody(f"JSON key {key} holds more than {limit} strings")
    if not all(isinstance(v, str) and len(v) <= MAX_TEXT for v in values):
        raise BadBody(f"JSON key {key} must hold only strings of at most {MAX_TEXT} characters")
    return values


@dataclass(frozen=True)
class Registration:
    """A model version registered through ``add_model``, with what Clipper kept of it."""

    name: str
    version: str
    input_type: str
    labels: list[str]
    container_name: str
    model_data_path: str
    batch_size: int

    def to_json(self, current: bool) -> dict[str, Any]:
        return {
            "model_name": self.name,
            "model_version": self.version,
            "input_type": self.input_type,
            "labels": self.labels,
            "container_name": self.container_name,
            "model_data_path": self.model_data_path,
            "is_current_version": current,
        }


@dataclass
class Registry:
    """This process's registrations, each model's current version, applications' input types."""

    models: dict[str, dict[str, Registration]] = field(default_factory=dict)
    current: dict[str, str] = field(default_factory=dict)
    app_input_types: dict[str, str] = field(default_factory=dict)
    app_added: dict[str, float] = field(default_factory=dict)  # monotonic time, for the meters

    def count(self) -> int:
        return sum(map(len, self.models.values()))

    def get(self, name: str, version: str) -> Registration | None:
        return self.models.get(name, {}).get(version)


Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class ClipperManagementRoutes:
    def __init__(self, manager: ApplicationManager, limits: BodyLimits) -> None:
        self.manager = manager
        self.repository = manager.repository
        self.limits = limits
        self.registry = Registry()
        self.started = time.monotonic()

    def routes(self) -> list[Route]:
        handlers: dict[str, Handler] = {
            "add_app": self.add_app,
            "delete_app": self.delete_app,
            "add_model_links": self.add_model_links,
            "delete_model_links": self.delete_model_links,
            "add_model": self.add_model,
            "get_all_applications": self.get_all_applications,
            "get_application": self.get_application,
            "get_linked_models": self.get_linked_models,
            "get_all_models": self.get_all_models,
            "get_model": self.get_model,
            "set_model_version": self.set_model_version,
        }
        routes = [Route("POST", f"/admin/{path}", self._route(path, h)) for path, h in handlers.items()]
        return [*routes, Route("GET", "/admin/ping", self.ping), Route("GET", "/metrics", self.metrics)]

    def _route(self, path: str, handler: Handler) -> Callable[[HttpRequest], Awaitable[HttpResponse]]:
        schema = SCHEMAS["verbose" if path.startswith("get_all_") else path]

        async def route(request: HttpRequest) -> HttpResponse:
            try:
                body = json_body(request, self.limits)
                answer = await handler(body)
            except (BadBody, InvalidArgument) as error:
                why = error.message if isinstance(error, ClipperdError) else str(error)
                return _text_response(f"Error parsing JSON: {why}. Expected JSON schema: {schema}", 400)
            except Refused as error:
                return _text_response(str(error), 400)
            except ClipperdError as error:  # the state store gone (503), a refusal of the manager's
                status = HTTP_STATUS[error.code]
                return _text_response(error.message, 400 if status in (404, 409) else status)
            return _text_response(answer) if isinstance(answer, str) else json_response(answer)

        return route

    # ---- applications ----------------------------------------------------------------------

    async def add_app(self, body: dict[str, Any]) -> str:
        name = _name(body, "name")
        input_type = _input_type(body)
        default_output = _text(body, "default_output", MAX_DEFAULT_OUTPUT)
        slo = _int(body, "latency_slo_micros")
        if not 0 < slo <= MAX_SLO_MICROS:
            raise Refused(f"latency_slo_micros must be between 1 and {MAX_SLO_MICROS}, not {slo}")
        definition = {"name": name, "models": [], "policy": "single", "default_output": default_output}
        try:
            await self.manager.register({**definition, "slo_micros": slo})
        except AlreadyExists as error:
            raise Refused(f"application '{name}' already exists" if name in self.manager else error.message) from None
        self.registry.app_input_types[name] = input_type
        self.registry.app_added[name] = time.monotonic()
        return f"Successfully added application with name '{name}'"

    async def delete_app(self, body: dict[str, Any]) -> str:
        name = _name(body, "name")
        if name not in self.manager:
            raise Refused(f"Application '{name}' does not exist")
        await self.manager.delete(name)
        self.registry.app_input_types.pop(name, None)
        self.registry.app_added.pop(name, None)
        return f"Successfully deleted application with name '{name}'"

    async def add_model_links(self, body: dict[str, Any]) -> str:
        app_name = _name(body, "app_name")
        names = _strings(body, "model_names", MAX_MODELS)
        app = self.manager.lookup(app_name)
        if app is None:
            raise Refused(f"No app with name '{app_name}' exists.")
        app_type = self.app_input_type(app)
        for model in names:
            version = self.registry.current.get(model)
            if version is None:
                raise Refused(f"No model with name '{model[:128]}' exists.")
            model_type = self.registry.models[model][version].input_type
            if app_type and model_type != app_type:
                raise Refused(
                    f"Model with name '{model}' has incompatible input_type '{model_type}'. "
                    f"Requested app to link to has input_type '{app_type}'."
                )
        if not names:
            raise Refused(f"Please provide the name of the model that you want to link to the application '{app_name}'")
        if len(names) > 1:
            raise Refused(
                f"Applications must be linked with at most one model. Attempted to add links to {len(names)} models."
            )
        model = names[0]
        linked = app.model_names()
        if model in linked:
            raise Refused(f"The model with name '{model}' is already linked to '{app_name}'")
        if linked:
            raise Refused(f"A model with name {linked[0]} is already linked to '{app_name}'.")
        await self.manager.link(app_name, {"name": model, "version": self.registry.current[model]})
        return f"Successfully linked model with name '{model}' to application '{app_name}'"

    async def delete_model_links(self, body: dict[str, Any]) -> str:
        app_name = _name(body, "app_name")
        names = _strings(body, "model_names", MAX_MODELS)
        app = self.manager.lookup(app_name)
        if app is None:
            raise Refused(f"No app with name {app_name} exists.")
        for model in names:
            if model not in app.model_names():
                raise Refused(f"Cannot remove nonexistent link between app {app_name} and model {model[:128]}")
        for model in dict.fromkeys(names):
            await self.manager.unlink(app_name, model)
        return "Success!"

    def app_input_type(self, app: Application) -> str:
        """The input type given at add_app, else the one its first model's input fits, else ""."""
        known = self.registry.app_input_types.get(app.name)
        if known is not None or not app.definition.models:
            return known or ""
        first = app.definition.models[0]
        versions = self.repository.versions(first.name)
        chosen = [v for v in versions if str(v.version) == first.version] if first.version else versions[-1:]
        if not chosen or len(chosen[0].config.input) != 1:
            return ""
        datatype = chosen[0].signature.inputs[chosen[0].config.input[0].name].datatype
        return _INPUT_TYPE_OF.get(datatype, "bytes" if datatype in ("UINT8", "INT8") else "integers")

    def _app_json(self, app: Application) -> dict[str, Any]:
        d = app.definition
        default = d.default_output
        return {
            "input_type": self.app_input_type(app),
            "default_output": default if isinstance(default, str) else _json_text(default),
            "latency_slo_micros": d.slo_micros,
            "name": app.name,
            "linked_models": app.model_names(),
        }

    async def get_all_applications(self, body: dict[str, Any]) -> list[Any]:
        verbose: bool = _get(body, "verbose", bool, "a bool")
        apps = [app for _, app in sorted(self.manager.apps.items())]
        return [self._app_json(app) for app in apps] if verbose else [app.name for app in apps]

    async def get_application(self, body: dict[str, Any]) -> dict[str, Any]:
        app = self.manager.lookup(_text(body, "name"))
        return {} if app is None else self._app_json(app)

    async def get_linked_models(self, body: dict[str, Any]) -> list[str]:
        name = _text(body, "app_name")
        app = self.manager.lookup(name)
        if app is None:
            raise Refused(f"No application with name '{name[:128]}' exists.")
        return app.model_names()

    # ---- models ----------------------------------------------------------------------------

    async def add_model(self, body: dict[str, Any]) -> str:
        name, version = _name(body, "model_name"), _text(body, "model_version")
        labels = _strings(body, "labels", MAX_LABELS)  # checked in Clipper's order of the keys
        reg = Registration(
            name,
            version,
            _input_type(body),
            labels,
            _text(body, "container_name"),
            _text(body, "model_data_path"),
            _int(body, "batch_size"),
        )
        if reg.batch_size <= 0 and reg.batch_size != -1:
            raise Refused("The batch size must be positive or DEFAULT_BATCH_SIZE, which is -1")
        if self.registry.get(reg.name, reg.version) is not None:
            raise Refused(f"model with name '{reg.name}' and version '{reg.version}' already exists")
        if self.registry.count() >= MAX_REGISTERED:
            raise Refused(f"{MAX_REGISTERED} model versions are registered, the most this server keeps")
        self._check_in_repository(reg)
        self._check_linked_apps(reg.name, reg.input_type)
        self.registry.models.setdefault(reg.name, {})[reg.version] = reg
        await self._make_current(reg.name, reg.version)
        return f"Successfully added model with name '{reg.name}' and input type '{reg.input_type}'"

    def _check_in_repository(self, reg: Registration) -> None:
        """The model is in the repository, the version is loaded, and its one input fits the
        Clipper input type (the application's predict reads the query as that input)."""
        if reg.name not in self.repository.scan() and not self.repository.versions(reg.name):
            raise Refused(
                f"model '{reg.name}' is not in clipperd's model repository: put it there first "
                "(clipperd_admin.ClipperdAdmin deploys Python functions, PyTorch, ONNX, TensorFlow and "
                "scikit-learn models into it), then register it"
            )
        versions = {str(v.version): v for v in self.repository.versions(reg.name)}
        model = versions.get(reg.version)
        if model is None:
            loaded = ", ".join(versions) or "none"
            raise Refused(
                f"model '{reg.name}' has no loaded version '{reg.version[:64]}' in clipperd's model repository "
                f"(loaded versions: {loaded}; a Clipper version is a version folder's number)"
            )
        config = model.config
        if len(config.input) != 1 or len(config.output) != 1:
            raise Refused(f"model '{reg.name}' must have exactly one input and one output to serve an application")
        datatype = model.signature.inputs[config.input[0].name].datatype
        if datatype not in _FITS[reg.input_type]:
            raise Refused(
                f"model '{reg.name}' takes {datatype} input, which Clipper's input type '{reg.input_type}' "
                f"does not fit (fitting types: {', '.join(t for t, fits in _FITS.items() if datatype in fits)})"
            )

    def _check_linked_apps(self, model: str, input_type: str) -> None:
        for app in self.manager.registered():
            app_type = self.app_input_type(app)
            if model in app.model_names() and app_type and app_type != input_type:
                raise Refused(
                    f"Model with name '{model}' is already linked to app '{app.name}' using input type "
                    f"'{app_type}'. The input type you provided for a new version of the model, "
                    f"'{input_type}', is not compatible."
                )

    async def _make_current(self, model: str, version: str) -> None:
        """``version`` serves ``model`` in every application that links it, then is current."""
        for app in list(self.manager.registered()):
            linked = app.definition.linked(model)
            if linked is not None and linked.version != version:
                await self.manager.pin(app.name, {"model": model, "version": version})
        self.registry.current[model] = version

    async def get_all_models(self, body: dict[str, Any]) -> list[Any]:
        verbose: bool = _get(body, "verbose", bool, "a bool")
        regs = [reg for _, versions in sorted(self.registry.models.items()) for reg in versions.values()]
        if not verbose:
            return [f"{reg.name}:{reg.version}" for reg in regs]
        return [reg.to_json(self.registry.current.get(reg.name) == reg.version) for reg in regs]

    async def get_model(self, body: dict[str, Any]) -> dict[str, Any]:
        reg = self.registry.get(_text(body, "model_name"), _text(body, "model_version"))
        return {} if reg is None else reg.to_json(self.registry.current.get(reg.name) == reg.version)

    async def set_model_version(self, body: dict[str, Any]) -> str:
        name, version = _text(body, "model_name"), _text(body, "model_version")
        versions = self.registry.models.get(name)
        if not versions:
            raise Refused(f"Cannot set version for nonexistent model '{name[:128]}'")
        if version not in versions:
            raise Refused(f"Cannot set non-existent version '{version[:64]}' for model with name '{name}'")
        self._check_linked_apps(name, versions[version].input_type)
        try:
            await self._make_current(name, version)
        except NotFound as error:  # unloaded since it was registered
            raise Refused(f"{error.message}: it cannot serve (load it again)") from None
        return f"Successfully set model with name '{name}' to version '{version}'"

    # ---- ping and metrics ------------------------------------------------------------------

    async def ping(self, request: HttpRequest) -> HttpResponse:
        return _text_response("PONG")

    async def metrics(self, request: HttpRequest) -> HttpResponse:
        now = time.monotonic()
        apps = [app for _, app in sorted(self.manager.apps.items())]
        since = {app.name: self.registry.app_added.get(app.name, self.started) for app in apps}
        return json_response(clipper_metrics(apps, since, now))


def clipper_metrics(apps: list[Application], since: dict[str, float], now: float) -> dict[str, list[Any]]:
    """Clipper's query-frontend metrics report: per application a counter of predictions, the
    ratio of default answers, a meter (predictions a second since ``since``) and the latency
    histogram, in microseconds, at the resolution of clipperd's latency buckets. Values are
    strings, as Clipper's report (boost's JSON writer) gives them."""
    report: dict[str, list[Any]] = {"counters": [], "ratio_counters": [], "meters": [], "histograms": []}
    for app in apps:
        m, key = app.metrics, f"app:{app.name}"
        defaults = sum(m.defaults.values())
        report["counters"].append({f"{key}:num_predictions": {"count": str(m.predictions)}})
        ratio = defaults / m.predictions if m.predictions else 0.0
        report["ratio_counters"].append({f"{key}:default_prediction_ratio": {"ratio": _num(ratio)}})
        rate = m.predictions / max(now - since[app.name], 1e-9)
        meter = {"unit": "events per second", "rate": _num(rate)}
        report["meters"].append({f"{key}:prediction_throughput": meter})
        report["histograms"].append({f"{key}:prediction_latency": _histogram(m.latency_buckets, m.latency_ns)})
    return report


def _histogram(buckets: list[int], total_ns: int) -> dict[str, str]:
    """Size, mean (exact), and min, max, p50, p95, p99 as the upper bound of the bucket that holds
    them (the lower bound for min; the largest bound for the overflow bucket)."""
    size = sum(buckets)
    bounds_us = [ns / 1000 for ns in LATENCY_BUCKETS_NS]
    upper = [*bounds_us, bounds_us[-1]]
    lower = [0.0, *bounds_us]
    filled = [i for i, count in enumerate(buckets) if count]
    stats = {"unit": "microseconds", "size": str(size)}
    if not filled:
        return {**stats, **dict.fromkeys(("min", "max", "mean", "p50", "p95", "p99"), "0")}
    stats.update(min=_num(lower[filled[0]]), max=_num(upper[filled[-1]]), mean=_num(total_ns / size / 1000))
    for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        seen, rank = 0, q * size
        for i, count in enumerate(buckets):
            seen += count
            if seen >= rank:
                stats[name] = _num(upper[i])
                break
    return stats


def _num(value: float) -> str:
    return f"{value:.6g}"


def _json_text(value: Any) -> str:
    return json.dumps(value)


def _text_response(text: str, status: int = 200) -> HttpResponse:
    return HttpResponse(status, text.encode(), TEXT)
