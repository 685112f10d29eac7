"""The few KServe v2 HTTP calls the admin client makes (server metadata, repository index, load,
unload, readiness), over the standard library's urllib so the client needs no HTTP package."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from clipperd_admin.errors import ServerError


@dataclass(frozen=True)
class ModelStatus:
    """One row of the server's repository index."""

    name: str
    version: int | None  # None: the model has no loaded or failed version (yet)
    state: str  # READY, UNAVAILABLE, LOADING, UNLOADING, or "" when never loaded
    reason: str


class ServerApi:
    def __init__(self, http_url: str, timeout: float = 30.0, headers: Mapping[str, str] | None = None) -> None:
        self.base = base_url(http_url)
        self.timeout = timeout
        self.headers = dict(headers or {})

    # -- calls ------------------------------------------------------------------------------

    def index(self) -> list[ModelStatus]:
        rows = self._call("POST", "/v2/repository/index", {})
        if not isinstance(rows, list):
            raise ServerError(f"unexpected repository index answer from {self.base}: {str(rows)[:200]}")
        return [_status(row) for row in rows]

    def load(self, model: str) -> None:
        self._call("POST", f"/v2/repository/models/{_quote(model)}/load", {})

    def unload(self, model: str) -> None:
        self._call("POST", f"/v2/repository/models/{_quote(model)}/unload", {})

    def is_ready(self, model: str, version: int | None = None) -> bool:
        path = f"/v2/models/{_quote(model)}" + (f"/versions/{version}" if version is not None else "") + "/ready"
        try:
            self._call("GET", path)
        except ServerError as error:
            if error.status in (400, 404, 503):
                return False
            raise
        return True

    def model_config(self, model: str) -> dict[str, Any]:
        config = self._call("GET", f"/v2/models/{_quote(model)}/config")
        if not isinstance(config, dict):
            raise ServerError(f"unexpected model config answer from {self.base}: {str(config)[:200]}")
        return config

    def control_mode(self) -> str:
        """``explicit``, ``poll`` or ``none``: the server's ``--model-control-mode``, as its metadata
        (``GET /v2``) reports it in ``parameters.model_control_mode``."""
        metadata = self._call("GET", "/v2")
        parameters = metadata.get("parameters") if isinstance(metadata, dict) else None
        mode = parameters.get("model_control_mode") if isinstance(parameters, dict) else None
        if mode not in ("none", "explicit", "poll"):
            raise ServerError(
                f"the server at {self.base} does not report its model control mode in GET /v2 "
                "(not clipperd, or an older one): pass control_mode= to ClipperdAdmin"
            )
        return str(mode)

    def wait(self, check: Callable[[], bool], timeout: float) -> bool:
        """Polls ``check()`` until it is true or ``timeout`` seconds pass; whether it became true."""
        end = time.monotonic() + timeout
        while True:
            if check():
                return True
            if time.monotonic() >= end:
                return False
            time.sleep(0.1)

    # -- plumbing ---------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            return send(self.base, method, path, body, self.timeout, self.headers)
        except urllib.error.HTTPError as error:
            raise ServerError(_error_text(error), error.code) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ServerError(f"cannot reach the clipperd server at {self.base}: {reason}") from None


def base_url(http_url: str) -> str:
    """``http://host:port`` from ``host:port`` or a URL, without a trailing slash."""
    return (http_url if "://" in http_url else f"http://{http_url}").rstrip("/")


def auth_headers(headers: Mapping[str, str] | None, token: str | None) -> dict[str, str]:
    """The headers every call sends: ``headers`` (e.g. a restricted API's, as the server's
    ``--http-restricted-api`` names it) and, with ``token``, ``Authorization: Bearer <token>``
    (the server's ``--management-token``)."""
    merged = dict(headers or {})
    if token:
        merged["Authorization"] = f"Bearer {token}"
    return merged


def send(base: str, method: str, path: str, body: Any, timeout: float, headers: Mapping[str, str] | None = None) -> Any:
    """One JSON call: the decoded answer, None for an empty one. urllib's errors pass through:
    each caller words them."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        payload = answer.read()
    return json.loads(payload) if payload else None


def _quote(model: str) -> str:
    return urllib.parse.quote(model, safe="")


def _error_text(error: urllib.error.HTTPError) -> str:
    raw = error.read()
    try:
        message = json.loads(raw).get("error", "")
    except (ValueError, AttributeError):
        message = raw.decode(errors="replace")
    return str(message) or f"HTTP {error.code} {error.reason}"


def _status(row: dict[str, Any]) -> ModelStatus:
    version = str(row.get("version", ""))
    return ModelStatus(
        name=str(row.get("name", "")),
        version=int(version) if version.isdigit() else None,
        state=str(row.get("state", "")),
        reason=str(row.get("reason", "")),
    )
