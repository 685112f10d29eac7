"""``GET /v2/models/{m}[/versions/{v}]/monitoring``: a model version's monitors as JSON,
``{"name", "version", "drift", "feedback"}``, each part null when its monitor is off."""

from __future__ import annotations

from server.core.dataplane import DataPlane
from server.rest.answers import json_response
from server.rest.http_server import HttpRequest, HttpResponse
from server.rest.router import Route


class MonitoringRoutes:
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/v2/models/{model}/monitoring", self.status),
            Route("GET", "/v2/models/{model}/versions/{version}/monitoring", self.status),
        ]

    async def status(self, request: HttpRequest) -> HttpResponse:
        model = self.plane.repository.get(request.params["model"], request.params.get("version", ""))
        drift = getattr(model, "drift", None)
        return json_response(
            {
                "name": model.name,
                "version": str(model.version),
                "drift": None if drift is None else drift.status(),
                "feedback": None if model.feedback is None else model.feedback.status(),
            }
        )
