"""JSON answers of the REST API."""

from __future__ import annotations

import json
from typing import Any

from server.rest.http_server import HttpResponse

JSON = "application/json"


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> HttpResponse:
    return HttpResponse(status, json.dumps(obj).encode(), JSON, headers or {})


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> HttpResponse:
    return json_response({"error": message}, status, headers)
