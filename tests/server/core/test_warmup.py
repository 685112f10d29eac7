"""Model warm-up (``model_warmup``): examples/triton/warmup_recorder records each request it
executes; its samples (zeros, random data, files of its warmup/ folder, BYTES included) have
all run when the load returns READY, and the statistics count none of them. A failing sample
or a missing file leaves the version UNAVAILABLE with the reason; the server serves on."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.serverproc import ROOT, ServerProcess, index_entry, running

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

EXAMPLE = ROOT / "examples" / "triton" / "warmup_recorder"


def add(root: Path, name: str, record: Path, edit: dict[str, str] | None = None) -> None:
    shutil.copytree(EXAMPLE, root / name)
    config = (root / name / "config.pbtxt").read_text().replace('"warmup_recorder"', f'"{name}"')
    for old, new in (edit or {}).items():
        assert old in config, old
        config = config.replace(old, new)
    config += f'parameters {{ key: "record_file" value {{ string_value: "{record}" }} }}\n'
    (root / name / "config.pbtxt").write_text(config)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("warmup")
    add(root, "warmup_recorder", root / "calls.jsonl")
    add(root, "warmup_fails", root / "fails.jsonl")
    np.array([1, -2, 3, 4], dtype="<f4").tofile(root / "warmup_fails" / "warmup" / "input0.bin")
    add(root, "warmup_no_file", root / "no_file.jsonl", {'"input0.bin"': '"nope.bin"'})
    return root


@pytest.fixture(scope="module")
def server(root: Path, logs_dir: Path) -> Iterator[ServerProcess]:
    with running(root, "--model-control-mode", "explicit", log_dir=logs_dir) as started:
        yield started


def calls(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def statistics(url: str) -> Any:
    with grpcclient.InferenceServerClient(url) as client:
        return client.get_inference_statistics("warmup_recorder").model_stats[0]


def test_the_samples_run_before_ready_and_are_not_counted(server: ServerProcess, root: Path) -> None:
    record = root / "calls.jsonl"
    with grpcclient.InferenceServerClient(server.url) as client:
        assert not client.is_model_ready("warmup_recorder")
        assert calls(record) == []
        client.load_model("warmup_recorder")  # returns once the version is READY
        assert client.is_model_ready("warmup_recorder")
    seen = calls(record)
    assert len(seen) == 5  # zeros once, random once, the files three times
    assert seen[0]["input0"] == [[0.0] * 4, [0.0] * 4]
    assert seen[0]["text"] == [["", ""], ["", ""]]
    assert all(0.0 <= v < 1.0 for v in seen[1]["input0"][0])
    for sample in seen[2:]:
        assert sample["input0"] == [[1.0, 2.0, 3.0, 4.0]]
        assert sample["text"] == [["hello", "warm"]]
    stats = statistics(server.url)
    assert (stats.inference_count, stats.execution_count, stats.inference_stats.success.count) == (0, 0, 0)

    with httpclient.InferenceServerClient(server.http_url) as http:
        inputs = [httpclient.InferInput("INPUT0", [1, 4], "FP32"), httpclient.InferInput("TEXT", [1, 2], "BYTES")]
        inputs[0].set_data_from_numpy(np.array([[1, 2, 3, 4]], np.float32))
        inputs[1].set_data_from_numpy(np.array([[b"a", b"b"]], dtype=object))
        assert http.infer("warmup_recorder", inputs).as_numpy("OUTPUT0").tolist() == [[2, 4, 6, 8]]
    stats = statistics(server.url)
    assert (stats.inference_count, stats.execution_count, stats.inference_stats.success.count) == (1, 1, 1)
    assert len(calls(record)) == 6


@pytest.mark.parametrize(
    ("model", "reasons"),
    [
        ("warmup_fails", ["warm-up sample 'from_files' failed", "negative input"]),
        ("warmup_no_file", ["warm-up sample 'from_files'", "input_data_file 'warmup/nope.bin' not found"]),
    ],
)
def test_a_failing_warm_up_leaves_the_version_unavailable(
    server: ServerProcess, model: str, reasons: list[str]
) -> None:
    with grpcclient.InferenceServerClient(server.url) as client:
        with pytest.raises(InferenceServerException) as error:
            client.load_model(model)
        assert all(reason in str(error.value.message()) for reason in reasons), error.value.message()
        assert not client.is_model_ready(model)
    state, reason = index_entry(server.url, model)
    assert state == "UNAVAILABLE"
    assert all(text in reason for text in reasons), reason
    with httpclient.InferenceServerClient(server.http_url) as http:
        assert not http.is_model_ready(model)
        row = next(r for r in http.get_model_repository_index() if r["name"] == model)
        assert row["state"] == "UNAVAILABLE"
    with grpcclient.InferenceServerClient(server.url) as client:  # the server serves on
        client.load_model("warmup_recorder")
        assert client.is_model_ready("warmup_recorder")
