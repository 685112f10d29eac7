"""HTTP routes of applications: Clipper's REST API (``POST /{app}/predict``, ``POST
/{app}/update``) and the admin API under ``/admin/applications``. Thin adapters over the
ApplicationManager; the JSON <-> array conversions live here."""

from __future__ import annotations

import asyncio
from math import prod
from typing import Any

import numpy as np

from backends.common import datatypes
from backends.common.errors import ClipperdError, InvalidArgument
from schedulers.applications.application import DEFAULT_UID, Answer, Application
from server.applications.manager import ApplicationManager, AppTensor
from server.core.status import HTTP_STATUS
from server.rest.answers import json_response
from server.rest.body import BodyLimits, json_body
from server.rest.http_server import HttpRequest, HttpResponse
from server.rest.router import Route, RouteHandler

MAX_BATCH = 1024  # rows of one input_batch


def to_array(value: Any, spec: AppTensor, what: str = "input") -> np.ndarray:
    """A JSON input as the application's input array: its data type and shape, or a 400."""
    dtype = datatypes.from_wire(spec.datatype)
    if spec.datatype == "BYTES":
        items = value if isinstance(value, list) else [value]
        if not items or not all(isinstance(v, str) for v in items):
            raise InvalidArgument(f"wrong input type: {what!r} must be a string or a list of strings")
        array = np.array([v.encode() for v in items], dtype=object)
    else:
        if not isinstance(value, list) or not value:
            raise InvalidArgument(f"wrong input type: {what!r} must be a non-empty list of numbers")
        raw = np.asarray(value)
        wanted = dtype.numpy.kind
        allowed = {"b": "b", "i": "i", "u": "iu", "f": "iuf"}.get(wanted, "iuf")
        if raw.dtype.kind not in allowed or (wanted == "u" and raw.dtype.kind == "i" and (raw < 0).any()):
            raise InvalidArgument(f"wrong input type: {what!r} must hold {spec.datatype} values")
        array = raw.astype(dtype.numpy)
    return _shaped(array, spec, what)


def _shaped(array: np.ndarray, spec: AppTensor, what: str) -> np.ndarray:
    dims = spec.dims
    if all(d > 0 for d in dims):
        if list(array.shape) == dims:
            return array
        if array.ndim == 1 and array.size == prod(dims):
            return array.reshape(dims)
    elif len(dims) == array.ndim and all(d < 0 or d == s for d, s in zip(dims, array.shape, strict=True)):
        return array
    raise InvalidArgument(f"wrong input shape: {what!r} has shape {list(array.shape)}, the application takes {dims}")


def to_json(array: np.ndarray) -> Any:
    flat = array.reshape(-1)
    values = [v.decode(errors="replace") if isinstance(v, bytes) else v for v in flat.tolist()]
    return (
        values[0]
        if len(values) == 1
        else (values if array.ndim <= 1 else np.array(values).reshape(array.shape).tolist())
    )


def _label(value: Any) -> np.ndarray:
    if isinstance(value, str):
        return np.array([value.encode()], dtype=object)
    if isinstance(value, bool) or not isinstance(value, int | float | list) or value == []:
        raise InvalidArgument("'label' must be a number, a string or a non-empty list of numbers")
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidArgument("'label' must be a number, a string or a non-empty list of numbers") from None


def _uid(body: dict[str, Any]) -> str:
    uid = body.get("uid", DEFAULT_UID)
    if isinstance(uid, bool) or not isinstance(uid, int | str) or len(str(uid)) > 128:
        raise InvalidArgument("'uid' must be an integer or a string of at most 128 characters")
    return str(uid)


def clipper_error(error: ClipperdError) -> HttpResponse:
    """Clipper's error body: ``{"error": what failed, "cause": why}``."""
    kind = {400: "Bad request", 404: "Application not found", 503: "Unavailable"}.get(HTTP_STATUS[error.code], "Error")
    return json_response({"error": kind, "cause": error.message}, HTTP_STATUS[error.code])


