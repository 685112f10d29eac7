"""The TensorFlow SavedModel backend through real servers and tritonclient: the bundled
``mlp_tf`` equals the SavedModel called in-process and the TorchScript model with the same
weights, over gRPC and HTTP, alone and batched; a signature chosen by ``signature_name``,
config names mapped to signature keys by ``tensor_names``, string tensors; and the bad cases
(missing or corrupt SavedModel, unknown signature, names or types that disagree with the
signature, an input left unfed, a bad ``tensor_names``): UNAVAILABLE with a reason, the rest of
the server serves."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.serverproc import EXAMPLES, ServerProcess, index_entry, running

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed (pip install 'clipperd[tensorflow]')")

SAVED = EXAMPLES / "mlp_tf" / "1" / "model.savedmodel"


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 64)).astype(np.float32)


def reference(x: np.ndarray) -> np.ndarray:
    signature = tf.saved_model.load(str(SAVED)).signatures["serving_default"]
    return np.asarray(signature(INPUT0=tf.constant(x))["OUTPUT0"].numpy())


def call(module: Any, url: str, model: str, inputs: dict[str, np.ndarray], out: str) -> Any:
    with module.InferenceServerClient(url) as client:
        tensors = []
        for name, array in inputs.items():
            tensor = module.InferInput(name, list(array.shape), "BYTES" if array.dtype == object else "FP32")
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        return client.infer(model, tensors).as_numpy(out)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_mlp_tf_equals_the_savedmodel_in_process(example_server: ServerProcess, protocol: str) -> None:
    module, url = (grpcclient, example_server.url) if protocol == "grpc" else (httpclient, example_server.http_url)
    for n in (1, 6):
        x = rows(n, n)
        np.testing.assert_allclose(call(module, url, "mlp_tf", {"INPUT0": x}, "OUTPUT0"), reference(x), atol=1e-5)


def test_mlp_tf_equals_mlp_torch_and_batches(example_server: ServerProcess) -> None:
    inputs = [rows(1, 200 + i) for i in range(24)]
    with ThreadPoolExecutor(12) as pool:
        tf_out = list(
            pool.map(lambda x: call(grpcclient, example_server.url, "mlp_tf", {"INPUT0": x}, "OUTPUT0"), inputs)
        )
    for x, y in zip(inputs, tf_out, strict=True):
        torch_y = call(grpcclient, example_server.url, "mlp_torch", {"INPUT__0": x}, "OUTPUT__0")
        np.testing.assert_allclose(y, torch_y, atol=1e-5)


# ------------------------------------------------------------------------- a repository of cases


class TwoSignatures(tf.Module):  # type: ignore[name-defined,misc]  # tensorflow has no type information
    @tf.function(  # type: ignore[untyped-decorator]
        input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")]
    )
    def double(self, x: Any) -> dict[str, Any]:
        return {"y": x * 2.0}

    @tf.function(  # type: ignore[untyped-decorator]
        input_signature=[tf.TensorSpec([None], tf.string, name="text")]
    )
    def upper(self, text: Any) -> dict[str, Any]:
        return {"shout": tf.strings.upper(text)}

    @tf.function(  # type: ignore[untyped-decorator]
        input_signature=[tf.TensorSpec([None, 2], tf.float32, name="a"), tf.TensorSpec([None, 2], tf.float32, name="b")]
    )
    def add(self, a: Any, b: Any) -> dict[str, Any]:
        return {"sum": a + b}


def save(folder: Path) -> None:
    module = TwoSignatures()
    signatures = {"serving_default": module.double, "upper": module.upper, "add": module.add}
    tf.saved_model.save(module, str(folder), signatures=signatures)


def add_model(repo: Path, name: str, config: str, saved: Path | None, corrupt: bool = False) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(f'name: "{name}"\nplatform: "tensorflow_savedmodel"\n{config}')
    target = repo / name / "1" / "model.savedmodel"
    if corrupt:
        target.mkdir()
        (target / "saved_model.pb").write_bytes(b"not a saved model")
    elif saved is not None:
        target.symlink_to(saved, target_is_directory=True)


def params(**values: str) -> str:
    return "".join(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n' for k, v in values.items())


DOUBLE = """max_batch_size: 8
input [ { name: "x", data_type: TYPE_FP32, dims: [ 2 ] } ]
output [ { name: "y", data_type: TYPE_FP32, dims: [ 2 ] } ]
"""
RENAMED = DOUBLE.replace('"x"', '"IN"').replace('"y"', '"OUT"')
UPPER = """max_batch_size: 0
input [ { name: "text", data_type: TYPE_STRING, dims: [ -1 ] } ]
output [ { name: "shout", data_type: TYPE_STRING, dims: [ -1 ] } ]
"""
BAD = {
    "no_folder": (DOUBLE, "none", "SavedModel folder 'model.savedmodel' not found"),
    "corrupt": (DOUBLE, "corrupt", "cannot be loaded by TensorFlow"),
    "no_signature": (DOUBLE + params(signature_name="predict"), "ok", "has no signature 'predict' (it has: add,"),
    "wrong_name": (RENAMED, "ok", "input 'IN' is not in the signature (it has x)"),
    "wrong_type": (
        DOUBLE.replace("TYPE_FP32, dims: [ 2 ] } ]\noutput", "TYPE_INT32, dims: [ 2 ] } ]\noutput"),
        "ok",
        "input 'x' is TYPE_INT32 in the config but float32 in the signature",
    ),
    "unfed": (
        DOUBLE.replace('"x"', '"a"').replace('"y"', '"sum"') + params(signature_name="add"),
        "ok",
        "the signature needs input(s) ['b'] that the config lacks",
    ),
    "bad_names": (RENAMED + params(tensor_names="IN"), "ok", "tensor_names is CONFIG_NAME=signature_key"),
}


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[ServerProcess]:
    saved = tmp_path_factory.mktemp("saved") / "two_signatures"
    save(saved)
    repo = tmp_path_factory.mktemp("tf_cases")
    add_model(repo, "double", DOUBLE, saved)
    add_model(repo, "renamed", RENAMED + params(tensor_names="IN=x, OUT=y"), saved)
    add_model(repo, "upper", UPPER + params(signature_name="upper"), saved)
    for name, (config, state, _) in BAD.items():
        add_model(repo, name, config, saved if state == "ok" else None, corrupt=state == "corrupt")
    with running(repo, "--no-strict-readiness", log_dir=logs_dir) as proc:
        yield proc


def test_the_default_signature_and_renamed_tensors(cases: ServerProcess) -> None:
    x = np.array([[1.0, 2.0], [3.0, -4.0]], np.float32)
    assert call(grpcclient, cases.url, "double", {"x": x}, "y").tolist() == (x * 2).tolist()
    assert call(httpclient, cases.http_url, "renamed", {"IN": x}, "OUT").tolist() == (x * 2).tolist()


def test_a_signature_by_name_with_string_tensors(cases: ServerProcess) -> None:
    text = np.array([b"clipper", "d\u00e9j\u00e0".encode()], dtype=object)
    got = call(grpcclient, cases.url, "upper", {"text": text}, "shout")
    expected = tf.strings.upper(tf.constant(text.astype(bytes))).numpy().tolist()  # TensorFlow in-process
    assert got.tolist() == expected
    assert got.tolist()[0] == b"CLIPPER"


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_models_are_unavailable_with_a_reason(cases: ServerProcess, name: str) -> None:
    state, reason = index_entry(cases.url, name)
    assert state == "UNAVAILABLE"
    assert BAD[name][2] in reason
    assert "/tmp" not in reason
    x = np.ones((1, 2), np.float32)
    assert call(grpcclient, cases.url, "double", {"x": x}, "y").tolist() == [[2.0, 2.0]]
