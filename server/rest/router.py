"""Routes of the REST API: paths with ``{placeholders}`` (one segment each) or a final
``{name:*}`` (the rest of the path), matched segment by segment."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from server.rest.http_server import HttpRequest, HttpResponse

RouteHandler = Callable[[HttpRequest], Awaitable[HttpResponse]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: RouteHandler

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.path.split("/"))


class NoRoute(Exception):
    """No route has the path (``allowed`` empty: 404) or none has it for the method (405)."""

    def __init__(self, allowed: set[str]) -> None:
        super().__init__("no route")
        self.allowed = allowed


def _match(parts: tuple[str, ...], segments: list[str]) -> dict[str, str] | None:
    params: dict[str, str] = {}
    for i, part in enumerate(parts):
        if part.startswith("{") and part.endswith(":*}"):
            params[part[1:-3]] = "/".join(segments[i:])
            return params
        if i >= len(segments):
            return None
        segment = segments[i]
        if part.startswith("{"):
            if not segment:
                return None
            params[part[1:-1]] = segment
        elif part != segment:
            return None
    return params if len(parts) == len(segments) else None


class Router:
    def __init__(self, routes: list[Route]) -> None:
        self.routes = list(routes)
        self._parts = [(route, route.parts) for route in self.routes]

    def resolve(self, method: str, path: str) -> tuple[RouteHandler, dict[str, str]]:
        segments = path.split("/")
        allowed: set[str] = set()
        wanted = "GET" if method == "HEAD" else method
        for route, parts in self._parts:
            params = _match(parts, segments)
            if params is None:
                continue
            if route.method in (wanted, "*"):
                return route.handler, params
            allowed.add(route.method)
        raise NoRoute(allowed)
