"""scikit-learn and XGBoost models through real servers and tritonclient: the bundled
``iris_sklearn`` (joblib Pipeline) and ``iris_xgboost`` (XGBoost JSON) equal the estimators
in-process, over gRPC and HTTP, alone and batched; ``predict`` with integer and string labels,
a pickle file, ``max_batch_size: 0``; and the bad cases (missing or corrupt file, a method the
estimator lacks, features that disagree with the config, bad parameters): UNAVAILABLE with a
reason, the rest of the server serves."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import xgboost
from sklearn.datasets import load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression
from tritonclient.utils import InferenceServerException

from tests.serverproc import EXAMPLES, ServerProcess, index_entry, running

X = load_iris().data.astype(np.float32)
Y = load_iris().target


def call(module: Any, url: str, model: str, x: np.ndarray, out: str = "PROBABILITIES", dtype: str = "FP32") -> Any:
    with module.InferenceServerClient(url) as client:
        tensor = module.InferInput("FEATURES", list(x.shape), dtype)
        tensor.set_data_from_numpy(x)
        return client.infer(model, [tensor]).as_numpy(out)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("model", ["iris_sklearn", "iris_xgboost"])
def test_iris_models_equal_the_estimators_in_process(example_server: ServerProcess, protocol: str, model: str) -> None:
    module, url = (grpcclient, example_server.url) if protocol == "grpc" else (httpclient, example_server.http_url)
    if model == "iris_sklearn":
        estimator = joblib.load(EXAMPLES / model / "1" / "model.joblib")
    else:
        estimator = xgboost.XGBClassifier()
        estimator.load_model(str(EXAMPLES / model / "1" / "model.json"))
    for rows in (X[:1], X[50:60]):
        got = call(module, url, model, rows)
        np.testing.assert_allclose(got, estimator.predict_proba(rows), atol=1e-6)


def test_concurrent_requests_batch_and_each_gets_its_rows(example_server: ServerProcess) -> None:
    estimator = joblib.load(EXAMPLES / "iris_sklearn" / "1" / "model.joblib")
    with ThreadPoolExecutor(16) as pool:
        outputs = list(
            pool.map(lambda i: call(grpcclient, example_server.url, "iris_sklearn", X[i : i + 1]), range(48))
        )
    for i, got in enumerate(outputs):
        np.testing.assert_allclose(got, estimator.predict_proba(X[i : i + 1]), atol=1e-6)


# ------------------------------------------------------------------------- a repository of cases


def model(repo: Path, name: str, backend: str, config: str, files: dict[str, bytes | Any]) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(f'name: "{name}"\nbackend: "{backend}"\n{config}')
    for file, content in files.items():
        target = repo / name / "1" / file
        if isinstance(content, bytes):
            target.write_bytes(content)
        elif file.endswith(".pkl"):
            target.write_bytes(pickle.dumps(content))
        else:
            joblib.dump(content, target)


def io(out_type: str = "TYPE_FP32", out_dims: str = "3", in_dims: str = "4", batch: int = 16) -> str:
    return (
        f"max_batch_size: {batch}\n"
        f'input [ {{ name: "FEATURES", data_type: TYPE_FP32, dims: [ {in_dims} ] }} ]\n'
        f'output [ {{ name: "OUT", data_type: {out_type}, dims: [ {out_dims} ] }} ]\n'
    )


def method(name: str) -> str:
    return f'parameters {{ key: "method" value: {{ string_value: "{name}" }} }}\n'


SPECIES = np.array(["setosa", "versicolor", "virginica"])
BAD: dict[str, tuple[str, str, Any, str]] = {
    "no_file": ("sklearn", io() + method("predict_proba"), {}, "file 'model.joblib' not found"),
    "corrupt": ("sklearn", io() + method("predict_proba"), {"model.joblib": b"not a joblib file"}, "cannot be loaded"),
    "no_proba": ("sklearn", io("TYPE_FP32", "1") + method("predict_proba"), "linear", "has no predict_proba()"),
    "features": ("sklearn", io(in_dims="5") + method("predict_proba"), "logistic", "takes 4 features"),
    "method": (
        "sklearn",
        io() + method("explain"),
        "logistic",
        "model 'method': field 'parameters.method': must be one of predict, predict_proba, decision_function, "
        "transform, got 'explain'",
    ),
    "xgb_corrupt": (
        "xgboost",
        io() + method("predict_proba"),
        {"model.json": b"{not json"},
        "cannot be loaded by xgboost",
    ),
    "xgb_kind": (
        "xgboost",
        io() + 'parameters { key: "xgboost_estimator" value: { string_value: "ranker" } }',
        {"model.json": (EXAMPLES / "iris_xgboost" / "1" / "model.json").read_bytes()},
        "field 'parameters.xgboost_estimator': must be one of classifier, regressor, got 'ranker'",
    ),
}


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("sklearn_cases")
    fitted = {
        "logistic": LogisticRegression(max_iter=500).fit(X, Y),
        "linear": LinearRegression().fit(X, Y.astype(float)),
    }
    model(repo, "labels", "sklearn", io("TYPE_INT64", "1"), {"model.joblib": fitted["logistic"]})
    strings = LogisticRegression(max_iter=500).fit(X, SPECIES[Y])
    model(repo, "species", "sklearn", io("TYPE_STRING", "1"), {"model.joblib": strings})
    config = io(in_dims="-1, 4", out_type="TYPE_FP64", out_dims="-1", batch=0).replace('"model.joblib"', "")
    model(repo, "pickled", "sklearn", config + 'default_model_filename: "model.pkl"\n', {"model.pkl": fitted["linear"]})
    for name, (backend, config, files, _) in BAD.items():
        content = {"model.joblib": fitted[files]} if isinstance(files, str) else files
        model(repo, name, backend, config, content)
    with running(repo, "--no-strict-readiness", log_dir=logs_dir) as proc:
        proc.fitted = fitted  # type: ignore[attr-defined]
        yield proc


def test_predict_gives_integer_labels(cases: ServerProcess) -> None:
    got = call(grpcclient, cases.url, "labels", X[[0, 60, 120]], out="OUT")
    assert got.tolist() == [[0], [1], [2]]


def test_string_labels_travel_as_bytes(cases: ServerProcess) -> None:
    got = call(httpclient, cases.http_url, "species", X[[0, 60, 120]], out="OUT")
    assert got.tolist() == [[b"setosa"], [b"versicolor"], [b"virginica"]]


def test_a_pickle_file_and_max_batch_size_0(cases: ServerProcess) -> None:
    linear = cases.fitted["linear"]  # type: ignore[attr-defined]
    got = call(grpcclient, cases.url, "pickled", X[:5], out="OUT")
    np.testing.assert_allclose(got, linear.predict(X[:5]), rtol=1e-6)


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_models_are_unavailable_with_a_reason(cases: ServerProcess, name: str) -> None:
    state, reason = index_entry(cases.url, name)
    assert state == "UNAVAILABLE"
    assert BAD[name][3] in reason
    assert "/tmp" not in reason
    assert call(grpcclient, cases.url, "labels", X[:1], out="OUT").tolist() == [[0]]


def test_a_request_with_the_wrong_feature_count_is_refused(cases: ServerProcess) -> None:
    with pytest.raises(InferenceServerException) as info:
        call(grpcclient, cases.url, "labels", np.zeros((1, 5), np.float32), out="OUT")
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
