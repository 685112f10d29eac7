"""The admin client (clipperd_admin) against real servers on temporary repositories: each deploy
kind end to end through tritonclient, versions (deploy, set, roll back, delete), explicit and
poll modes, and every bad input raising before the repository is touched."""

from __future__ import annotations

import hashlib
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from clipperd_admin import (
    AdminError,
    ClipperdAdmin,
    ExportError,
    InvalidModelName,
    LoadFailed,
    ModelClash,
    ModelNotFound,
    ServerError,
    TensorSpec,
)
from tests.serverproc import ServerProcess, free_port, running

pytestmark = pytest.mark.timeout(240)

VEC4 = [("X", "FP32", [4])]


# ----------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def explicit_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("explicit-repo")


@pytest.fixture(scope="module")
def explicit_server(explicit_repo: Path, logs_dir: Path) -> Iterator[ServerProcess]:
    with running(explicit_repo, "--model-control-mode", "explicit", log_dir=logs_dir) as server:
        yield server
        assert server.is_running(), server.log()


@pytest.fixture(scope="module")
def poll_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("poll-repo")


@pytest.fixture(scope="module")
def poll_server(poll_repo: Path, logs_dir: Path) -> Iterator[ServerProcess]:
    args = ("--model-control-mode", "poll", "--repository-poll-secs", "0.2")
    with running(poll_repo, *args, log_dir=logs_dir) as server:
        yield server
        assert server.is_running(), server.log()


@pytest.fixture
def admin(explicit_repo: Path, explicit_server: ServerProcess) -> ClipperdAdmin:
    return ClipperdAdmin(explicit_repo, explicit_server.http_url, timeout=60)


@pytest.fixture
def poll_admin(poll_repo: Path, poll_server: ServerProcess) -> ClipperdAdmin:
    return ClipperdAdmin(poll_repo, poll_server.http_url, timeout=60)


def infer(url: str, model: str, inputs: dict[str, np.ndarray], outputs: list[str], version: str = "") -> list[Any]:
    with grpcclient.InferenceServerClient(url) as client:
        tensors = []
        for name, array in inputs.items():
            wire = "BYTES" if array.dtype == object else str(array.dtype).upper().replace("FLOAT", "FP")
            tensor = grpcclient.InferInput(name, list(array.shape), wire)
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        result = client.infer(model, tensors, model_version=version)
        return [result.as_numpy(name) for name in outputs]


