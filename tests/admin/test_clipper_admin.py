"""Clipper's management API on clipperd (server/rest/clipper_management.py) driven by the real
clipper_admin 0.4.1 package (scripts/install-clipper-admin.sh puts it in .tools/clipper-admin;
`make test` runs it), plus each /admin route over plain HTTP: Clipper's answers, bad bodies
(400 with the schema), unknown names, and management closed to clients off the loopback address."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.access import AccessPolicy
from server.applications.manager import ApplicationManager
from server.applications.state import MemoryStore
from server.core.dataplane import DataPlane
from server.core.repository import ControlMode, ModelRepository
from server.rest.body import BodyLimits
from server.rest.http_server import HttpRequest
from server.rest.routes import RestApi
from tests.appmodels import X, add_model
from tests.serverproc import ROOT, ServerProcess, running

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CLIPPER_PYTHON = ROOT / ".tools" / "clipper-admin" / "bin" / "python"
DRIVER = Path(__file__).with_name("clipper_driver.py")


def _repository(root: Path) -> Path:
    add_model(root, "m", versions=3, by_version="1", scale="1")  # answers x[0] + version
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[ServerProcess]:
    repository = _repository(tmp_path_factory.mktemp("clipper-repo"))
    with running(repository, "--app-state", "memory://", log_dir=logs_dir) as started:
        yield started
        assert started.is_running(), started.log()


def call(server: ServerProcess, path: str, body: Any = None, *, raw: bytes | None = None) -> tuple[int, str]:
    """POST (GET without a body) to Clipper's route; the status and the body's text."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(
        f"http://{server.http_url}{path}", data=data, method="GET" if data is None else "POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def ok(server: ServerProcess, path: str, body: Any) -> Any:
    status, text = call(server, path, body)
    assert status == 200, text
    return json.loads(text) if text[:1] in "[{" else text


# ---- the real clipper_admin ------------------------------------------------------------------


def test_clipper_admin_drives_clipperd(server: ServerProcess) -> None:
    assert CLIPPER_PYTHON.is_file(), "run scripts/install-clipper-admin.sh (make test does)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [
        str(CLIPPER_PYTHON),
        str(DRIVER),
        server.http_url,
        str(server.repository),
        f"127.0.0.1:{server.metrics_port}",
    ]
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout)

    assert "No connection to Clipper cluster" in out["before_connect"]
    assert out["apps_empty_links"] == []
    assert out["apps"] == ["clipper-app"]
    app = {
        "input_type": "floats",
        "default_output": "-1.0",
        "latency_slo_micros": 200000,
        "name": "clipper-app",
        "linked_models": ["m"],
    }
    assert out["apps_verbose"] == [app]
    assert out["app_info"] == app
    assert out["app_info_unknown"] is None
    assert out["linked"] == ["m"]
    assert out["models"] == ["m:1", "m:2"]
    assert [(m["model_version"], m["is_current_version"]) for m in out["models_verbose"]] == [("1", False), ("2", True)]
    assert out["model_info"] == {
        "model_name": "m",
        "model_version": "2",
        "input_type": "floats",
        "labels": ["a", "b"],
        "container_name": "NO_CONTAINER",
        "model_data_path": "DEPRECATED",
        "is_current_version": True,
    }
    assert out["model_info_unknown"] is None
    # the application serves the current version: x[0] + 2, then after set_model_version x[0] + 1
    assert (out["current_before"], out["current_after"]) == ("2", "1")
    assert (out["predict_v2"]["output"], out["predict_v2"]["default"]) == (X[0] + 2, False)
    assert (out["predict_v1"]["output"], out["predict_v1"]["default"]) == (X[0] + 1, False)
    metrics = out["metrics"]
    assert {"app:clipper-app:num_predictions": {"count": "2"}} in metrics["counters"]
    assert {"app:clipper-app:default_prediction_ratio": {"ratio": "0"}} in metrics["ratio_counters"]
    (histogram,) = [h["app:clipper-app:prediction_latency"] for h in metrics["histograms"]]
    assert histogram["size"] == "2"
    assert out["query_addr"] == server.http_url
    assert out["metric_addr"] == f"127.0.0.1:{server.metrics_port}"

    errors = out["errors"]
    assert "No model with name 'ghost' exists." in errors["link_unknown_model"]
    assert "model 'ghost' is not in clipperd's model repository" in errors["register_unknown_model"]
    assert "has no loaded version 'v3'" in errors["register_unknown_version"]
    assert "takes FP32 input, which Clipper's input type 'strings' does not fit" in errors["register_wrong_type"]
    assert "application 'clipper-app' already exists" in errors["duplicate_app"]
    assert "Cannot set non-existent version '7' for model with name 'm'" in errors["set_unknown_version"]
    assert "No application with name 'nope' exists." in errors["linked_unknown_app"]
    for key in ("build_and_deploy", "deploy_model", "get_num_replicas"):
        assert "ClipperdAdmin(" in errors[key], errors[key]
    assert "containerless model" in errors["set_num_replicas"]  # clipper_admin's own check
    assert "clipperd_admin" in errors["stop_models"]
    assert "clipperd serve" in errors["start_clipper"]
    assert out["linked_after_unlink"] == []
    assert out["apps_after_unregister"] == []


