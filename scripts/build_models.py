"""Builds the example repository's binary models. Rerunnable: same seed, same weights.

    python scripts/build_models.py [--repository model_repository]

Writes model_repository/mlp_torch/1/model.pt: a TorchScript MLP 64 -> 256 -> 256 -> 10 with ReLU,
initialised from torch.manual_seed(0); rebuilt in the same checkout the file is byte-identical (its
debug information names the build script's path, so another checkout differs there only).

Writes model_repository/mlp_onnx/1/model.onnx: the same MLP, same weights, as an ONNX graph
(Gemm, Relu; opset 17) built with onnx.helper: INPUT0 [batch, 64] -> OUTPUT0 [batch, 10], the
batch dimension symbolic. Byte-identical on every rebuild.

Writes model_repository/iris_sklearn/1/model.joblib (a scikit-learn Pipeline: StandardScaler ->
LogisticRegression, fitted on the iris data scikit-learn ships) and
model_repository/iris_xgboost/1/model.json (an XGBoost classifier, 20 trees of depth 3, seed 0,
one thread, on the same data): both answer predict_proba for 4 features -> 3 classes.

Writes model_repository/mlp_tf/1/model.savedmodel/: the mlp_torch MLP, same weights, as a
TensorFlow SavedModel (signature serving_default: INPUT0 [batch, 64] -> OUTPUT0 [batch, 10]).

Writes model_repository/iris_spark/1/model.sparkml/: a Spark MLlib PipelineModel (StandardScaler
-> LogisticRegression) fitted on the same iris data in local mode (needs Java)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent


class MLP(nn.Module):  # type: ignore[misc]  # torch is untyped here (mypy skips it)
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def build_mlp(path: Path) -> None:
    torch.manual_seed(0)
    model = MLP().eval()
    with warnings.catch_warnings():
        # torch.jit is deprecated, but TorchScript is what Triton's pytorch_libtorch serves
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(model)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.jit.save(scripted, str(path))
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def build_mlp_onnx(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    torch.manual_seed(0)
    model = MLP().eval()
    linears = [layer for layer in model.layers if isinstance(layer, nn.Linear)]
    initializers, nodes, current = [], [], "INPUT0"
    for i, layer in enumerate(linears):
        weight, bias = f"W{i}", f"B{i}"
        initializers.append(numpy_helper.from_array(layer.weight.detach().numpy(), weight))
        initializers.append(numpy_helper.from_array(layer.bias.detach().numpy(), bias))
        last = i == len(linears) - 1
        out = "OUTPUT0" if last else f"gemm{i}"
        nodes.append(helper.make_node("Gemm", [current, weight, bias], [out], transB=1))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}"]))
            current = f"relu{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 10])],
        initializers,
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="clipperd")
    onnx_model.ir_version = 8  # readable by every onnxruntime of the last years
    onnx.checker.check_model(onnx_model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(onnx_model, str(path))
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def build_mlp_tf(path: Path) -> None:
    """The mlp_torch MLP, same weights, as a TensorFlow SavedModel: signature serving_default,
    input key INPUT0 [batch, 64], output key OUTPUT0 [batch, 10]."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    torch.manual_seed(0)
    linears = [layer for layer in MLP().eval().layers if isinstance(layer, nn.Linear)]

    class Dense(tf.Module):  # type: ignore[misc]  # tensorflow is untyped here
        def __init__(self) -> None:
            super().__init__()
            self.weights = [tf.Variable(layer.weight.detach().numpy().T, trainable=False) for layer in linears]
            self.biases = [tf.Variable(layer.bias.detach().numpy(), trainable=False) for layer in linears]

        @tf.function(input_signature=[tf.TensorSpec([None, 64], tf.float32, name="INPUT0")])
        def serve(self, x: Any) -> dict[str, Any]:
            for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
                x = tf.matmul(x, w) + b
                if i < len(self.weights) - 1:
                    x = tf.nn.relu(x)
            return {"OUTPUT0": x}

    module = Dense()
    if path.exists():
        shutil.rmtree(path)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    print(f"wrote {path}")


def build_iris_spark(path: Path) -> None:
    """A Spark MLlib PipelineModel (StandardScaler -> LogisticRegression) on the iris data, in
    local mode: FEATURES (a vector of 4) -> probability (3), prediction."""
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import StandardScaler
    from pyspark.ml.linalg import DenseVector
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false").getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    x, y = iris()
    frame = spark.createDataFrame(
        [(DenseVector(r.astype(float)), float(t)) for r, t in zip(x, y, strict=True)], ["FEATURES", "label"]
    )
    stages = [
        StandardScaler(inputCol="FEATURES", outputCol="scaled"),
        LogisticRegression(featuresCol="scaled", labelCol="label", maxIter=100),
    ]
    Pipeline(stages=stages).fit(frame).write().overwrite().save(str(path))
    spark.stop()
    print(f"wrote {path}")


def iris() -> tuple[Any, Any]:
    from sklearn.datasets import load_iris

    data = load_iris()
    return data.data.astype("float32"), data.target


def build_iris_sklearn(path: Path) -> None:
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = iris()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, random_state=0)).fit(x, y)
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, path)
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def build_iris_xgboost(path: Path) -> None:
    import xgboost

    x, y = iris()
    model = xgboost.XGBClassifier(n_estimators=20, max_depth=3, random_state=0, n_jobs=1).fit(x, y)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save_model(str(path))
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def main() -> None:
    if os.environ.get("PYTHONHASHSEED") != "0":
        # torch.jit.save's archive (its serialization_id) depends on str hashing: pin the seed so
        # that a rebuild writes the same bytes, not only the same weights
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    args = parser.parse_args()
    build_mlp(args.repository / "mlp_torch" / "1" / "model.pt")
    build_mlp_onnx(args.repository / "mlp_onnx" / "1" / "model.onnx")
    build_iris_sklearn(args.repository / "iris_sklearn" / "1" / "model.joblib")
    build_iris_xgboost(args.repository / "iris_xgboost" / "1" / "model.json")
    build_mlp_tf(args.repository / "mlp_tf" / "1" / "model.savedmodel")
    build_iris_spark(args.repository / "iris_spark" / "1" / "model.sparkml")


if __name__ == "__main__":
    main()