class ApplicationRoutes:
    def __init__(self, manager: ApplicationManager, limits: BodyLimits) -> None:
        self.manager = manager
        self.limits = limits

    def routes(self) -> list[Route]:
        m = self
        return [
            Route("POST", "/admin/applications", m.register),
            Route("GET", "/admin/applications", m.list),
            Route("GET", "/admin/applications/{app}", m.get),
            Route("DELETE", "/admin/applications/{app}", m.delete),
            Route("PATCH", "/admin/applications/{app}", m.patch),
            Route("POST", "/admin/applications/{app}/models", m.link),
            Route("DELETE", "/admin/applications/{app}/models/{model}", m.unlink),
            Route("POST", "/admin/applications/{app}/version", m.pin),
            Route("POST", "/admin/applications/{app}/rollback", m.rollback),
            Route("POST", "/{app}/predict", _clipper(m.predict)),
            Route("POST", "/{app}/update", _clipper(m.update)),
        ]

    def _body(self, request: HttpRequest) -> dict[str, Any]:
        return json_body(request, self.limits)

    # -- Clipper's REST API -------------------------------------------------------------------

    async def predict(self, request: HttpRequest) -> HttpResponse:
        body = self._body(request)
        app = self.manager.get(request.params["app"])
        spec = self.manager.signature(app).input
        uid = _uid(body)
        if ("input" in body) == ("input_batch" in body):
            raise InvalidArgument("send either 'input' or 'input_batch'")
        if "input" in body:
            x = to_array(body["input"], spec)
            return json_response(self._answer(app, await self.manager.predict(app, x, uid)))
        batch = body["input_batch"]
        if not isinstance(batch, list) or not 0 < len(batch) <= MAX_BATCH:
            raise InvalidArgument(f"'input_batch' must be a list of 1 to {MAX_BATCH} inputs")
        rows = [to_array(item, spec, f"input_batch[{i}]") for i, item in enumerate(batch)]
        answers = await asyncio.gather(*(self.manager.predict(app, x, uid) for x in rows))
        return json_response({"batch_predictions": [self._answer(app, a) for a in answers]})

    def _answer(self, app: Application, answer: Answer) -> dict[str, Any]:
        out: dict[str, Any] = {"query_id": self.manager.next_query_id()}
        if answer.output is None:
            out.update(output=app.definition.default_output, default=True, default_explanation=answer.explanation)
        else:
            out.update(output=to_json(answer.output), default=False)
        out["confidence"] = round(answer.confidence, 4)
        return out

    async def update(self, request: HttpRequest) -> HttpResponse:
        body = self._body(request)
        app = self.manager.get(request.params["app"])
        spec = self.manager.signature(app).input
        if "input" not in body or "label" not in body:
            raise InvalidArgument("feedback needs 'input' and 'label' (and optionally 'uid')")
        uid = _uid(body)
        weights = await self.manager.update(app, to_array(body["input"], spec), _label(body["label"]), uid)
        return json_response({"uid": uid, "feedback": app.metrics.feedback, "weights": weights})

    # -- admin ----------------------------------------------------------------------------------

    async def register(self, request: HttpRequest) -> HttpResponse:
        return json_response(await self.manager.register(self._body(request)))

    async def list(self, request: HttpRequest) -> HttpResponse:
        return json_response([app.definition.to_json() for _, app in sorted(self.manager.apps.items())])

    async def get(self, request: HttpRequest) -> HttpResponse:
        return json_response(self.manager.describe(self.manager.get(request.params["app"])))

    async def delete(self, request: HttpRequest) -> HttpResponse:
        await self.manager.delete(request.params["app"])
        return json_response({"name": request.params["app"], "deleted": True})

    async def patch(self, request: HttpRequest) -> HttpResponse:
        return json_response(await self.manager.update_definition(request.params["app"], self._body(request)))

    async def link(self, request: HttpRequest) -> HttpResponse:
        return json_response(await self.manager.link(request.params["app"], self._body(request)))

    async def unlink(self, request: HttpRequest) -> HttpResponse:
        return json_response(await self.manager.unlink(request.params["app"], request.params["model"]))

    async def pin(self, request: HttpRequest) -> HttpResponse:
        return json_response(await self.manager.pin(request.params["app"], self._body(request)))

    async def rollback(self, request: HttpRequest) -> HttpResponse:
        return json_response(await self.manager.rollback(request.params["app"], self._body(request)))


def _clipper(handler: RouteHandler) -> RouteHandler:
    """Clipper's routes answer errors in Clipper's shape."""

    async def wrapped(request: HttpRequest) -> HttpResponse:
        try:
            return await handler(request)
        except ClipperdError as error:
            return clipper_error(error)

    return wrapped
