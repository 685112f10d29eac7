"""Drift monitors in a real server, fed by real clients (tritonclient HTTP and gRPC): shifted
traffic raises clipperd_drift_alarm on /metrics and in the JSON status, with one log line; bad
drift_* values fail the model's load with a message naming the key; a client sending more than
the monitor can take fills its bounded buffer and the rest is dropped and counted."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from tests.serverproc import ROOT, ServerProcess, running, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

EXAMPLE = ROOT / "examples" / "monitoring" / "drift_classifier"
ROWS = 20  # per request
FAST = {
    "drift_sample_rate": "1.0",
    "drift_window": "400",
    "drift_check_rows": "200",
    "drift_interval_ms": "50",
}


def model_folder(repo: Path, name: str, parameters: dict[str, str]) -> None:
    """The example model under ``name``, its parameters replaced by the reference's and these."""
    folder = repo / name
    shutil.copytree(EXAMPLE, folder)
    text = (folder / "config.pbtxt").read_text().replace('name: "drift_classifier"', f'name: "{name}"')
    text = text[: text.index("parameters [")]
    keys = {"drift_reference": "reference.npz", "drift_class_outputs": "scores", **parameters}
    entries = ",\n".join(f'  {{ key: "{k}", value: {{ string_value: "{v}" }} }}' for k, v in keys.items())
    (folder / "config.pbtxt").write_text(f"{text}parameters [\n{entries}\n]\n")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("drift-repo")
    model_folder(repo, "watched", FAST)
    model_folder(repo, "tiny_buffer", {**FAST, "drift_buffer": "8", "drift_interval_ms": "3600000"})
    model_folder(repo, "bad_rate", {"drift_sample_rate": "1.5"})
    model_folder(repo, "no_reference", {"drift_reference": "missing.npz"})
    model_folder(repo, "unknown_feature", {"drift_inputs": "x,nope"})
    args = ("--model-control-mode", "explicit", "--load-model", "watched", "--load-model", "tiny_buffer")
    with running(repo, *args, log_dir=logs_dir) as server:
        yield server
        assert server.is_running(), server.log()


def get(server: ServerProcess, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://{server.http_url}{path}", timeout=10) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def drift(server: ServerProcess, model: str = "watched") -> dict[str, Any]:
    status, body = get(server, f"/v2/models/{model}/monitoring")
    assert status == 200, body
    assert isinstance(body["drift"], dict)
    return body["drift"]


def metric_samples(server: ServerProcess, name: str) -> list[tuple[dict[str, str], float]]:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    return [
        (dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def send_http(server: ServerProcess, model: str, batches: list[np.ndarray]) -> None:
    with httpclient.InferenceServerClient(server.http_url) as client:
        for x in batches:
            tensor = httpclient.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            assert client.infer(model, [tensor]).as_numpy("scores").shape == (len(x), 4)


def send_grpc(server: ServerProcess, model: str, batches: list[np.ndarray]) -> None:
    with grpcclient.InferenceServerClient(server.url) as client:
        for x in batches:
            tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            assert client.infer(model, [tensor]).as_numpy("scores").shape == (len(x), 4)


def traffic(seed: int, requests: int, shift: float = 0.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    batches = [rng.standard_normal((ROWS, 8)).astype(np.float32) for _ in range(requests)]
    for x in batches:
        x[:, 5] += shift  # a feature the model does not even read: only input drift sees it
    return batches


def test_shifted_traffic_raises_the_alarm(server: ServerProcess) -> None:
    send_http(server, "watched", traffic(1, 400 // ROWS))
    wait_until(lambda: drift(server)["rows_checked"] == 400, "a check of all 400 rows")
    before = drift(server)
    assert before["alarm"] is False, before
    assert {(t["feature"], t["test"]) for t in before["tests"]} >= {("x[5]", "ks"), ("x[5]", "psi"), ("scores", "chi2")}

    send_grpc(server, "watched", traffic(2, 400 // ROWS, shift=1.0))
    wait_until(lambda: drift(server)["alarm"] is True, "the drift alarm", timeout_s=60)
    after = drift(server)
    alarmed = {(t["feature"], t["test"]) for t in after["tests"] if t["alarm"]}
    assert ("x[5]", "ks") in alarmed, after
    assert not any(f.startswith("x[") and f != "x[5]" for f, test in alarmed if test == "ks"), after
    assert after["samples"] == 40
    assert after["dropped"] == 0

    labels = {"model": "watched", "version": "1", "feature": "x[5]", "test": "ks"}
    assert (labels, 1.0) in metric_samples(server, "clipperd_drift_alarm")
    p_values = {tuple(sorted(lab.items())): v for lab, v in metric_samples(server, "clipperd_drift_p_value")}
    assert p_values[tuple(sorted(labels.items()))] < 0.001
    samples = metric_samples(server, "clipperd_monitor_samples_total")
    assert ({"model": "watched", "version": "1", "monitor": "drift"}, 40.0) in samples
    lines = [line for line in server.log().splitlines() if "drift alarm ON for model 'watched'" in line]
    assert len(lines) == 1, lines
    assert "WARNING" in lines[0]
    assert "x[5] (ks p=" in lines[0]


def test_status_route(server: ServerProcess) -> None:
    status, body = get(server, "/v2/models/watched/versions/1/monitoring")
    assert status == 200
    assert body["name"] == "watched"
    assert body["version"] == "1"
    assert body["feedback"] is None
    status, body = get(server, "/v2/models/nope/monitoring")
    assert status == 404
    assert "nope" in str(body["error"])


@pytest.mark.parametrize(
    ("model", "says"),
    [
        ("bad_rate", "field 'parameters.drift_sample_rate': must be a number >= 0 and <= 1, got '1.5'"),
        ("no_reference", "field 'parameters.drift_reference': names no file in the model's folder"),
        ("unknown_feature", "field 'parameters.drift_inputs': names 'nope', which is not one of the model's tensors"),
    ],
)
def test_bad_drift_config_is_a_clear_load_error(server: ServerProcess, model: str, says: str) -> None:
    with httpclient.InferenceServerClient(server.http_url) as client:
        with pytest.raises(InferenceServerException) as refused:
            client.load_model(model)
        assert says in str(refused.value)
        assert client.is_server_live()
        assert client.is_model_ready("watched")


def test_a_flood_fills_the_bounded_buffer_and_drops_are_counted(server: ServerProcess) -> None:
    send_http(server, "tiny_buffer", traffic(3, 30))
    status = drift(server, "tiny_buffer")  # its analysis never runs in this test: the buffer stays full
    assert (status["samples"], status["dropped"], status["buffered"]) == (8, 22, 8)
    dropped = metric_samples(server, "clipperd_monitor_samples_dropped_total")
    assert ({"model": "tiny_buffer", "version": "1", "monitor": "drift"}, 22.0) in dropped
