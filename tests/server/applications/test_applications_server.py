"""Applications through a real server: Clipper's REST API (urllib), the admin API through the
ApplicationAdmin client, the KServe face through tritonclient (gRPC and HTTP), metrics, and bad
inputs on every endpoint."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from clipperd_admin import ApplicationAdmin, ServerError
from tests.appmodels import X, add_model, call, predict
from tests.serverproc import ServerProcess, free_port, running

SLOW_DELAY_MS = 3000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("apps")
    repository = root / "models"
    add_model(repository, "one_a", value=1)
    add_model(repository, "one_b", value=1)
    add_model(repository, "two", value=2)
    add_model(repository, "slow", value=1, delay_ms=SLOW_DELAY_MS)
    add_model(repository, "versioned", versions=2, by_version=1)
    with running(repository, "--app-state", f"sqlite:///{root}/state.sqlite", log_dir=root) as proc:
        yield proc


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> ApplicationAdmin:
    return ApplicationAdmin(server.http_url)


def test_predict_vote_input_and_batch(server: ServerProcess, admin: ApplicationAdmin) -> None:
    admin.register_application(
        "vote3", ["one_a", "one_b", "two"], policy="vote", default_output=-1, slo_micros=5_000_000
    )
    answer = predict(server, "vote3", {"input": X})
    assert (answer["output"], answer["default"], answer["confidence"]) == (1.0, False, 0.6667)
    batch = predict(server, "vote3", {"input_batch": [X, X, X]})["batch_predictions"]
    assert [p["output"] for p in batch] == [1.0, 1.0, 1.0]
    ids = [p["query_id"] for p in batch]
    assert ids == sorted(ids)
    assert ids[0] > answer["query_id"]


def test_confidence_threshold_returns_the_default_output(server: ServerProcess, admin: ApplicationAdmin) -> None:
    admin.register_application(
        "strict", ["one_a", "one_b", "two"], policy="vote", default_output=7, slo_micros=5_000_000
    )
    admin.update_application("strict", confidence_threshold=0.9)
    answer = predict(server, "strict", {"input": X})
    assert answer["output"] == 7
    assert answer["default"] is True
    assert answer["default_explanation"] == "confidence 0.67 below threshold 0.9"
    admin.update_application("strict", confidence_threshold=0.5)
    assert predict(server, "strict", {"input": X})["default"] is False


def test_a_slow_member_does_not_delay_the_answer(server: ServerProcess, admin: ApplicationAdmin) -> None:
    admin.register_application(
        "bounded", ["one_a", "one_b", "slow"], policy="vote", default_output=-1, slo_micros=300_000
    )
    start = time.monotonic()
    answer = predict(server, "bounded", {"input": X})
    elapsed = time.monotonic() - start
    assert (answer["output"], answer["default"]) == (1.0, False)
    assert elapsed < SLOW_DELAY_MS / 1000 / 2  # answered at the deadline, not when the slow member finished
    assert admin.get_application("bounded")["metrics"]["stragglers"] == 1
    with urllib.request.urlopen(server.metrics_url) as response:
        metrics = response.read().decode()
    assert 'clipperd_application_stragglers{application="bounded"} 1' in metrics
    assert 'clipperd_application_predictions{application="bounded"} 1' in metrics


def test_nothing_by_the_deadline_gives_the_default(server: ServerProcess, admin: ApplicationAdmin) -> None:
    admin.register_application("late", ["slow"], default_output=[0.5], slo_micros=50_000)
    answer = predict(server, "late", {"input": X})
    assert (answer["output"], answer["default"]) == ([0.5], True)
    assert answer["default_explanation"] == "no model answered within the slo (50000 µs)"
    assert admin.get_application("late")["metrics"]["defaults"] == {"timeout": 1}


def test_feedback_moves_exp3_weights(server: ServerProcess, admin: ApplicationAdmin) -> None:
    admin.register_application("bandit", ["one_a", "two"], policy="exp3", default_output=-1, slo_micros=5_000_000)
    for i in range(40):  # new inputs each time: the server asks the drawn model at feedback
        status, reply = call(server, "POST", "/bandit/update", {"input": [float(i), 1, 0, 0], "label": 2})
        assert status == 200, reply
    weights = admin.get_application("bandit")["state"]["weights"]
    assert weights["two"] > 0.7 > weights["one_a"], weights
    outputs = [predict(server, "bandit", {"input": X})["output"] for _ in range(20)]
    assert outputs.count(2.0) > outputs.count(1.0)  # it still explores, less and less


def test_feedback_moves_exp4_weights(server: ServerProcess, admin: ApplicationAdmin) -> None:
    admin.register_application("learn", ["one_a", "two"], policy="exp4", default_output=-1, slo_micros=5_000_000)
    assert admin.get_application("learn")["state"]["weights"] == {"one_a": 0.5, "two": 0.5}
    for i in range(5):
        status, reply = call(server, "POST", "/learn/update", {"uid": 0, "input": [float(i), 0, 0, 0], "label": 2})
        assert status == 200, reply
    weights = admin.get_application("learn")["state"]["weights"]
    assert weights["two"] > 0.6 > weights["one_a"]
    assert predict(server, "learn", {"input": X})["output"] == 2.0
    # another user's state is its own
    assert predict(server, "learn", {"input": X, "uid": "someone-else"})["output"] == 1.0


def test_pin_a_version_and_roll_back(server: ServerProcess, admin: ApplicationAdmin) -> None:
    admin.register_application("pinned", ["versioned"], default_output=-1, slo_micros=5_000_000)
    assert predict(server, "pinned", {"input": X})["output"] == 2.0  # the latest
    admin.set_model_version("pinned", "versioned", 1)
    assert predict(server, "pinned", {"input": X})["output"] == 1.0
    admin.set_model_version("pinned", "versioned", 2)
    assert predict(server, "pinned", {"input": X})["output"] == 2.0
    assert admin.rollback("pinned", "versioned")["models"][0]["version"] == "1"
    assert predict(server, "pinned", {"input": X})["output"] == 1.0
    admin.rollback("pinned", "versioned")
    assert predict(server, "pinned", {"input": X})["output"] == 2.0  # back to "latest"
    with pytest.raises(ServerError) as error:
        admin.rollback("pinned", "versioned")
    assert error.value.status == 400


def test_link_unlink_list_delete(server: ServerProcess, admin: ApplicationAdmin) -> None:
    admin.register_application("linking", ["one_a"], policy="average", default_output=-1, slo_micros=5_000_000)
    admin.link_model_to_app("linking", "two")
    assert predict(server, "linking", {"input": X})["output"] == 1.5
    admin.unlink_model_from_app("linking", "one_a")
    assert predict(server, "linking", {"input": X})["output"] == 2.0
    assert "linking" in [a["name"] for a in admin.list_applications()]
    admin.delete_application("linking")
    assert "linking" not in [a["name"] for a in admin.list_applications()]
    assert call(server, "POST", "/linking/predict", {"input": X})[0] == 404


def test_kserve_face_grpc_and_http(server: ServerProcess, admin: ApplicationAdmin) -> None:
    admin.register_application(
        "kserve", ["one_a", "one_b", "two"], policy="vote", default_output=-1, slo_micros=5_000_000
    )
    batch = np.array([X, X], dtype=np.float32)
    with grpcclient.InferenceServerClient(server.url) as client:
        assert client.is_model_ready("kserve")
        meta = client.get_model_metadata("kserve")
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("INPUT0", "FP32", [-1, 4])]
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("OUTPUT0", "FP32", [-1, 1])]
        inp = grpcclient.InferInput("INPUT0", [2, 4], "FP32")
        inp.set_data_from_numpy(batch)
        result = client.infer("kserve", [inp])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), [[1.0], [1.0]])
        params = result.get_response().parameters
        assert params["default"].bool_param is False
        assert round(params["confidence"].double_param, 2) == 0.67
    client_http = httpclient.InferenceServerClient(server.http_url)
    try:
        assert client_http.is_model_ready("kserve")
        assert client_http.get_model_metadata("kserve")["outputs"] == [
            {"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, 1]}
        ]
        assert client_http.get_model_config("kserve")["max_batch_size"] == 16
        inp_http = httpclient.InferInput("INPUT0", [2, 4], "FP32")
        inp_http.set_data_from_numpy(batch, binary_data=True)
        result_http = client_http.infer("kserve", [inp_http])
        np.testing.assert_array_equal(result_http.as_numpy("OUTPUT0"), [[1.0], [1.0]])
        assert result_http.get_response()["parameters"]["default"] is False
    finally:
        client_http.close()
    admin.update_application("kserve", confidence_threshold=0.9, default_output=-1)
    with grpcclient.InferenceServerClient(server.url) as client:
        result = client.infer("kserve", [inp])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), [[-1.0], [-1.0]])
        params = result.get_response().parameters
        assert params["default"].bool_param is True
        assert params["default_explanation"].string_param == "confidence 0.67 below threshold 0.9"


def app_body(name: str, models: list[dict[str, str]], policy: str, slo: int) -> dict[str, Any]:
    return {"name": name, "models": models, "policy": policy, "default_output": 1, "slo_micros": slo}


BAD: list[tuple[str, str, Any, bytes | None, int]] = [
    ("POST", "/badapp/predict", None, b"{not json", 400),
    ("POST", "/nosuchapp/predict", {"input": X}, None, 404),
    ("POST", "/badapp/predict", {"input": ["a", "b", "c", "d"]}, None, 400),
    ("POST", "/badapp/predict", {"input": [1.0, 2.0]}, None, 400),
    ("POST", "/badapp/predict", {"input": X, "input_batch": [X]}, None, 400),
    ("POST", "/badapp/predict", {}, None, 400),
    ("POST", "/badapp/predict", {"input_batch": []}, None, 400),
    ("POST", "/badapp/predict", {"input": X, "uid": [1]}, None, 400),
    ("GET", "/badapp/predict", None, None, 405),
    ("POST", "/badapp/update", {"input": X}, None, 400),
    ("POST", "/badapp/update", {"input": X, "label": None}, None, 400),
    ("POST", "/nosuchapp/update", {"input": X, "label": 1}, None, 404),
    ("POST", "/admin/applications", None, b"[1, 2", 400),
    ("POST", "/admin/applications", app_body("x1", [], "nope", 10), None, 400),
    ("POST", "/admin/applications", app_body("x1", [], "vote", -1), None, 400),
    ("POST", "/admin/applications", app_body("x1", [{"name": "ghost"}], "vote", 10), None, 404),
    ("POST", "/admin/applications", app_body("badapp", [], "vote", 10), None, 409),
    ("POST", "/admin/applications", app_body("one_a", [], "vote", 10), None, 409),
    ("GET", "/admin/applications/nosuchapp", None, None, 404),
    ("DELETE", "/admin/applications/nosuchapp", None, None, 404),
    ("PATCH", "/admin/applications/badapp", {"colour": "red"}, None, 400),
    ("PATCH", "/admin/applications/badapp", {"slo_micros": 0}, None, 400),
    ("PATCH", "/admin/applications/nosuchapp", {"slo_micros": 10}, None, 404),
    ("POST", "/admin/applications/badapp/models", {"name": "ghost"}, None, 404),
    ("POST", "/admin/applications/badapp/models", {"name": "one_a"}, None, 409),
    ("POST", "/admin/applications/badapp/models", {"nom": "one_a"}, None, 400),
    ("DELETE", "/admin/applications/badapp/models/two", None, None, 404),
    ("POST", "/admin/applications/badapp/version", {"model": "one_a", "version": 9}, None, 404),
    ("POST", "/admin/applications/badapp/version", {"model": "ghost", "version": 1}, None, 404),
    ("POST", "/admin/applications/badapp/version", {"model": "one_a", "version": "x"}, None, 400),
    ("POST", "/admin/applications/badapp/rollback", {"model": "one_a"}, None, 400),
    ("POST", "/admin/applications/badapp/rollback", {}, None, 400),
]


@pytest.mark.parametrize(("method", "path", "body", "raw", "status"), BAD)
def test_bad_inputs(
    server: ServerProcess, admin: ApplicationAdmin, method: str, path: str, body: Any, raw: bytes | None, status: int
) -> None:
    if "badapp" not in [a["name"] for a in admin.list_applications()]:
        admin.register_application("badapp", ["one_a"], default_output=0, slo_micros=5_000_000)
    got, answer = call(server, method, path, body, raw)
    assert got == status, answer
    assert isinstance(answer, dict)
    assert answer["error"]
    if path.endswith(("/predict", "/update")) and status != 405:
        assert answer["cause"]  # Clipper's error shape
    assert server.is_running()


def test_bad_kserve_inputs(server: ServerProcess, admin: ApplicationAdmin) -> None:
    if "badapp" not in [a["name"] for a in admin.list_applications()]:
        admin.register_application("badapp", ["one_a"], default_output=0, slo_micros=5_000_000)
    with grpcclient.InferenceServerClient(server.url) as client:
        wrong_type = grpcclient.InferInput("INPUT0", [1, 4], "INT32")
        wrong_type.set_data_from_numpy(np.zeros((1, 4), np.int32))
        wrong_shape = grpcclient.InferInput("INPUT0", [1, 3], "FP32")
        wrong_shape.set_data_from_numpy(np.zeros((1, 3), np.float32))
        good = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
        good.set_data_from_numpy(np.zeros((1, 4), np.float32))
        for inputs, version, outputs, code in (
            ([wrong_type], "", None, "INVALID_ARGUMENT"),
            ([wrong_shape], "", None, "INVALID_ARGUMENT"),
            ([good, good], "", None, "INVALID_ARGUMENT"),
            ([good], "", [grpcclient.InferRequestedOutput("NOPE")], "INVALID_ARGUMENT"),
            ([good], "2", None, "NOT_FOUND"),
        ):
            with pytest.raises(Exception, match=code):
                client.infer("badapp", inputs, model_version=version, outputs=outputs)
        assert client.get_model_metadata("badapp").name == "badapp"
        with pytest.raises(Exception, match="NOT_FOUND"):
            client.get_model_metadata("badapp", model_version="7")
    assert server.is_running()


def test_restart_keeps_definitions_and_learnt_state(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    add_model(repository, "one_a", value=1)
    add_model(repository, "two", value=2)
    with running(repository, log_dir=tmp_path) as first:  # the default store, beside the repository
        admin = ApplicationAdmin(first.http_url)
        admin.register_application("keep", ["one_a", "two"], policy="exp4", default_output=-1, slo_micros=5_000_000)
        for i in range(6):
            status, _ = call(first, "POST", "/keep/update", {"input": [float(i), 0, 0, 0], "label": 1})
            assert status == 200
        before = admin.get_application("keep")
    assert (repository / ".clipperd" / "applications.sqlite").exists()
    with running(repository, log_dir=tmp_path) as second:
        after = ApplicationAdmin(second.http_url).get_application("keep")
        assert predict(second, "keep", {"input": X})["output"] == 1.0
    assert {k: v for k, v in after.items() if k != "metrics"} == {k: v for k, v in before.items() if k != "metrics"}
    assert after["state"]["weights"]["one_a"] > 0.6


def test_an_unknown_state_store_is_refused_at_start(tmp_path: Path) -> None:
    import subprocess
    import sys

    command = [sys.executable, "-m", "server.cli", "serve", "--model-repository", str(tmp_path)]
    run = subprocess.run([*command, "--app-state", "bogus://x"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "--app-state 'bogus://x': use sqlite:///path, redis://host:port/db or memory://" in run.stderr
    unreachable = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    run = subprocess.run([*command, "--app-state", unreachable], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "application state (--app-state) unavailable: ConnectionError" in run.stderr


def test_the_admin_client_reaches_the_applications_of_its_server(server: ServerProcess) -> None:
    from clipperd_admin import ClipperdAdmin

    admin = ClipperdAdmin(server.repository, server.http_url)
    apps = admin.applications
    apps.register_application("joined", ["one_a"], "single", default_output=-1.0, slo_micros=500_000)
    try:
        assert [a["name"] for a in apps.list_applications()].count("joined") == 1
        assert admin.list_models()  # the same client deploys and lists the repository's models
    finally:
        apps.delete_application("joined")


def test_a_model_that_appears_under_an_applications_name_is_that_name_everywhere(tmp_path: Path) -> None:
    """One rule for every call (server/core/resolver.py): models come first. Registration refuses a
    model's name, but a model folder may appear later under an application's name; once loaded,
    metadata, readiness, config and statistics all speak of the model, as infer does."""
    repository = tmp_path / "models"
    add_model(repository, "one_a", value=1)
    flags = ("--model-control-mode", "explicit", "--load-model", "one_a", "--app-state", "memory://")
    with running(repository, *flags, log_dir=tmp_path) as proc:
        ApplicationAdmin(proc.http_url).register_application(
            "shadow", ["one_a"], default_output=-1, slo_micros=5_000_000
        )
        add_model(repository, "shadow", value=2)
        with grpcclient.InferenceServerClient(proc.url) as client:
            assert client.get_model_metadata("shadow").platform == "clipperd_application"
            client.load_model("shadow")
            assert client.get_model_metadata("shadow").platform != "clipperd_application"
            assert client.get_model_config("shadow").config.platform != "clipperd_application"
            inp = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
            inp.set_data_from_numpy(np.array([X], dtype=np.float32))
            np.testing.assert_array_equal(client.infer("shadow", [inp]).as_numpy("OUTPUT0"), [[2.0]])
            stats = client.get_inference_statistics("shadow").model_stats
            assert [(s.version, s.inference_stats.success.count) for s in stats] == [("1", 1)]
            everything = client.get_inference_statistics().model_stats
            assert sorted((s.name, s.version) for s in everything) == [("one_a", "1"), ("shadow", "1")]


def test_members_answer_from_their_response_cache_and_count_there(tmp_path: Path) -> None:
    """An application's member runs through the one entry point: its cache answers a repeated
    input, and the member's statistics count the hit as a client's request would be counted."""
    repository = tmp_path / "models"
    add_model(repository, "cached", value=3)
    config = repository / "cached" / "config.pbtxt"
    config.write_text(config.read_text() + "\nresponse_cache { enable: true }\n")
    flags = ("--app-state", "memory://", "--cache-config", "local,size=1048576")
    with running(repository, *flags, log_dir=tmp_path) as proc:
        ApplicationAdmin(proc.http_url).register_application(
            "front", ["cached"], default_output=-1, slo_micros=5_000_000
        )
        with grpcclient.InferenceServerClient(proc.url) as client:
            inp = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
            inp.set_data_from_numpy(np.array([X], dtype=np.float32))
            for _ in range(2):
                np.testing.assert_array_equal(client.infer("front", [inp]).as_numpy("OUTPUT0"), [[3.0]])
            member = client.get_inference_statistics("cached").model_stats[0].inference_stats
            assert (member.success.count, member.cache_hit.count, member.cache_miss.count) == (2, 1, 1)
            front = client.get_inference_statistics("front").model_stats[0].inference_stats
            assert front.success.count == 2
