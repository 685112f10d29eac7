"""Model control in explicit mode, as tritonclient's simple_grpc_model_control example drives it:
start with no models (or the ones --load-model names), load, infer, unload, load again."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2, service_pb2
from tritonclient.utils import InferenceServerException

from tests.serverproc import EXAMPLES, ServerProcess, running

pytestmark = pytest.mark.timeout(120)

MODELS = tuple(sorted(p.name for p in EXAMPLES.iterdir() if (p / "config.pbtxt").is_file()))  # every example
EXPLICIT = ("--model-control-mode", "explicit")

IDENTITY_YAML = """\
# identity_fp32's config.pbtxt, in YAML
name: identity_yaml
backend: python
max_batch_size: 64
input:
  - name: INPUT0
    data_type: TYPE_FP32
    dims: [16]
output:
  - name: OUTPUT0
    data_type: TYPE_FP32
    dims: [16]
dynamic_batching: {}
instance_group:
  - kind: KIND_CPU
    count: 1
"""


# ----------------------------------------------------------------------------------------- helpers


@pytest.fixture
def explicit_empty(logs_dir: Path) -> Iterator[ServerProcess]:
    with running(EXAMPLES, *EXPLICIT, log_dir=logs_dir) as server:
        yield server


@pytest.fixture
def client(explicit_empty: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(explicit_empty.url) as triton:
        yield triton


def status_of(error: InferenceServerException) -> str:
    return str(error.status())


def infer_simple(client: grpcclient.InferenceServerClient) -> Any:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 2, dtype=np.int32)
    inputs = []
    for name, data in (("INPUT0", a), ("INPUT1", b)):
        tensor = grpcclient.InferInput(name, [1, 16], "INT32")
        tensor.set_data_from_numpy(data)
        inputs.append(tensor)
    result = client.infer("simple", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    return result


def infer_identity(client: grpcclient.InferenceServerClient, model: str = "identity_fp32") -> None:
    data = np.arange(32, dtype=np.float32).reshape(2, 16) / 7
    tensor = grpcclient.InferInput("INPUT0", [2, 16], "FP32")
    tensor.set_data_from_numpy(data)
    result = client.infer(model, [tensor])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)


def ready_index(url: str) -> list[Any]:
    """RepositoryIndex with ready=true (tritonclient does not expose the flag)."""
    with grpc.insecure_channel(url) as channel:
        rpc = channel.unary_unary(
            "/inference.GRPCInferenceService/RepositoryIndex",
            request_serializer=service_pb2.RepositoryIndexRequest.SerializeToString,
            response_deserializer=service_pb2.RepositoryIndexResponse.FromString,
        )
        return list(rpc(service_pb2.RepositoryIndexRequest(ready=True), timeout=30).models)


def states(client: grpcclient.InferenceServerClient) -> dict[str, tuple[str, str]]:
    return {m.name: (m.version, m.state) for m in client.get_model_repository_index().models}


# ---------------------------------------------------------------------------------- explicit, empty


def test_explicit_starts_with_no_models(
    client: grpcclient.InferenceServerClient, explicit_empty: ServerProcess
) -> None:
    assert client.is_server_live() is True
    assert client.is_server_ready() is True
    index = client.get_model_repository_index().models
    assert sorted(m.name for m in index) == sorted(MODELS)
    for row in index:
        assert (row.version, row.state) == ("", ""), row
    for model in MODELS:
        assert client.is_model_ready(model) is False
    assert ready_index(explicit_empty.url) == []


def test_model_control_flow(client: grpcclient.InferenceServerClient, explicit_empty: ServerProcess) -> None:
    """simple_grpc_model_control.py: load, infer, unload, refuse, load again."""
    client.load_model("simple")
    assert client.is_model_ready("simple") is True
    assert client.is_model_ready("simple", "1") is True
    assert client.is_server_ready() is True
    infer_simple(client)
    assert states(client)["simple"] == ("1", "READY")
    assert [(m.name, m.version, m.state) for m in ready_index(explicit_empty.url)] == [("simple", "1", "READY")]
    assert client.get_model_config("simple").config.max_batch_size == 8

    client.unload_model("simple")
    assert client.is_model_ready("simple") is False
    assert client.is_model_ready("simple", "1") is False
    with pytest.raises(InferenceServerException) as error:
        infer_simple(client)
    assert status_of(error.value) == "StatusCode.UNAVAILABLE"
    assert "simple" in error.value.message()
    assert states(client)["simple"][1] == "UNAVAILABLE"
    assert ready_index(explicit_empty.url) == []
    assert client.is_server_ready() is True  # nothing asked for is missing

    client.load_model("simple")
    assert client.is_model_ready("simple") is True
    infer_simple(client)
    assert states(client)["simple"] == ("1", "READY")


def test_load_is_idempotent_and_reload_keeps_serving(client: grpcclient.InferenceServerClient) -> None:
    client.load_model("identity_fp32")
    infer_identity(client)
    client.load_model("identity_fp32")  # a reload of the same files
    assert client.is_model_ready("identity_fp32") is True
    infer_identity(client)


def test_unload_of_model_never_loaded(client: grpcclient.InferenceServerClient) -> None:
    client.unload_model("simple")
    assert client.is_model_ready("simple") is False


def test_load_several_and_ready_index(client: grpcclient.InferenceServerClient, explicit_empty: ServerProcess) -> None:
    client.load_model("simple")
    client.load_model("mlp_torch")
    ready = {(m.name, m.version, m.state) for m in ready_index(explicit_empty.url)}
    assert ready == {("simple", "1", "READY"), ("mlp_torch", "1", "READY")}
    full = states(client)
    assert full["identity_fp32"] == ("", "")
    assert full["simple_string"] == ("", "")
    stats = client.get_inference_statistics().model_stats
    assert {s.name for s in stats} == {"simple", "mlp_torch"}


def test_load_unknown_model(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as error:
        client.load_model("no_such_model")
    assert status_of(error.value) == "StatusCode.NOT_FOUND"
    assert "no_such_model" in error.value.message()
    assert "not in the model repository" in error.value.message()
    assert "no_such_model" not in states(client)
    assert client.is_server_ready() is True  # a refused load is not something the server waits for


def test_unload_unknown_model(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as error:
        client.unload_model("no_such_model")
    assert status_of(error.value) == "StatusCode.NOT_FOUND"
    assert "no_such_model" in error.value.message()


BAD_NAMES = ["..", ".", "../simple", "simple/1", "/etc", "a\\b", "simple\x00", "", "x" * 300, ".hidden"]


@pytest.mark.parametrize("action", ["load_model", "unload_model"])
def test_invalid_model_names(client: grpcclient.InferenceServerClient, action: str) -> None:
    for name in BAD_NAMES:
        with pytest.raises(InferenceServerException) as error:
            getattr(client, action)(name)
        assert status_of(error.value) == "StatusCode.INVALID_ARGUMENT", (name, error.value.message())
        message = error.value.message()
        assert "invalid model name" in message
        assert len(message) < 300, "the message must bound the name it quotes"
    assert sorted(states(client)) == sorted(MODELS)
    assert client.is_server_ready() is True


def test_load_parameters_refused(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as error:
        client.load_model("simple", config='{"max_batch_size": 4}')
    assert status_of(error.value) == "StatusCode.UNIMPLEMENTED"
    assert client.is_model_ready("simple") is False


def test_unknown_repository_name_refused(explicit_empty: ServerProcess) -> None:
    with grpc.insecure_channel(explicit_empty.url) as channel:
        rpc = channel.unary_unary(
            "/inference.GRPCInferenceService/RepositoryModelLoad",
            request_serializer=service_pb2.RepositoryModelLoadRequest.SerializeToString,
            response_deserializer=service_pb2.RepositoryModelLoadResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as error:
            rpc(service_pb2.RepositoryModelLoadRequest(repository_name="elsewhere", model_name="simple"), timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# ------------------------------------------------------------------------------ explicit, --load-model


def test_load_model_flags(logs_dir: Path) -> None:
    with (
        running(EXAMPLES, *EXPLICIT, "--load-model", "simple", "--load-model", "identity_fp32", log_dir=logs_dir) as s,
        grpcclient.InferenceServerClient(s.url) as client,
    ):
        assert client.is_server_ready() is True
        ready = {m: client.is_model_ready(m) for m in MODELS}
        assert ready == {m: m in ("simple", "identity_fp32") for m in MODELS}
        assert {m.name for m in ready_index(s.url)} == {"simple", "identity_fp32"}
        infer_simple(client)
        infer_identity(client)
        client.unload_model("identity_fp32")
        assert client.is_model_ready("identity_fp32") is False
        assert client.is_model_ready("simple") is True
        client.load_model("simple_string")
        assert {m.name for m in ready_index(s.url)} == {"simple", "simple_string"}


def test_load_model_star_loads_all(logs_dir: Path) -> None:
    with (
        running(EXAMPLES, *EXPLICIT, "--load-model", "*", log_dir=logs_dir) as s,
        grpcclient.InferenceServerClient(s.url) as client,
    ):
        assert client.is_server_ready() is True
        for model in MODELS:
            assert client.is_model_ready(model) is True, model
        assert {(m.name, m.version, m.state) for m in ready_index(s.url)} == {(m, "1", "READY") for m in MODELS}
        infer_simple(client)


# ------------------------------------------------------------------------------------ config.yaml


def test_yaml_config_loads_and_infers(tmp_path: Path, logs_dir: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLES, repo)
    model = repo / "identity_yaml"
    shutil.copytree(repo / "identity_fp32", model)
    (model / "config.pbtxt").unlink()
    (model / "config.yaml").write_text(IDENTITY_YAML)
    with (
        running(repo, *EXPLICIT, "--load-model", "identity_yaml", log_dir=logs_dir) as s,
        grpcclient.InferenceServerClient(s.url) as client,
    ):
        assert client.is_model_ready("identity_yaml") is True
        infer_identity(client, "identity_yaml")
        meta = client.get_model_metadata("identity_yaml")
        assert meta.platform == "python"
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("INPUT0", "FP32", [-1, 16])]
        served = client.get_model_config("identity_yaml").config
        written = text_format.Parse(
            (EXAMPLES / "identity_fp32" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
        )
        assert served.name == "identity_yaml"
        assert served.backend == written.backend
        assert served.max_batch_size == written.max_batch_size
        assert list(served.input) == list(written.input)
        assert list(served.output) == list(written.output)
        assert served.HasField("dynamic_batching")
        assert [(g.kind, g.count) for g in served.instance_group] == [(g.kind, g.count) for g in written.instance_group]
        # the same model under its pbtxt name, loaded next to it, gives the same config
        client.load_model("identity_fp32")
        twin = client.get_model_config("identity_fp32").config
        twin.name = "identity_yaml"
        for group in twin.instance_group:
            group.name = group.name.replace("identity_fp32", "identity_yaml")
        assert twin == served


def test_changed_files_picked_up_on_reload(tmp_path: Path, logs_dir: Path) -> None:
    """Explicit mode: a load of an already loaded model reads its files again."""
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLES, repo)
    with (
        running(repo, *EXPLICIT, "--load-model", "identity_fp32", log_dir=logs_dir) as s,
        grpcclient.InferenceServerClient(s.url) as client,
    ):
        assert client.get_model_config("identity_fp32").config.max_batch_size == 64
        config = repo / "identity_fp32" / "config.pbtxt"
        config.write_text(config.read_text().replace("max_batch_size: 64", "max_batch_size: 4"))
        client.load_model("identity_fp32")
        assert client.get_model_config("identity_fp32").config.max_batch_size == 4
        infer_identity(client)


def test_broken_config_load_fails_with_reason(tmp_path: Path, logs_dir: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLES, repo)
    (repo / "simple" / "config.pbtxt").write_text('name: "simple"\nmax_batch_size: -3\n')
    with (
        running(repo, *EXPLICIT, log_dir=logs_dir) as s,
        grpcclient.InferenceServerClient(s.url) as client,
    ):
        with pytest.raises(InferenceServerException) as error:
            client.load_model("simple")
        assert error.value.message()
        assert client.is_model_ready("simple") is False
        rows = {m.name: m for m in client.get_model_repository_index().models}
        assert rows["simple"].state == "UNAVAILABLE"
        assert rows["simple"].reason
        client.load_model("identity_fp32")  # one bad model does not stop the others
        infer_identity(client)


# ------------------------------------------------------------------- readiness of what was asked for


def wait_until_started(server: ServerProcess, timeout: float = 60.0) -> None:
    """The server logs "serving N model version(s)" once the models asked for at start are tried."""
    end = time.monotonic() + timeout
    while "serving " not in server.log():
        assert server.is_running(), server.log()
        assert time.monotonic() < end, f"start not finished after {timeout}s:\n{server.log()}"
        time.sleep(0.05)


def test_broken_model_asked_for_at_start_keeps_server_not_ready(tmp_path: Path, logs_dir: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLES, repo)
    (repo / "simple_string" / "config.pbtxt").write_text('name: "simple_string"\nmax_batch_size: -3\n')
    args = (*EXPLICIT, "--load-model", "simple", "--load-model", "simple_string")
    with (
        running(repo, *args, log_dir=logs_dir, wait_ready=False) as s,
        grpcclient.InferenceServerClient(s.url) as client,
    ):
        wait_until_started(s)
        assert client.is_model_ready("simple") is True
        assert client.is_server_ready() is False
        (repo / "simple_string" / "config.pbtxt").write_text((EXAMPLES / "simple_string" / "config.pbtxt").read_text())
        client.load_model("simple_string")
        assert client.is_server_ready() is True


def test_missing_model_asked_for_at_start_keeps_server_not_ready(tmp_path: Path, logs_dir: Path) -> None:
    """--strict-readiness (the default): "readiness requires every model asked for at start to be
    ready". A --load-model name with no folder (a typo, a volume not mounted yet) is such a model:
    the server must not report ready until it is loaded, as with a model whose config is broken."""
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLES, repo)
    args = (*EXPLICIT, "--load-model", "simple", "--load-model", "late_model")
    with (
        running(repo, *args, log_dir=logs_dir, wait_ready=False) as s,
        grpcclient.InferenceServerClient(s.url) as client,
    ):
        wait_until_started(s)
        assert client.is_model_ready("simple") is True
        assert client.is_model_ready("late_model") is False
        assert client.is_server_ready() is False, "a model asked for at start is missing, yet the server is ready"
        late = repo / "late_model"
        shutil.copytree(repo / "identity_fp32", late)
        config = late / "config.pbtxt"
        config.write_text(config.read_text().replace('name: "identity_fp32"', 'name: "late_model"'))
        client.load_model("late_model")
        assert client.is_server_ready() is True
        infer_identity(client, "late_model")
