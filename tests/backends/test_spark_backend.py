"""Spark MLlib PipelineModels through real servers and tritonclient: the bundled ``iris_spark``
equals the same PipelineModel transformed in-process by pyspark, over gRPC and HTTP, alone and
batched (rows come back in order); scalar input columns; and the bad cases (missing folder, a
folder that is not a PipelineModel: UNAVAILABLE with a reason; an output column the pipeline
does not make: a clear error for that batch). Skipped without pyspark or Java."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from sklearn.datasets import load_iris
from tritonclient.utils import InferenceServerException

from tests.serverproc import EXAMPLES, ServerProcess, index_entry, running

pyspark = pytest.importorskip("pyspark", reason="pyspark is not installed (pip install 'clipperd[spark]')")
if shutil.which("java") is None:
    pytest.skip("the spark backend needs Java on PATH", allow_module_level=True)

X = load_iris().data.astype(np.float64)
SAVED = EXAMPLES / "iris_spark" / "1" / "model.sparkml"


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    from pyspark.sql import SparkSession

    session = SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false").getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def reference(spark: Any, rows: np.ndarray) -> np.ndarray:
    from pyspark.ml import PipelineModel
    from pyspark.ml.linalg import DenseVector

    frame = spark.createDataFrame([(i, DenseVector(r)) for i, r in enumerate(rows)], ["i", "FEATURES"])
    result = PipelineModel.load(str(SAVED)).transform(frame).orderBy("i").collect()
    return np.stack([r["probability"].toArray() for r in result])


def call(module: Any, url: str, model: str, inputs: dict[str, np.ndarray], out: str) -> Any:
    with module.InferenceServerClient(url) as client:
        tensors = []
        for name, array in inputs.items():
            tensor = module.InferInput(name, list(array.shape), "FP64")
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        return client.infer(model, tensors).as_numpy(out)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_iris_spark_equals_the_pipeline_in_process(example_server: ServerProcess, spark: Any, protocol: str) -> None:
    module, url = (grpcclient, example_server.url) if protocol == "grpc" else (httpclient, example_server.http_url)
    rows = X[[0, 55, 110, 149, 3]]
    got = call(module, url, "iris_spark", {"FEATURES": rows}, "probability")
    np.testing.assert_allclose(got, reference(spark, rows), atol=1e-9)
    prediction = call(module, url, "iris_spark", {"FEATURES": rows}, "prediction")
    assert prediction.ravel().tolist() == [0.0, 1.0, 2.0, 2.0, 0.0]


def test_concurrent_requests_share_a_dataframe_and_keep_their_rows(example_server: ServerProcess, spark: Any) -> None:
    expected = reference(spark, X)
    picks = list(range(0, 150, 5))
    with ThreadPoolExecutor(15) as pool:
        outputs = list(
            pool.map(
                lambda i: call(grpcclient, example_server.url, "iris_spark", {"FEATURES": X[i : i + 1]}, "probability"),
                picks,
            )
        )
    for i, got in zip(picks, outputs, strict=True):
        np.testing.assert_allclose(got[0], expected[i], atol=1e-9)


# ------------------------------------------------------------------------- a repository of cases

SCALARS = """max_batch_size: 16
input [
  { name: "a", data_type: TYPE_FP64, dims: [ 1 ] },
  { name: "b", data_type: TYPE_FP64, dims: [ 1 ] }
]
output [ { name: "total", data_type: TYPE_FP64, dims: [ 1 ] } ]
"""


def scalar_pipeline(spark: Any, folder: Path) -> None:
    """total = a + 2 b, through an SQLTransformer: scalar columns in and out."""
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import SQLTransformer

    frame = spark.createDataFrame([(1.0, 2.0)], ["a", "b"])
    stage = SQLTransformer(statement="SELECT *, a + 2 * b AS total FROM __THIS__")
    Pipeline(stages=[stage]).fit(frame).write().overwrite().save(str(folder))


def add(repo: Path, name: str, config: str, source: Path | None = None, garbage: bool = False) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(f'name: "{name}"\nbackend: "spark"\n{config}')
    target = repo / name / "1" / "model.sparkml"
    if source is not None:
        shutil.copytree(source, target)
    elif garbage:
        target.mkdir()
        (target / "metadata").write_text("not a pipeline")


@pytest.fixture(scope="module")
def cases(spark: Any, tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[ServerProcess]:
    built = tmp_path_factory.mktemp("pipelines") / "scalars"
    scalar_pipeline(spark, built)
    repo = tmp_path_factory.mktemp("spark_cases")
    add(repo, "scalars", SCALARS, built)
    add(repo, "wrong_column", SCALARS.replace('"total"', '"nope"'), built)
    add(repo, "no_folder", SCALARS)
    add(repo, "not_a_pipeline", SCALARS, garbage=True)
    with running(repo, "--no-strict-readiness", log_dir=logs_dir) as proc:
        yield proc


def test_scalar_columns(cases: ServerProcess) -> None:
    a = np.array([[1.0], [2.5], [-1.0]])
    b = np.array([[0.5], [1.0], [4.0]])
    got = call(grpcclient, cases.url, "scalars", {"a": a, "b": b}, "total")
    assert got.tolist() == (a + 2 * b).tolist()


@pytest.mark.parametrize(
    ("name", "reason"),
    [("no_folder", "Spark model folder 'model.sparkml' not found"), ("not_a_pipeline", "is not a saved PipelineModel")],
)
def test_bad_models_are_unavailable_with_a_reason(cases: ServerProcess, name: str, reason: str) -> None:
    state, why = index_entry(cases.url, name)
    assert state == "UNAVAILABLE"
    assert reason in why
    assert "/tmp" not in why


def test_an_output_the_pipeline_does_not_make_fails_the_batch_clearly(cases: ServerProcess) -> None:
    with pytest.raises(InferenceServerException) as info:
        call(grpcclient, cases.url, "wrong_column", {"a": np.ones((1, 1)), "b": np.ones((1, 1))}, "nope")
    assert info.value.status() == "StatusCode.INTERNAL"
    assert "model 'wrong_column' failed" in (info.value.message() or "")
    assert call(grpcclient, cases.url, "scalars", {"a": np.ones((1, 1)), "b": np.ones((1, 1))}, "total").tolist() == [
        [3.0]
    ]