def snapshot(root: Path) -> dict[str, str]:
    """Every path under the repository with a digest of its content: equal means untouched."""
    rows = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        rows[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return rows


def states(admin: ClipperdAdmin, name: str) -> dict[int | None, str]:
    return {s.version: s.state for s in admin.list_models() if s.name == name}


def scaler(factor: float) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A closure (pickled by value): two inputs, two outputs, one of them a reduction per row."""

    def function(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x * np.float32(factor) + y, (x - y).sum(axis=1, keepdims=True)

    return function


TWO_IN = [("X", "FP32", [4]), ("Y", "FP32", [4])]
TWO_OUT = [TensorSpec("SCALED", "FP32", (4,)), TensorSpec("DIFF_SUM", "FP32", (1,))]
XY: dict[str, np.ndarray] = {
    "X": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    "Y": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
}


def check_scaler(url: str, model: str, factor: float, version: str = "") -> None:
    got = infer(url, model, XY, ["SCALED", "DIFF_SUM"], version)
    want = scaler(factor)(XY["X"], XY["Y"])
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6)  # same float32 operations: equal up to rounding


# ------------------------------------------------------------------------------ Python functions


def test_python_function_versions_set_and_rollback(admin: ClipperdAdmin, explicit_server: ServerProcess) -> None:
    url = explicit_server.url
    assert admin.deploy_python_function("fn_scale", scaler(2.0), TWO_IN, TWO_OUT) == 1
    assert states(admin, "fn_scale") == {1: "READY"}
    check_scaler(url, "fn_scale", 2.0)

    assert admin.deploy_python_function("fn_scale", scaler(5.0), TWO_IN, TWO_OUT) == 2
    check_scaler(url, "fn_scale", 5.0)  # latest policy: version 2 answers
    assert states(admin, "fn_scale")[2] == "READY"
    assert states(admin, "fn_scale")[1] != "READY"

    assert admin.rollback_model("fn_scale") == 1
    check_scaler(url, "fn_scale", 2.0)
    assert admin.get_model_config("fn_scale")["version_policy"] == {"specific": {"versions": [1]}}

    admin.set_model_version("fn_scale", 2)
    check_scaler(url, "fn_scale", 5.0)
    assert states(admin, "fn_scale")[2] == "READY"
    assert states(admin, "fn_scale")[1] != "READY"

    assert admin.deploy_python_function("fn_scale", scaler(7.0), TWO_IN, TWO_OUT) == 3
    check_scaler(url, "fn_scale", 7.0)  # a deploy serves what it deploys, even after a pin
    assert admin.model_versions("fn_scale") == [1, 2, 3]


def test_python_function_strings_and_explicit_version(admin: ClipperdAdmin, explicit_server: ServerProcess) -> None:
    def shout(text: np.ndarray) -> np.ndarray:
        return np.array([[t.decode().upper().encode()] for t in text[:, 0]], dtype=object)

    version = admin.deploy_python_function(
        "fn_shout", shout, [("TEXT", "STRING", [1])], [("LOUD", "STRING", [1])], version=7, execution_mode="thread"
    )
    assert version == 7
    text = np.array([[b"hello"], [b"clipper"]], dtype=object)
    (got,) = infer(explicit_server.url, "fn_shout", {"TEXT": text}, ["LOUD"])
    assert got.tolist() == [[b"HELLO"], [b"CLIPPER"]]
    assert admin.get_model_config("fn_shout")["parameters"]["execution_mode"] == {"string_value": "thread"}

    def whisper(text: np.ndarray) -> np.ndarray:
        return np.array([[t.decode().lower().encode()] for t in text[:, 0]], dtype=object)

    spec = ([("TEXT", "STRING", [1])], [("LOUD", "STRING", [1])])
    assert admin.deploy_python_function("fn_shout", whisper, *spec, version=3, execution_mode="thread") == 3
    assert admin.get_model_config("fn_shout")["version_policy"] == {"specific": {"versions": [3]}}  # older: pinned
    (got,) = infer(explicit_server.url, "fn_shout", {"TEXT": text}, ["LOUD"])
    assert got.tolist() == [[b"hello"], [b"clipper"]]


def test_clipper_input_type_names(admin: ClipperdAdmin, explicit_server: ServerProcess) -> None:
    admin.deploy_python_function("fn_doubles", lambda x: x.sum(axis=1, keepdims=True), "doubles", "doubles")
    config = admin.get_model_config("fn_doubles")
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [("INPUT", "TYPE_FP64", [-1])]
    rows = np.array([[0.5, 1.25, 2.0]], dtype=np.float64)
    (got,) = infer(explicit_server.url, "fn_doubles", {"INPUT": rows}, ["OUTPUT"])
    np.testing.assert_array_equal(got, [[3.75]])


def test_function_that_raises_fails_its_request_only(admin: ClipperdAdmin, explicit_server: ServerProcess) -> None:
    def broken(x: np.ndarray) -> np.ndarray:
        raise ValueError("no good row in this batch")

    admin.deploy_python_function("fn_broken", broken, VEC4, [("Y", "FP32", [4])])
    with pytest.raises(InferenceServerException) as caught:
        infer(explicit_server.url, "fn_broken", {"X": np.ones((2, 4), np.float32)}, ["Y"])
    assert "model 'fn_broken' failed: ValueError: no good row in this batch" in str(caught.value)
    assert "INTERNAL" in str(caught.value.status())
    assert explicit_server.is_running()
    admin.deploy_python_function("fn_after_broken", scaler(1.0), TWO_IN, TWO_OUT)
    check_scaler(explicit_server.url, "fn_after_broken", 1.0)  # the server still serves


def test_wrong_output_type_is_reported(admin: ClipperdAdmin, explicit_server: ServerProcess) -> None:
    admin.deploy_python_function("fn_floaty", lambda x: x * 0.5, [("X", "INT32", [2])], [("Y", "INT32", [2])])
    with pytest.raises(InferenceServerException, match="float64 cannot be cast to int32 safely"):
        infer(explicit_server.url, "fn_floaty", {"X": np.ones((1, 2), np.int32)}, ["Y"])


# ----------------------------------------------------------------------------------- frameworks


def test_pytorch_trace_and_script(admin: ClipperdAdmin, explicit_server: ServerProcess) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    traced = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
    example = torch.randn(2, 8)
    assert admin.deploy_pytorch_model("torch_mlp", traced, example) == 1
    config = admin.get_model_config("torch_mlp")
    assert config["platform"] == "pytorch_libtorch"
    assert [t["name"] for t in config["input"]] == ["INPUT__0"]
    assert config["output"][0]["dims"] == [3]

    x = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    (got,) = infer(explicit_server.url, "torch_mlp", {"INPUT__0": x}, ["OUTPUT__0"])
    with torch.no_grad():
        np.testing.assert_allclose(got, traced(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)

    class Clipped(torch.nn.Module):  # type: ignore[misc,name-defined]  # data-dependent: script keeps it, trace not
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(8, 3)

        # unannotated (no type comment either: TorchScript reads those): x is a Tensor to it
        def forward(self, x):
            y = self.linear(x)
            if bool(y.sum() > 0):
                return y.clamp(min=0.0)
            return y

    scripted = Clipped().eval()
    assert admin.deploy_pytorch_model("torch_mlp", scripted, example, how="script") == 2
    (got,) = infer(explicit_server.url, "torch_mlp", {"INPUT__0": x}, ["OUTPUT__0"])
    with torch.no_grad():
        np.testing.assert_allclose(got, scripted(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)


def matmul_graph(weights: np.ndarray) -> Any:
    from onnx import TensorProto, checker, helper, numpy_helper

    rows, cols = weights.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])],
        "matmul",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", rows])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", cols])],
        initializer=[numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    checker.check_model(model)
    return model


def test_onnx_model_with_autocompleted_config(
    admin: ClipperdAdmin, explicit_server: ServerProcess, tmp_path: Path
) -> None:
    pytest.importorskip("onnx")
    weights = np.random.default_rng(2).standard_normal((4, 3)).astype(np.float32)
    assert admin.deploy_onnx_model("onnx_matmul", matmul_graph(weights)) == 1
    assert "input" not in admin.get_model_config("onnx_matmul")  # left to the server's auto-completion
    served = admin.get_model_config("onnx_matmul", from_server=True)
    assert [t["name"] for t in served["input"]] == ["X"]

    x = np.random.default_rng(3).standard_normal((3, 4)).astype(np.float32)  # auto-completion allows 4 rows
    (got,) = infer(explicit_server.url, "onnx_matmul", {"X": x}, ["Y"])
    np.testing.assert_allclose(got, x @ weights, rtol=1e-5, atol=1e-6)

    path = tmp_path / "v2.onnx"
    path.write_bytes(matmul_graph(weights * 2).SerializeToString())
    assert admin.deploy_onnx_model("onnx_matmul", path) == 2  # from a file this time
    (got,) = infer(explicit_server.url, "onnx_matmul", {"X": x}, ["Y"])
    np.testing.assert_allclose(got, x @ (weights * 2), rtol=1e-5, atol=1e-6)

    before = snapshot(admin.files.root)
    wider = matmul_graph(np.ones((5, 3), np.float32)).SerializeToString()
    with pytest.raises(ModelClash, match="share one config"):
        admin.deploy_onnx_model("onnx_matmul", wider)
    assert snapshot(admin.files.root) == before


def test_tensorflow_saved_model(admin: ClipperdAdmin, explicit_server: ServerProcess, tmp_path: Path) -> None:
    tf = pytest.importorskip("tensorflow")

    class Affine(tf.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(np.random.default_rng(4).standard_normal((4, 2)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="features")])  # type: ignore[untyped-decorator]
        def __call__(self, features: Any) -> Any:
            return {"scores": tf.matmul(features, self.w)}

    module = Affine()
    saved = tmp_path / "affine"
    tf.saved_model.save(module, str(saved), signatures=module.__call__)
    assert admin.deploy_tensorflow_model("tf_affine", saved) == 1
    config = admin.get_model_config("tf_affine")
    assert [t["name"] for t in config["input"]] == ["features"]
    assert [t["name"] for t in config["output"]] == ["scores"]

    x = np.random.default_rng(5).standard_normal((3, 4)).astype(np.float32)
    (got,) = infer(explicit_server.url, "tf_affine", {"features": x}, ["scores"])
    np.testing.assert_allclose(got, module(tf.constant(x))["scores"].numpy(), rtol=1e-5, atol=1e-6)


def test_sklearn_predict_and_predict_proba(admin: ClipperdAdmin, explicit_server: ServerProcess) -> None:
    linear_model = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(6)
    features = rng.standard_normal((60, 3)).astype(np.float32)
    labels = (features[:, 0] + features[:, 1] > 0).astype(np.int64) + 2 * (features[:, 2] > 1)
    estimator = linear_model.LogisticRegression(max_iter=500).fit(features, labels)

    admin.deploy_sklearn_model("sk_proba", estimator, features[:2], method="predict_proba")
    admin.deploy_sklearn_model("sk_labels", estimator, features[:2])
    x = rng.standard_normal((7, 3)).astype(np.float32)
    (proba,) = infer(explicit_server.url, "sk_proba", {"FEATURES": x}, ["OUTPUT"])
    np.testing.assert_allclose(proba, estimator.predict_proba(x), rtol=1e-6, atol=1e-9)
    (predicted,) = infer(explicit_server.url, "sk_labels", {"FEATURES": x}, ["OUTPUT"])
    np.testing.assert_array_equal(predicted.reshape(-1), estimator.predict(x))
    assert admin.get_model_config("sk_labels")["output"][0]["data_type"] == "TYPE_INT64"


# ------------------------------------------------------------------------------------ bad input


def unpicklable() -> Callable[[np.ndarray], np.ndarray]:
    lock = threading.Lock()

    def function(x: np.ndarray) -> np.ndarray:
        with lock:
            return x

    return function


Case = tuple[Callable[[ClipperdAdmin], object], type[Exception], str]  # call, error, message pattern
IDENT = lambda x: x  # noqa: E731
OUT4 = [("Y", "FP32", [4])]
BAD_NAMES = ("", "a/b", "..", "../escape", ".hidden", "a b", "x" * 300, "a\\b", "ü")


def function_cases() -> dict[str, Case]:
    def deploy(name: str = "f_bad", func: Any = IDENT, inputs: Any = VEC4, outputs: Any = OUT4, **kw: Any) -> Any:
        return lambda a: a.deploy_python_function(name, func, inputs, outputs, **kw)

    cases: dict[str, Case] = {f"name {bad!r}": (deploy(bad), InvalidModelName, "model name") for bad in BAD_NAMES}
    return cases | {
        "unpicklable": (deploy(func=unpicklable()), ExportError, "cannot be pickled: TypeError"),
        "not callable": (deploy(func=42), ExportError, "not callable"),
        "no outputs": (deploy(outputs=[]), ValueError, "at least one output"),
        "duplicate inputs": (deploy(inputs=VEC4 * 2), ValueError, "names must differ"),
        "unknown type": (deploy(inputs=[("X", "FP99", [4])]), ValueError, "unknown data type"),
        "zero dim": (deploy(inputs=[("X", "FP32", [0])]), ValueError, "positive or -1"),
        "version 0": (deploy(version=0), ValueError, "positive integer"),
        "version True": (deploy(version=True), ValueError, "positive integer"),
        "execution mode": (deploy(execution_mode="gpu"), ValueError, "execution_mode"),
        "negative batch": (deploy(max_batch_size=-1), ValueError, "max_batch_size"),
        "requirement": (deploy(requirements=["os; rm"]), ValueError, "module names"),
        "clipper type": (deploy(inputs="float"), ValueError, "unknown input type 'float'"),
        "clash: other tensors": (
            deploy("fixed", inputs=[("X", "FP32", [5])], outputs=[("Y", "FP32", [5])]),
            ModelClash,
            "share one config",
        ),
        "clash: version exists": (deploy("fixed", version=1), ModelClash, "already has version 1"),
        "onnx bytes": (lambda a: a.deploy_onnx_model("o_bad", b"\x08\x07"), ExportError, "ONNX Runtime"),
        "onnx file": (lambda a: a.deploy_onnx_model("o_bad", "/nonexistent.onnx"), ExportError, "not found"),
        "onnx object": (lambda a: a.deploy_onnx_model("o_bad", 3.5), ExportError, "give an ONNX file"),
        "tf folder": (lambda a: a.deploy_tensorflow_model("tf_bad", "/tmp"), ExportError, "saved_model.pb"),
        "set unknown version": (lambda a: a.set_model_version("fixed", 9), ModelNotFound, "no version 9"),
        "set unknown model": (lambda a: a.set_model_version("nothing_here", 1), ModelNotFound, "not in the repository"),
        "set bad name": (lambda a: a.set_model_version("../fixed", 1), InvalidModelName, "model name"),
        "rollback from first": (lambda a: a.rollback_model("fixed"), AdminError, "no version older"),
        "delete only version": (lambda a: a.delete_model_version("fixed", 1), AdminError, "only version"),
        "delete unknown version": (lambda a: a.delete_model_version("fixed", 4), ModelNotFound, "no version 4"),
        "delete unknown model": (lambda a: a.delete_model("nothing_here"), ModelNotFound, "not in the repository"),
        "config of unknown model": (lambda a: a.get_model_config("nothing_here"), ModelNotFound, "not in the"),
    }


def torch_cases() -> dict[str, Case]:
    torch = pytest.importorskip("torch")

    class ReturnsText(torch.nn.Module):  # type: ignore[misc,name-defined]
        def forward(self, x: Any) -> Any:
            return "not a tensor"

    class Unscriptable(torch.nn.Module):  # type: ignore[misc,name-defined]
        def forward(self, x: Any, *rest: Any) -> Any:
            return x

    example = torch.ones(1, 4)
    return {
        "untraceable": (lambda a: a.deploy_pytorch_model("t_bad", ReturnsText(), example), ExportError, "jit.trace"),
        "unscriptable": (
            lambda a: a.deploy_pytorch_model("t_bad", Unscriptable(), example, how="script"),
            ExportError,
            "jit.script",
        ),
        "example not a tensor": (
            lambda a: a.deploy_pytorch_model("t_bad", ReturnsText(), [1, 2]),
            ExportError,
            "torch.Tensor",
        ),
        "unknown how": (
            lambda a: a.deploy_pytorch_model("t_bad", ReturnsText(), example, how="jit"),
            ValueError,
            "'trace' or 'script'",
        ),
        "unknown instance kind": (
            lambda a: a.deploy_pytorch_model("t_bad", torch.nn.Linear(4, 2), example, instance_kind="TPU"),
            ValueError,
            "instance_kind",
        ),
    }


def sklearn_cases() -> dict[str, Case]:
    linear_model = pytest.importorskip("sklearn.linear_model")
    x = np.eye(3, dtype=np.float32)
    regression = linear_model.LinearRegression().fit(x, [0.0, 1.0, 2.0])
    return {
        "unknown method": (lambda a: a.deploy_sklearn_model("s_bad", regression, x, method="fit"), ValueError, "fit"),
        "missing method": (
            lambda a: a.deploy_sklearn_model("s_bad", regression, x, method="predict_proba"),
            ExportError,
            "no predict_proba",
        ),
        "unfitted": (lambda a: a.deploy_sklearn_model("s_bad", linear_model.Ridge(), x), ExportError, "fails on"),
        "vector example": (lambda a: a.deploy_sklearn_model("s_bad", regression, x[0]), ExportError, "matrix"),
    }


@pytest.fixture
def fixed_model(admin: ClipperdAdmin) -> str:
    """A model the clash cases collide with: identity on FP32[4], version 1."""
    if not (admin.files.root / "fixed").exists():
        admin.deploy_python_function("fixed", IDENT, VEC4, OUT4)
    return "fixed"


def check_untouched(admin: ClipperdAdmin, case: Case) -> None:
    call, error, pattern = case
    before = snapshot(admin.files.root)
    with pytest.raises(error, match=pattern):
        call(admin)
    assert snapshot(admin.files.root) == before


@pytest.mark.parametrize("label", list(function_cases()))
def test_bad_input_raises_before_touching_the_repository(label: str, admin: ClipperdAdmin, fixed_model: str) -> None:
    check_untouched(admin, function_cases()[label])


TORCH_LABELS = ["untraceable", "unscriptable", "example not a tensor", "unknown how", "unknown instance kind"]


@pytest.mark.parametrize("label", TORCH_LABELS)
def test_bad_torch_input_raises_before_touching_the_repository(label: str, admin: ClipperdAdmin) -> None:
    cases = torch_cases()
    assert sorted(cases) == sorted(TORCH_LABELS)
    check_untouched(admin, cases[label])


SKLEARN_LABELS = ["unknown method", "missing method", "unfitted", "vector example"]


@pytest.mark.parametrize("label", SKLEARN_LABELS)
def test_bad_sklearn_input_raises_before_touching_the_repository(label: str, admin: ClipperdAdmin) -> None:
    cases = sklearn_cases()
    assert sorted(cases) == sorted(SKLEARN_LABELS)
    check_untouched(admin, cases[label])


def test_clash_with_another_backend(admin: ClipperdAdmin, fixed_model: str, explicit_repo: Path) -> None:
    linear_model = pytest.importorskip("sklearn.linear_model")
    x = np.eye(4, dtype=np.float32)
    estimator = linear_model.LinearRegression().fit(x, [0.0, 1.0, 2.0, 3.0])
    before = snapshot(explicit_repo)
    with pytest.raises(ModelClash, match="exists as python"):
        admin.deploy_sklearn_model("fixed", estimator, x)
    assert snapshot(explicit_repo) == before


# --------------------------------------------------------------------------- failures on the server


def test_load_failure_carries_the_servers_reason(admin: ClipperdAdmin, explicit_repo: Path) -> None:
    before = snapshot(explicit_repo)
    needs = ["clipperd_no_such_module"]
    with pytest.raises(LoadFailed, match="needs module 'clipperd_no_such_module'") as caught:
        admin.deploy_python_function("fn_needs", lambda x: x, VEC4, [("Y", "FP32", [4])], requirements=needs)
    assert "failed to initialize" in caught.value.reason
    assert snapshot(explicit_repo) == before  # the model the server refused is taken back out


def test_failed_new_version_leaves_the_old_one_serving(admin: ClipperdAdmin, explicit_server: ServerProcess) -> None:
    admin.deploy_python_function("fn_keep", scaler(3.0), TWO_IN, TWO_OUT)
    with pytest.raises(LoadFailed, match="clipperd_no_such_module") as caught:
        admin.deploy_python_function("fn_keep", scaler(4.0), TWO_IN, TWO_OUT, requirements=["clipperd_no_such_module"])
    assert caught.value.version == 2
    assert admin.model_versions("fn_keep") == [1]
    check_scaler(explicit_server.url, "fn_keep", 3.0)


def test_failed_set_model_version_restores_the_served_version(
    admin: ClipperdAdmin, explicit_server: ServerProcess
) -> None:
    admin.deploy_python_function("fn_restore", scaler(1.0), TWO_IN, TWO_OUT)
    admin.deploy_python_function("fn_restore", scaler(2.0), TWO_IN, TWO_OUT)
    (admin.files.root / "fn_restore" / "1" / "function.pkl").write_bytes(b"not a pickle")  # broken by hand
    config_before = admin.get_model_config("fn_restore")
    with pytest.raises(LoadFailed, match="failed to initialize: UnpicklingError") as caught:
        admin.set_model_version("fn_restore", 1)
    assert caught.value.version == 1
    assert admin.get_model_config("fn_restore") == config_before
    check_scaler(explicit_server.url, "fn_restore", 2.0)


def test_function_pickled_under_another_python_is_refused(admin: ClipperdAdmin, explicit_server: ServerProcess) -> None:
    admin.deploy_python_function("fn_python", scaler(1.0), TWO_IN, TWO_OUT)
    admin.deploy_python_function("fn_python", scaler(2.0), TWO_IN, TWO_OUT)
    model_py = admin.files.root / "fn_python" / "1" / "model.py"
    here = f"PICKLED_UNDER = {list(sys.version_info[:2])}"
    assert here in model_py.read_text()
    model_py.write_text(model_py.read_text().replace(here, "PICKLED_UNDER = [3, 99]"))  # as if from 3.99
    with pytest.raises(LoadFailed, match=r"pickled under Python 3\.99, the server runs 3\.\d+"):
        admin.set_model_version("fn_python", 1)
    check_scaler(explicit_server.url, "fn_python", 2.0)


def test_kind_gpu_without_gpu_fails_with_reason(admin: ClipperdAdmin, explicit_repo: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the load would succeed")
    before = snapshot(explicit_repo)
    with pytest.raises(LoadFailed, match="KIND_GPU instances but this machine has no GPU"):
        admin.deploy_pytorch_model("torch_gpu", torch.nn.Linear(4, 2), torch.ones(1, 4), instance_kind="KIND_GPU")
    assert snapshot(explicit_repo) == before


# ------------------------------------------------------------------------------- model management


def test_unload_delete_version_and_delete_model(admin: ClipperdAdmin, explicit_server: ServerProcess) -> None:
    for factor in (1.0, 2.0, 3.0):
        admin.deploy_python_function("fn_manage", scaler(factor), TWO_IN, TWO_OUT)
    admin.set_model_version("fn_manage", 2)
    admin.delete_model_version("fn_manage", 3)
    assert admin.model_versions("fn_manage") == [1, 2]
    check_scaler(explicit_server.url, "fn_manage", 2.0)

    admin.unload_model("fn_manage")
    assert "READY" not in states(admin, "fn_manage").values()
    with pytest.raises(InferenceServerException):
        infer(explicit_server.url, "fn_manage", XY, ["SCALED"])

    admin.set_model_version("fn_manage", 1)  # loads again, pinned to 1
    check_scaler(explicit_server.url, "fn_manage", 1.0)
    admin.delete_model("fn_manage")
    assert not (admin.files.root / "fn_manage").exists()
    with pytest.raises(InferenceServerException):
        infer(explicit_server.url, "fn_manage", XY, ["SCALED"])


def test_none_mode_refuses_before_writing(logs_dir: Path, tmp_path: Path) -> None:
    with running(tmp_path, log_dir=logs_dir) as server:
        admin = ClipperdAdmin(tmp_path, server.http_url)
        with pytest.raises(AdminError, match="--model-control-mode none"):
            admin.deploy_python_function("fn_none", lambda x: x, VEC4, [("Y", "FP32", [4])])
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server_refuses_before_writing(tmp_path: Path) -> None:
    admin = ClipperdAdmin(tmp_path, f"127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(ServerError, match="cannot reach"):
        admin.deploy_python_function("fn_nowhere", lambda x: x, VEC4, [("Y", "FP32", [4])])
    assert list(tmp_path.iterdir()) == []


def test_repository_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="not a folder"):
        ClipperdAdmin(tmp_path / "missing")


def test_concurrent_deploys_get_distinct_versions(admin: ClipperdAdmin, explicit_server: ServerProcess) -> None:
    admin.deploy_python_function("fn_race", scaler(0.0), TWO_IN, TWO_OUT)
    start = threading.Barrier(3)
    versions: list[int] = []

    def deploy(factor: float) -> None:
        start.wait()
        versions.append(admin.deploy_python_function("fn_race", scaler(factor), TWO_IN, TWO_OUT))

    threads = [threading.Thread(target=deploy, args=(f,)) for f in (1.0, 2.0, 3.0)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(versions) == [2, 3, 4]
    assert admin.model_versions("fn_race") == [1, 2, 3, 4]
    assert states(admin, "fn_race")[4] == "READY"


def test_files_are_staged_outside_the_scanned_folders(tmp_path: Path) -> None:
    """While a version's files are written, neither the model folder (new model) nor the version
    folder (new version) exists where the server scans: both appear in one rename."""
    from clipperd_admin.specs import Serving, build_config
    from clipperd_admin.staging import Bundle, RepositoryFiles

    files = RepositoryFiles(tmp_path)
    seen: list[tuple[bool, bool]] = []

    def write(folder: Path) -> None:
        (folder / "model.py").write_text("class Model: ...\n")
        seen.append(((tmp_path / "staged").exists(), (tmp_path / "staged" / "2").exists()))
        assert not folder.is_relative_to(tmp_path / "staged")

    bundle = Bundle(build_config("staged", Serving(), backend="python"), write)
    files.add_model("staged", bundle, 1)
    files.add_version("staged", bundle, 2)
    assert seen == [(False, False), (True, False)]
    assert files.versions("staged") == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".clipperd-admin", "staged"]
    assert [p.name for p in (tmp_path / ".clipperd-admin").iterdir()] == []  # staging folders removed


# ------------------------------------------------------------------------------------- poll mode


def test_poll_mode_deploy_versions_and_failure(poll_admin: ClipperdAdmin, poll_server: ServerProcess) -> None:
    url = poll_server.url
    assert poll_admin.deploy_python_function("poll_fn", scaler(2.0), TWO_IN, TWO_OUT) == 1
    check_scaler(url, "poll_fn", 2.0)
    assert poll_admin.deploy_python_function("poll_fn", scaler(6.0), TWO_IN, TWO_OUT) == 2
    check_scaler(url, "poll_fn", 6.0)
    assert poll_admin.rollback_model("poll_fn") == 1
    check_scaler(url, "poll_fn", 2.0)
    poll_admin.set_model_version("poll_fn", 2)
    check_scaler(url, "poll_fn", 6.0)

    with pytest.raises(LoadFailed, match="clipperd_no_such_module"):
        poll_admin.deploy_python_function(
            "poll_fn", scaler(9.0), TWO_IN, TWO_OUT, requirements=["clipperd_no_such_module"]
        )
    assert poll_admin.model_versions("poll_fn") == [1, 2]
    check_scaler(url, "poll_fn", 6.0)  # back to what served before the failed deploy

    with pytest.raises(AdminError, match="poll mode"):
        poll_admin.unload_model("poll_fn")
    poll_admin.delete_model("poll_fn")
    with pytest.raises(InferenceServerException):
        infer(url, "poll_fn", XY, ["SCALED"])
