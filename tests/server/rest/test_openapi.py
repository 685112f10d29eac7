"""The OpenAPI document the server serves describes every route it has, and schemathesis fuzzes
every operation from it (valid and invalid requests): no 500, every status and body as the
document says, the server live after each case."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from server.applications.manager import ApplicationManager
from server.applications.state import MemoryStore
from server.core.dataplane import DataPlane
from server.core.repository import ControlMode, ModelRepository
from server.dashboard.feed import Dashboard, Sources
from server.rest.body import BodyLimits
from server.rest.routes import OPENAPI_PATH, RestApi
from tests.serverproc import EXAMPLES, ServerProcess, running

pytestmark = pytest.mark.timeout(600)

MODELS = sorted(p.name for p in EXAMPLES.iterdir() if (p / "config.pbtxt").is_file())  # every example


@pytest.fixture(scope="module")
def fuzz_server(logs_dir: Path) -> Iterator[ServerProcess]:
    """Explicit control mode so load and unload really run (and may unload what others use)."""
    args = ("--model-control-mode", "explicit", "--load-model", "*", "--app-state", "memory://")
    with running(EXAMPLES, *args, log_dir=logs_dir) as server:
        yield server
        assert server.is_running(), server.log()


def fetch(url: str) -> tuple[int, bytes, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return int(response.status), response.read(), response.headers.get("Content-Type", "")


def served_document(server: ServerProcess) -> dict[str, Any]:
    status, body, content_type = fetch(f"http://{server.http_url}/openapi.json")
    assert status == 200
    assert content_type.startswith("application/json")
    return json.loads(body)  # type: ignore[no-any-return]


def test_json_and_yaml_documents_agree(fuzz_server: ServerProcess) -> None:
    status, body, content_type = fetch(f"http://{fuzz_server.http_url}/openapi.yaml")
    assert status == 200
    assert content_type.startswith("application/yaml")
    assert yaml.safe_load(body) == served_document(fuzz_server)


def test_document_covers_every_route(tmp_path: Path) -> None:
    repository = ModelRepository(tmp_path, ControlMode.EXPLICIT, [])
    apps = ApplicationManager(repository, MemoryStore())
    plane = DataPlane(repository, applications=apps)
    dashboard = Dashboard(Sources(repository.index, repository.loaded, list, list, {}))
    api = RestApi(plane, BodyLimits(1 << 20, 1 << 20), applications=apps, dashboard=dashboard)
    served = set()
    for route in api.routes():
        methods = ("GET", "POST") if route.method == "*" else (route.method,)  # any method: document two
        path = route.path.replace(":*}", "}")
        served |= {(method, path) for method in methods}
    document = yaml.safe_load(OPENAPI_PATH.read_text())
    documented = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item if method != "parameters"
    }
    documented |= {("GET", "/openapi.json"), ("GET", "/openapi.yaml")}
    assert served == documented


def fuzzing_document() -> dict[str, Any]:
    """The document as served (test_json_and_yaml_documents_agree checks they match), with known
    model names half the time, so infer and metadata reach past "unknown model"."""
    document: dict[str, Any] = yaml.safe_load(OPENAPI_PATH.read_text())
    model = document["components"]["parameters"]["model"]
    model["schema"] = {"anyOf": [{"enum": MODELS}, model["schema"]]}
    return document


schema = schemathesis.openapi.from_dict(fuzzing_document())


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_every_operation_fuzzed(case: Any, fuzz_server: ServerProcess) -> None:
    response = case.call(base_url=f"http://{fuzz_server.http_url}", timeout=30)
    assert response.status_code != 500, f"{case.method} {case.formatted_path}: {response.text[:500]}"
    case.validate_response(
        response, checks=[status_code_conformance, content_type_conformance, response_schema_conformance]
    )
    assert fetch(f"http://{fuzz_server.http_url}/v2/health/live")[0] == 200
