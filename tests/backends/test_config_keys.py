"""Config keys clipperd parses but does not implement (backends/common/config_keys.py): refused
where ignoring them would change answers, warned where they only tune speed; and the one rule for
version folder names (backends/common/versions.py). Real servers, tritonclient, curl-like HTTP."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from backends import registry
from backends.common.config import load_model_config
from backends.common.versions import folder_version, version_folders
from tests.serverproc import EXAMPLES, ROOT, ServerProcess, running

pytestmark = pytest.mark.timeout(120)

# model name -> (what is added to identity_fp32's config, the key the reason must name)
REFUSED = {
    "with_env": (
        'parameters { key: "EXECUTION_ENV_PATH" value { string_value: "$$TRITON_MODEL_DIRECTORY/env.tar.gz" } }\n',
        "EXECUTION_ENV_PATH",
    ),
    "with_batch_input": (
        'batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: "COUNT" data_type: TYPE_FP32 } ]\n',
        "batch_input",
    ),
    "with_batch_output": (
        'batch_output [ { target_name: "OUTPUT0" kind: BATCH_SCATTER_WITH_INPUT_SHAPE source_input: "INPUT0" } ]\n',
        "batch_output",
    ),
    "with_iterative_sequence": (
        "sequence_batching { iterative_sequence: true }\n",
        "sequence_batching.iterative_sequence",
    ),
}


def add_model(repo: Path, name: str, extra: str) -> None:
    """identity_fp32 under another name, with ``extra`` appended to its config (replacing its
    instance_group or its dynamic_batching where ``extra`` declares the same)."""
    shutil.copytree(EXAMPLES / "identity_fp32", repo / name)
    config = (EXAMPLES / "identity_fp32" / "config.pbtxt").read_text().replace("identity_fp32", name)
    if extra.startswith("instance_group"):
        config = config[: config.index("instance_group")]
    if extra.startswith("sequence_batching"):  # one scheduling_choice: a oneof in the schema
        config = config.replace("dynamic_batching { }", "")
    (repo / name / "config.pbtxt").write_text(config + extra)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("config_keys")
    shutil.copytree(EXAMPLES / "identity_fp32", repo / "identity_fp32")
    for name, (extra, _) in REFUSED.items():
        add_model(repo, name, extra)
    with running(repo, "--model-control-mode", "explicit", log_dir=logs_dir) as started:
        yield started


def infer_identity(url: str, model: str) -> None:
    data = np.arange(16, dtype=np.float32).reshape(1, 16)
    tensor = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    tensor.set_data_from_numpy(data)
    with grpcclient.InferenceServerClient(url) as client:
        np.testing.assert_array_equal(client.infer(model, [tensor]).as_numpy("OUTPUT0"), data)


@pytest.mark.parametrize("model", sorted(REFUSED))
def test_a_refused_key_leaves_the_model_unavailable_naming_it(server: ServerProcess, model: str) -> None:
    key = REFUSED[model][1]
    with grpcclient.InferenceServerClient(server.url) as client:
        with pytest.raises(InferenceServerException) as error:
            client.load_model(model)
        assert key in str(error.value.message())
        assert str(error.value.status()) == "StatusCode.UNIMPLEMENTED"
        assert client.is_model_ready(model) is False
        grpc_rows = {m.name: m for m in client.get_model_repository_index().models}
    assert grpc_rows[model].state == "UNAVAILABLE"
    assert key in grpc_rows[model].reason
    with httpclient.InferenceServerClient(server.http_url) as http:  # POST /v2/repository/index
        http_rows = http.get_model_repository_index()
    row = next(r for r in http_rows if r["name"] == model)
    assert row["state"] == "UNAVAILABLE"
    assert key in row["reason"]
    with grpcclient.InferenceServerClient(server.url) as client:  # the others still serve
        client.load_model("identity_fp32")
    infer_identity(server.url, "identity_fp32")


def test_what_is_parsed_is_unchanged() -> None:
    """The refusal is the repository's: load_model_config still reads Triton's configs whole."""
    tts = load_model_config(ROOT / "tests" / "data" / "configs" / "tts_sequence")
    assert tts.HasField("sequence_batching")


# ------------------------------------------------------------------------------------- version folders


@pytest.mark.parametrize(
    ("name", "version"),
    [
        ("1", 1),
        ("12", 12),
        ("9223372036854775807", 2**63 - 1),  # int64's largest
        ("01", None),  # one version, one folder name
        ("0", None),
        ("-1", None),
        ("+1", None),
        (" 1", None),
        ("1a", None),
        ("", None),
        ("\u0661", None),  # ARABIC-INDIC DIGIT ONE: isdigit() and int() accept it
        ("\uff11", None),  # FULLWIDTH DIGIT ONE
        ("9223372036854775808", None),  # past int64
        ("9" * 4000, None),  # past int()'s default digit limit too
    ],
)
def test_folder_version(name: str, version: int | None) -> None:
    assert folder_version(name) == version


def test_repository_and_auto_complete_read_the_same_version_folders(tmp_path: Path) -> None:
    """A folder the repository ignores (``02``, ``\u0662``) is not the one auto-complete reads."""
    model = tmp_path / "mlp_onnx"
    shutil.copytree(EXAMPLES / "mlp_onnx", model)
    for odd in ("02", "\u0662"):
        (model / odd).mkdir()
        (model / odd / "model.onnx").write_bytes(b"not an onnx graph")
    assert sorted(version_folders(model)) == [1]
    config = load_model_config(model, registry.autocomplete)
    assert [t.name for t in config.input] == ["INPUT0"]
    assert [t.name for t in config.output] == ["OUTPUT0"]
