"""Python client of clipperd's application admin API (in the spirit of Clipper's clipper_admin):
register applications, link and unlink models, pin and roll back versions, change the default
output, the latency objective, the confidence threshold or the policy.

    from clipperd_admin import ApplicationAdmin
    admin = ApplicationAdmin("http://127.0.0.1:8000")
    admin.register_application("digits", ["mnist_a", "mnist_b"], policy="exp4",
                               default_output=-1, slo_micros=20_000)

Standard library only (urllib). Every method returns the server's JSON answer; an error answer
raises ServerError (an AdminError) with the HTTP status and the server's message (status 0: no
answer)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from clipperd_admin.errors import ServerError
from clipperd_admin.server_api import auth_headers, base_url, send

ModelRef = str | dict[str, Any]  # "name" or {"name": ..., "version": ...}


def _model(ref: ModelRef) -> dict[str, Any]:
    return {"name": ref} if isinstance(ref, str) else dict(ref)


class ApplicationAdmin:
    """``headers``: sent with every call (a restricted API's header); ``token``: the server's
    ``--management-token``, sent as ``Authorization: Bearer <token>``. A server refuses the admin
    API to clients that are not on its loopback address unless one of them opens it."""

    def __init__(
        self,
        http_url: str,
        timeout_s: float = 30.0,
        *,
        headers: Mapping[str, str] | None = None,
        token: str | None = None,
    ) -> None:
        self.base = base_url(http_url)
        self.timeout_s = timeout_s
        self.headers = auth_headers(headers, token)

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            return send(self.base, method, path, body, self.timeout_s, self.headers)
        except urllib.error.HTTPError as error:
            text = error.read().decode(errors="replace")
            try:
                message = json.loads(text).get("error", text)
            except (ValueError, AttributeError):
                message = text
            raise ServerError(f"{method} {path}: HTTP {error.code}: {message}", error.code) from None
        except (urllib.error.URLError, OSError) as error:
            raise ServerError(f"{method} {path}: no answer from {self.base}: {error}") from None

    @staticmethod
    def _app(name: str) -> str:
        return "/admin/applications/" + urllib.parse.quote(name, safe="")

    def register_application(
        self,
        name: str,
        models: list[ModelRef],
        policy: str = "single",
        default_output: Any = -1,
        slo_micros: int = 100_000,
        confidence_threshold: float = 0.0,
        seed: int | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": name,
            "models": [_model(m) for m in models],
            "policy": policy,
            "default_output": default_output,
            "slo_micros": slo_micros,
            "confidence_threshold": confidence_threshold,
        }
        if seed is not None:
            body["seed"] = seed
        return self._call("POST", "/admin/applications", body)  # type: ignore[no-any-return]

    def list_applications(self) -> list[dict[str, Any]]:
        return self._call("GET", "/admin/applications")  # type: ignore[no-any-return]

    def get_application(self, name: str) -> dict[str, Any]:
        """The definition, the policy state's summary (weights) and the metrics."""
        return self._call("GET", self._app(name))  # type: ignore[no-any-return]

    def delete_application(self, name: str) -> dict[str, Any]:
        return self._call("DELETE", self._app(name))  # type: ignore[no-any-return]

    def link_model_to_app(self, app: str, model: str, version: int | str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"name": model}
        if version is not None:
            body["version"] = version
        return self._call("POST", self._app(app) + "/models", body)  # type: ignore[no-any-return]

    def unlink_model_from_app(self, app: str, model: str) -> dict[str, Any]:
        path = self._app(app) + "/models/" + urllib.parse.quote(model, safe="")
        return self._call("DELETE", path)  # type: ignore[no-any-return]

    def set_model_version(self, app: str, model: str, version: int | str) -> dict[str, Any]:
        """Pins ``model`` to ``version`` in ``app``; the version it had can be rolled back to."""
        return self._call("POST", self._app(app) + "/version", {"model": model, "version": version})  # type: ignore[no-any-return]

    def rollback(self, app: str, model: str) -> dict[str, Any]:
        """Back to the version ``model`` had before its last pin."""
        return self._call("POST", self._app(app) + "/rollback", {"model": model})  # type: ignore[no-any-return]

    def update_application(
        self,
        name: str,
        default_output: Any = None,
        slo_micros: int | None = None,
        confidence_threshold: float | None = None,
        policy: str | None = None,
    ) -> dict[str, Any]:
        changes = {
            "default_output": default_output,
            "slo_micros": slo_micros,
            "confidence_threshold": confidence_threshold,
            "policy": policy,
        }
        body = {k: v for k, v in changes.items() if v is not None}
        return self._call("PATCH", self._app(name), body)  # type: ignore[no-any-return]