# ---- each route over HTTP --------------------------------------------------------------------

BAD_BODIES = [
    ("/admin/add_app", b"{not json", "not valid JSON"),
    ("/admin/add_app", b"[1, 2]", "must be a JSON object"),
    ("/admin/add_app", {"input_type": "floats", "default_output": "0", "latency_slo_micros": 5}, "required key: name"),
    (
        "/admin/add_app",
        {"name": "a", "input_type": "tensors", "default_output": "0", "latency_slo_micros": 5},
        "tensors is not a valid input type",
    ),
    (
        "/admin/add_app",
        {"name": "a", "input_type": "floats", "default_output": 0, "latency_slo_micros": 5},
        "default_output must be a string, not number",
    ),
    (
        "/admin/add_app",
        {"name": "a", "input_type": "floats", "default_output": "0", "latency_slo_micros": "5"},
        "latency_slo_micros must be an integer, not string",
    ),
    (
        "/admin/add_app",
        {"name": "a/b", "input_type": "floats", "default_output": "0", "latency_slo_micros": 5},
        "JSON key name must be 1-128",
    ),
    (
        "/admin/add_app",
        {"name": "a", "input_type": "floats", "default_output": "x" * 5000, "latency_slo_micros": 5},
        "longer than 4096",
    ),
    ("/admin/delete_app", {}, "required key: name"),
    (
        "/admin/add_model_links",
        {"app_name": "a", "model_names": "m"},
        "model_names must be an array of strings, not string",
    ),
    ("/admin/add_model_links", {"app_name": "a", "model_names": [1]}, "must hold only strings"),
    ("/admin/add_model_links", {"app_name": "a", "model_names": ["m"] * 33}, "more than 32 strings"),
    ("/admin/add_model", {"model_name": "m", "model_version": "1"}, "required key: labels"),
    (
        "/admin/add_model",
        {
            "model_name": "m",
            "model_version": "1",
            "labels": ["x" * 2000],
            "input_type": "floats",
            "container_name": "",
            "model_data_path": "",
            "batch_size": -1,
        },
        "must hold only strings of at most 1024",
    ),
    ("/admin/get_all_applications", {"verbose": 1}, "verbose must be a bool, not number"),
    ("/admin/get_all_models", {}, "required key: verbose"),
    ("/admin/get_application", {"name": None}, "name must be a string, not null"),
    ("/admin/get_linked_models", {"name": "a"}, "required key: app_name"),
    ("/admin/get_model", {"model_name": "m"}, "required key: model_version"),
    ("/admin/set_model_version", {"model_name": "m", "model_version": 1}, "model_version must be a string, not number"),
]


@pytest.mark.parametrize(("path", "body", "why"), BAD_BODIES)
def test_bad_bodies_are_400_with_the_schema(server: ServerProcess, path: str, body: Any, why: str) -> None:
    status, text = call(
        server, path, None if isinstance(body, bytes) else body, raw=body if isinstance(body, bytes) else None
    )
    assert status == 400, text
    assert text.startswith("Error parsing JSON: "), text
    assert why in text, text
    assert "Expected JSON schema: {" in text


