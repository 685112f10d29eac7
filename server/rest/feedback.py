"""``POST /v2/models/{m}[/versions/{v}]/feedback`` with ``{"id": ..., "label": ...}``: a true
label for a prediction served earlier (server/monitoring/feedback). Without a version, the label
goes to the version(s) that served the id, so clients need not know which one answered (a canary
or the stable version)."""

from __future__ import annotations

from typing import Any

from backends.common.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from server.core.dataplane import DataPlane
from server.core.model_version import ModelVersion
from server.monitoring.feedback import FeedbackMonitor
from server.monitoring.feedback.monitor import MAX_ID_CHARS
from server.rest.answers import json_response
from server.rest.body import BodyLimits, decoded_body
from server.rest.codec import parse_json
from server.rest.http_server import HttpRequest, HttpResponse
from server.rest.router import Route

MAX_FEEDBACK_BYTES = 64 * 1024  # a label is a class or a few numbers: far below this


class FeedbackRoutes:
    def __init__(self, plane: DataPlane, limits: BodyLimits) -> None:
        self.plane = plane
        self.limits = limits

    def routes(self) -> list[Route]:
        return [
            Route("POST", "/v2/models/{model}/feedback", self.feedback),
            Route("POST", "/v2/models/{model}/versions/{version}/feedback", self.feedback),
        ]

    async def feedback(self, request: HttpRequest) -> HttpResponse:
        request_id, label = _id_and_label(self._body(request))
        monitors = self._monitors(request.params["model"], request.params.get("version", ""))
        holding = [m for m in monitors if m.holds(request_id)] or monitors[-1:]  # none: the newest counts it
        return json_response({"joined": [m.label(request_id, label) for m in holding]})

    def _body(self, request: HttpRequest) -> dict[str, Any]:
        body = decoded_body(request, self.limits)
        if len(body) > MAX_FEEDBACK_BYTES:
            raise ResourceExhausted(f"a feedback body is at most {MAX_FEEDBACK_BYTES} bytes, not {len(body)}")
        return parse_json(body, "feedback body")

    def _monitors(self, name: str, version: str) -> list[FeedbackMonitor]:
        """The feedback monitors of the version named, or of every version of the model served now."""
        repository = self.plane.repository
        versions: list[ModelVersion] = [repository.get(name, version)] if version else repository.versions(name)
        if not versions:
            repository.get(name)  # the error a client should see (unknown model, not ready)
        monitors = [v.feedback for v in versions if v.feedback is not None]
        if not monitors:
            raise FailedPrecondition(
                f"model '{name[:64]}' has no version with feedback on (config parameters feedback_enable)"
            )
        return monitors


def _id_and_label(body: dict[str, Any]) -> tuple[str, Any]:
    request_id, label = body.get("id"), body.get("label")
    if not isinstance(request_id, str) or not request_id:
        raise InvalidArgument("feedback needs 'id': the id of the inference request (or the one its answer gave)")
    if len(request_id) > MAX_ID_CHARS:
        raise InvalidArgument(f"'id' is at most {MAX_ID_CHARS} characters (longer ids are not kept)")
    if label is None:
        raise InvalidArgument("feedback needs 'label': the true class or value")
    return request_id, label
