"""The dynamic batcher's settings through a real server: AIMD parameters and queue policy in a
model's config, the cap in the metrics, and configs the batcher refuses."""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families

from tests.serverproc import EXAMPLES, ServerProcess, model_metric, running

pytestmark = pytest.mark.timeout(120)

IDENTITY = (EXAMPLES / "identity_fp32" / "config.pbtxt").read_text()


def variant(name: str, batching: str, parameters: str = "") -> str:
    config = IDENTITY.replace('name: "identity_fp32"', f'name: "{name}"')
    return config.replace("dynamic_batching { }", batching + "\n" + parameters)


MODELS = {
    "adaptive": variant(
        "adaptive",
        "dynamic_batching { max_queue_delay_microseconds: 100 }",
        'parameters [ { key: "batch_latency_target_us" value: { string_value: "50000" } },'
        ' { key: "batch_size_step" value: { string_value: "2" } } ]',
    ),
    "bounded": variant("bounded", "dynamic_batching { default_queue_policy { max_queue_size: 4 } }"),
    "bad_backoff": variant(
        "bad_backoff",
        "dynamic_batching { }",
        'parameters [ { key: "batch_latency_target_us" value: { string_value: "1000" } },'
        ' { key: "batch_backoff" value: { string_value: "2" } } ]',
    ),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("batching-repo")
    for name, config in MODELS.items():
        shutil.copytree(EXAMPLES / "identity_fp32", repo / name)
        (repo / name / "config.pbtxt").write_text(config)
    # bad_backoff fails to load, on purpose: readiness must not wait for it
    with running(repo, "--no-strict-readiness", log_dir=logs_dir) as proc:
        yield proc
        assert proc.is_running(), proc.log()


def test_adaptive_model_serves_and_exports_its_cap(server: ServerProcess) -> None:
    assert model_metric(server, "clipperd_batch_size_cap", "adaptive") == 1  # AIMD starts at 1
    assert model_metric(server, "clipperd_batch_size_cap", "bounded") == 64  # no target: max_batch_size
    with grpcclient.InferenceServerClient(server.url) as client:
        x = np.arange(16, dtype=np.float32).reshape(1, 16)
        tensor = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
        tensor.set_data_from_numpy(x)
        for _ in range(5):
            np.testing.assert_array_equal(client.infer("adaptive", [tensor]).as_numpy("OUTPUT0"), x)
    # the first batch (1 row) filled the cap of 1: +2; later single requests fill no cap of 3
    assert model_metric(server, "clipperd_batch_size_cap", "adaptive") == 3
    assert model_metric(server, "clipperd_batch_latency_seconds", "adaptive") > 0
    assert model_metric(server, "clipperd_batch_time_over_latency_target_seconds", "adaptive") == 0  # 50 ms is ample
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    sizes = {
        sample.labels["batch_size"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("clipperd_batch_size_executions") and sample.labels["model"] == "adaptive"
    }
    assert sizes == {"1": 5}  # five requests one at a time: five executions of one row
    per_device = {
        sample.name.removesuffix("_total"): (sample.labels["device"], sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels.get("model") == "adaptive" and "device" in sample.labels
    }
    assert per_device["clipperd_batch_size_cap"] == ("cpu", 3)
    assert per_device["clipperd_device_executions"] == ("cpu", 5)
    assert per_device["clipperd_device_inference_count"] == ("cpu", 5)
    assert per_device["clipperd_queue_depth"] == ("cpu", 0)
    rejections = {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("clipperd_rejections") and sample.labels["model"] == "adaptive"
    }
    assert rejections == {"queue_full": 0, "timeout": 0, "unloading": 0}


def test_a_bad_aimd_setting_fails_the_load_naming_the_key(server: ServerProcess) -> None:
    with grpcclient.InferenceServerClient(server.url) as client:
        assert client.is_model_ready("adaptive")
        assert not client.is_model_ready("bad_backoff")
        index = {m.name: m for m in client.get_model_repository_index().models}
    assert "batch_backoff" in index["bad_backoff"].reason
    assert "must be a number > 0 and < 1, got '2'" in index["bad_backoff"].reason


def test_priority_parameter_on_a_model_without_levels_is_ignored(server: ServerProcess) -> None:
    body: dict[str, object] = {
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16}],
        "parameters": {"priority": 3, "timeout": 1000},
    }
    request = urllib.request.Request(
        f"http://{server.http_url}/v2/models/bounded/infer", data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["outputs"][0]["data"] == [0.0] * 16