def test_routes_answer_as_clippers_did(server: ServerProcess) -> None:
    assert call(server, "/admin/ping") == (200, "PONG")
    app = {"name": "http-app", "input_type": "doubles", "default_output": "none", "latency_slo_micros": 100000}
    assert ok(server, "/admin/add_app", app) == "Successfully added application with name 'http-app'"
    assert call(server, "/admin/add_app", app) == (400, "application 'http-app' already exists")
    assert call(server, "/admin/add_app", {**app, "name": "m"})[0] == 400  # a model's name
    assert call(server, "/admin/add_app", {**app, "name": "x", "latency_slo_micros": 0}) == (
        400,
        "latency_slo_micros must be between 1 and 60000000, not 0",
    )
    model = {
        "model_name": "m",
        "model_version": "3",
        "labels": [],
        "input_type": "doubles",
        "container_name": "NO_CONTAINER",
        "model_data_path": "DEPRECATED",
        "batch_size": -1,
    }
    assert call(server, "/admin/add_model", {**model, "batch_size": 0}) == (
        400,
        "The batch size must be positive or DEFAULT_BATCH_SIZE, which is -1",
    )
    assert ok(server, "/admin/add_model", model) == "Successfully added model with name 'm' and input type 'doubles'"
    assert call(server, "/admin/add_model", model) == (400, "model with name 'm' and version '3' already exists")
    assert ok(server, "/admin/get_model", {"model_name": "m", "model_version": "3"})["is_current_version"] is True
    assert ok(server, "/admin/get_model", {"model_name": "m", "model_version": "8"}) == {}
    assert ok(server, "/admin/get_application", {"name": "ghost"}) == {}

    links = {"app_name": "http-app", "model_names": ["m"]}
    assert call(server, "/admin/add_model_links", {**links, "app_name": "ghost"}) == (
        400,
        "No app with name 'ghost' exists.",
    )
    assert call(server, "/admin/add_model_links", {**links, "model_names": []})[1].startswith("Please provide")
    assert call(server, "/admin/add_model_links", {**links, "model_names": ["m", "m"]}) == (
        400,
        "Applications must be linked with at most one model. Attempted to add links to 2 models.",
    )
    assert (
        ok(server, "/admin/add_model_links", links)
        == "Successfully linked model with name 'm' to application 'http-app'"
    )
    assert call(server, "/admin/add_model_links", links) == (
        400,
        "The model with name 'm' is already linked to 'http-app'",
    )
    assert ok(server, "/admin/get_linked_models", {"app_name": "http-app"}) == ["m"]
    assert "http-app" in ok(server, "/admin/get_all_applications", {"verbose": False})
    assert "m:3" in ok(server, "/admin/get_all_models", {"verbose": False})

    # the link pins the current version in clipperd's own definition; set_model_version moves it
    definition = json.loads(urllib.request.urlopen(f"http://{server.http_url}/admin/applications/http-app").read())
    assert definition["models"][0]["version"] == "3"
    assert call(server, "/admin/set_model_version", {"model_name": "ghost", "model_version": "1"}) == (
        400,
        "Cannot set version for nonexistent model 'ghost'",
    )
    answer = json.loads(call(server, "/http-app/predict", {"input": X})[1])
    assert answer["output"] == X[0] + 3

    unlink = {"app_name": "http-app", "model_names": ["ghost"]}
    assert call(server, "/admin/delete_model_links", {**unlink, "app_name": "ghost"}) == (
        400,
        "No app with name ghost exists.",
    )
    assert call(server, "/admin/delete_model_links", unlink) == (
        400,
        "Cannot remove nonexistent link between app http-app and model ghost",
    )
    assert ok(server, "/admin/delete_model_links", {**unlink, "model_names": ["m"]}) == "Success!"
    assert ok(server, "/admin/get_linked_models", {"app_name": "http-app"}) == []

    assert call(server, "/admin/delete_app", {"name": "ghost"}) == (400, "Application 'ghost' does not exist")
    assert (
        ok(server, "/admin/delete_app", {"name": "http-app"}) == "Successfully deleted application with name 'http-app'"
    )
    assert call(server, "/admin/ping", {"x": 1})[0] == 405  # Clipper's ping is a GET


def test_json_metrics_on_the_http_port_and_prometheus_on_the_metrics_port(server: ServerProcess) -> None:
    status, text = call(server, "/metrics")
    assert status == 200
    assert set(json.loads(text)) == {"counters", "ratio_counters", "meters", "histograms"}
    with urllib.request.urlopen(server.metrics_url, timeout=30) as answer:
        prometheus = answer.read().decode()
    assert answer.headers["Content-Type"].startswith("text/plain")
    assert "# TYPE" in prometheus


# ---- management stays closed off the loopback address ----------------------------------------


def _api(tmp_path: Path, policy: AccessPolicy) -> RestApi:
    repository = ModelRepository(tmp_path, ControlMode.EXPLICIT, [])
    apps = ApplicationManager(repository, MemoryStore())
    return RestApi(DataPlane(repository, applications=apps), BodyLimits(1 << 20, 1 << 20), policy, apps)


CLIPPER_ROUTES = [
    ("GET", "/admin/ping"),
    *(
        ("POST", f"/admin/{name}")
        for name in (
            "add_app",
            "delete_app",
            "add_model_links",
            "delete_model_links",
            "add_model",
            "get_all_applications",
            "get_application",
            "get_linked_models",
            "get_all_models",
            "get_model",
            "set_model_version",
        )
    ),
]


async def test_clipper_management_is_refused_to_remote_clients(tmp_path: Path) -> None:
    closed, opened = _api(tmp_path, AccessPolicy()), _api(tmp_path, AccessPolicy(allow_remote_management=True))
    body = json.dumps({"verbose": False}).encode()
    for method, path in CLIPPER_ROUTES:
        remote = HttpRequest(method, path, {}, body if method == "POST" else b"", peer="198.18.0.2")
        refused = await closed.handle(remote)
        assert refused.status == 403, (path, refused.body)
        assert b"applications-admin API is closed" in refused.body
        for api, peer in ((closed, "127.0.0.1"), (opened, "198.18.0.2")):
            request = HttpRequest(method, path, {}, body if method == "POST" else b"", peer=peer)
            assert (await api.handle(request)).status != 403, (path, peer)
    metrics = await closed.handle(HttpRequest("GET", "/metrics", {}, b"", peer="198.18.0.2"))
    assert metrics.status == 200  # Clipper's query-frontend metrics stay open, as Prometheus' do
