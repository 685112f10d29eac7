"""The dashboard's routes on the HTTP port: the page, its script and style, and its JSON feed
(server/dashboard/); read-only, in the statistics access class like the statistics routes."""

from __future__ import annotations

from server.dashboard.feed import Dashboard
from server.dashboard.page import SECURITY_HEADERS, load_assets
from server.rest.answers import JSON
from server.rest.http_server import HttpRequest, HttpResponse
from server.rest.router import Route, RouteHandler

FEED_PATH = "/v2/dashboard"


class DashboardRoutes:
    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard
        self._assets = load_assets()

    def _asset(self, path: str) -> RouteHandler:
        body, content_type = self._assets[path]

        async def asset(request: HttpRequest) -> HttpResponse:
            return HttpResponse(200, body, content_type, dict(SECURITY_HEADERS))

        return asset

    async def feed(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, self.dashboard.json(), JSON, dict(SECURITY_HEADERS))

    def routes(self) -> list[Route]:
        return [Route("GET", path, self._asset(path)) for path in self._assets] + [Route("GET", FEED_PATH, self.feed)]
