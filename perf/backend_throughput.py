"""Each backend served against its own framework in-process, at the same batch sizes.

    .venv/bin/python perf/backend_throughput.py [--backend onnxruntime|pytorch|tensorflow|sklearn|xgboost|spark]
        [--repeat 3] [--concurrency 32] [--hidden 4096] [--max-batch-size 16] [--delay-us 20000]
        [--protocol grpc|http] [--json OUT]

The model is a compute-bound MLP (1024 -> hidden -> hidden -> 10, ReLU, seeded weights) written
for the chosen framework into a temporary repository: an ONNX graph (onnx.helper; ONNX Runtime),
TorchScript (PyTorch) or a SavedModel (TensorFlow); for scikit-learn, whose models are not
networks, a brute-force k-nearest-neighbours classifier whose predict_proba is a GEMM; for
Spark, the bundled iris_spark PipelineModel (the in-process side builds the same DataFrame per
batch as the backend does).
Config: max_batch_size 16 (half the concurrency, so that one batch computes while the next
one's requests arrive: with batches as large as the load, the instance
would wait for every answer to be sent and every new request decoded), ``dynamic_batching``
with a max queue delay, one CPU instance, with the intra-op threads the server gives it.

One round: clipperd serves it, perf_analyzer sends one row per request at ``--concurrency``;
ModelStatistics says how many batches of each size the server executed. Then the framework runs
the same model in-process, back to back, at each of those batch sizes with the same threads, and
the in-process throughput *at the server's batch sizes* is rows / (sum over the batches of the
in-process time of a batch of that size). The ratio server / in-process is what the target
(>= 0.85) is about: what serving costs beyond the framework's own work on the same batches."""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from side_by_side import measure, perf_analyzer_path  # noqa: E402

from schedulers.assembly import cpu_threads_per_instance  # noqa: E402
from tests.serverproc import EXAMPLES, running  # noqa: E402

WIDTH = 1024
CONFIG = """name: "wide"
{kind}
max_batch_size: {max_batch}
input [ {{ name: "{input}" data_type: TYPE_FP32 dims: [ {width} ] }} ]
output [ {{ name: "{output}" data_type: TYPE_FP32 dims: [ {classes} ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
"""

Runner = Callable[[np.ndarray], Any]


def weights(hidden: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    sizes = [WIDTH, hidden, hidden, 10]
    return [
        ((rng.standard_normal((o, i)) / np.sqrt(i)).astype(np.float32), np.zeros(o, np.float32))
        for i, o in itertools.pairwise(sizes)
    ]


def build_onnx(folder: Path, hidden: int) -> tuple[str, str, str]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, current = [], [], "INPUT0"
    layers = weights(hidden)
    for i, (w, b) in enumerate(layers):
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        out = "OUTPUT0" if i == len(layers) - 1 else f"g{i}"
        nodes.append(helper.make_node("Gemm", [current, f"W{i}", f"B{i}"], [out], transB=1))
        if out != "OUTPUT0":
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
            current = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "wide",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / "1" / "model.onnx"))
    return 'platform: "onnxruntime_onnx"', "INPUT0", "OUTPUT0"


def onnx_runner(folder: Path, threads: int) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(folder / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(["OUTPUT0"], {"INPUT0": x})


def build_torch(folder: Path, hidden: int) -> tuple[str, str, str]:
    import torch
    from torch import nn

    layers: list[nn.Module] = []
    for i, (w, b) in enumerate(weights(hidden)):
        linear = nn.Linear(w.shape[1], w.shape[0])
        linear.weight.data, linear.bias.data = torch.from_numpy(w), torch.from_numpy(b)
        layers += [linear] if i == 2 else [linear, nn.ReLU()]
    torch.jit.save(torch.jit.script(nn.Sequential(*layers).eval()), str(folder / "1" / "model.pt"))
    return 'platform: "pytorch_libtorch"', "INPUT__0", "OUTPUT__0"


def torch_runner(folder: Path, threads: int) -> Runner:
    import torch

    torch.set_num_threads(threads)
    module = torch.jit.load(str(folder / "1" / "model.pt"), map_location="cpu").eval()

    def run(x: np.ndarray) -> Any:
        with torch.inference_mode():
            return module(torch.from_numpy(x))

    return run


def build_tensorflow(folder: Path, hidden: int) -> tuple[str, str, str]:
    import tensorflow as tf

    # TensorFlow's pools are fixed at its first op: the same as the server gives its instance
    tf.config.threading.set_intra_op_parallelism_threads(cpu_threads_per_instance(1))
    tf.config.threading.set_inter_op_parallelism_threads(1)
    layers = weights(hidden)

    class Wide(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.w = [tf.Variable(w.T) for w, _ in layers]
            self.b = [tf.Variable(b) for _, b in layers]

        @tf.function(input_signature=[tf.TensorSpec([None, WIDTH], tf.float32)])  # type: ignore[untyped-decorator]
        def serve(self, x: Any) -> Any:
            for i in range(len(self.w)):
                x = tf.matmul(x, self.w[i]) + self.b[i]
                x = tf.nn.relu(x) if i < len(self.w) - 1 else x
            return {"OUTPUT0": x}

    module = Wide()
    tf.saved_model.save(module, str(folder / "1" / "model.savedmodel"), signatures={"serving_default": module.serve})
    return 'platform: "tensorflow_savedmodel"', "x", "OUTPUT0"


def tensorflow_runner(folder: Path, threads: int) -> Runner:
    import tensorflow as tf

    signature = tf.saved_model.load(str(folder / "1" / "model.savedmodel")).signatures["serving_default"]
    return lambda x: signature(x=tf.constant(x))["OUTPUT0"].numpy()


def build_sklearn(folder: Path, hidden: int) -> tuple[str, str, str]:
    """k-nearest neighbours over 8,000 points of 1024 features (10 classes): its predict_proba is
    a distance matrix, a GEMM, so it batches; ``hidden`` is not used."""
    import joblib
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(0)
    points = rng.standard_normal((8000, WIDTH), dtype=np.float32)
    model = KNeighborsClassifier(n_neighbors=5, algorithm="brute").fit(points, rng.integers(0, 10, 8000))
    joblib.dump(model, folder / "1" / "model.joblib")
    method = 'parameters { key: "method" value: { string_value: "predict_proba" } }'
    return f'backend: "sklearn"\n{method}', "INPUT0", "OUTPUT0"


def sklearn_runner(folder: Path, threads: int) -> Runner:
    import joblib
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)  # as the server bounds its instance's BLAS
    model = joblib.load(folder / "1" / "model.joblib")
    return lambda x: model.predict_proba(x)


XGB_FEATURES, XGB_CLASSES = 64, 10


def build_xgboost(folder: Path, hidden: int) -> tuple[str, str, str]:
    """A boosted forest of 30,000 trees (3,000 rounds x 10 classes, depth up to 8) over 64
    features, about 1 ms a row on this CPU: compute-bound, as the other backends' models are,
    where a lighter forest (0.1 ms a row) measures the server's per-request cost instead
    (``hidden`` is not used). Saved in XGBoost's own format, as ``backend: "xgboost"`` reads it."""
    import xgboost

    rng = np.random.default_rng(0)
    points = rng.standard_normal((2000, XGB_FEATURES), dtype=np.float32)
    model = xgboost.XGBClassifier(n_estimators=3000, max_depth=8, tree_method="hist", n_jobs=2, random_state=0)
    model.fit(points, rng.integers(0, XGB_CLASSES, 2000))
    model.save_model(folder / "1" / "model.ubj")
    method = 'parameters { key: "method" value: { string_value: "predict_proba" } }'
    return f'backend: "xgboost"\ndefault_model_filename: "model.ubj"\n{method}', "FEATURES", "PROBABILITIES"


def xgboost_runner(folder: Path, threads: int) -> Runner:
    import xgboost

    model = xgboost.XGBClassifier(n_jobs=threads)  # as the backend gives its instance's threads
    model.load_model(folder / "1" / "model.ubj")
    return lambda x: model.predict_proba(x)


SPARK_CONFIG = """name: "wide"
backend: "spark"
max_batch_size: {max_batch}
input [ {{ name: "FEATURES" data_type: TYPE_FP64 dims: [ 4 ] }} ]
output [ {{ name: "probability" data_type: TYPE_FP64 dims: [ 3 ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
"""


def build_spark(folder: Path, hidden: int) -> tuple[str, str, str]:
    """The bundled iris_spark PipelineModel (the config is SPARK_CONFIG; ``hidden`` is not used)."""
    shutil.copytree(EXAMPLES / "iris_spark" / "1" / "model.sparkml", folder / "1" / "model.sparkml")
    return "", "", ""


def spark_runner(folder: Path, threads: int) -> Runner:
    """What the backend does for a batch, in-process: a DataFrame of the rows, transform, collect."""
    from pyspark.ml import PipelineModel
    from pyspark.ml.linalg import DenseVector
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.master(f"local[{threads}]").config("spark.ui.enabled", "false").getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    model = PipelineModel.load(str(folder / "1" / "model.sparkml"))

    def run(x: np.ndarray) -> Any:
        frame = spark.createDataFrame([(i, DenseVector(r)) for i, r in enumerate(x)], ["row", "FEATURES"])
        return model.transform(frame).select("row", "probability").collect()

    return run


BACKENDS: dict[str, tuple[Callable[[Path, int], tuple[str, str, str]], Callable[[Path, int], Runner]]] = {
    "onnxruntime": (build_onnx, onnx_runner),
    "pytorch": (build_torch, torch_runner),
    "tensorflow": (build_tensorflow, tensorflow_runner),
    "sklearn": (build_sklearn, sklearn_runner),
    "xgboost": (build_xgboost, xgboost_runner),
    "spark": (build_spark, spark_runner),
}
# (features, dtype) where not (WIDTH, float32); classes where not 10
FEATURES: dict[str, tuple[int, Any]] = {"spark": (4, np.float64), "xgboost": (XGB_FEATURES, np.float32)}
CLASSES: dict[str, int] = {"xgboost": XGB_CLASSES}
# perf_analyzer sends these zeros (its random bytes can spell NaN, which scikit-learn refuses);
# the in-process side then computes on zeros too: a forest's work depends on its input
ZERO_INPUT = ("sklearn", "xgboost", "spark")


def build(base: Path, args: argparse.Namespace) -> Path:
    repo = base / "repo"
    folder = repo / "wide"
    (folder / "1").mkdir(parents=True)
    kind, name_in, name_out = BACKENDS[args.backend][0](folder, args.hidden)
    if args.backend == "spark":
        config = SPARK_CONFIG.format(max_batch=args.max_batch_size, delay_us=args.delay_us)
    else:
        config = CONFIG.format(
            kind=kind,
            max_batch=args.max_batch_size,
            input=name_in,
            output=name_out,
            width=FEATURES.get(args.backend, (WIDTH,))[0],
            classes=CLASSES.get(args.backend, 10),
            delay_us=args.delay_us,
        )
    (folder / "config.pbtxt").write_text(config)
    return repo


def batch_counts(url: str) -> tuple[dict[int, int], dict[int, float]]:
    """Batches executed by size, and the server's own mean compute time of each size (ms)."""
    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics("wide").model_stats[0]
    counts = {int(b.batch_size): int(b.compute_infer.count) for b in stats.batch_stats}
    ms = {int(b.batch_size): b.compute_infer.ns / max(b.compute_infer.count, 1) / 1e6 for b in stats.batch_stats}
    return counts, ms


def seconds_per_batch(run: Runner, size: int, backend: str, budget_s: float = 0.6) -> float:
    width, dtype = FEATURES.get(backend, (WIDTH, np.float32))
    if backend in ZERO_INPUT:
        x = np.zeros((size, width), dtype)
    else:
        x = np.random.default_rng(size).standard_normal((size, width)).astype(dtype)
    for _ in range(3):
        run(x)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget_s or calls < 3:
        run(x)
        calls += 1
    return (time.perf_counter() - start) / calls


def one_round(repo: Path, args: argparse.Namespace, logs: Path, round_no: int) -> dict[str, Any]:
    with running(repo, log_dir=logs) as server:
        address = server.url if args.protocol == "grpc" else server.http_url
        out = logs / f"round{round_no}.csv"
        extra = ("--input-data", "zero") if args.backend in ZERO_INPUT else ()
        result = measure(perf_analyzer_path(None), address, args.protocol, args.concurrency, 3000, out, "wide", extra)
        counts, server_ms = batch_counts(server.url)
    if "error" in result:
        return result
    run = BACKENDS[args.backend][1](repo / "wide", cpu_threads_per_instance(1))
    times = {size: seconds_per_batch(run, size, args.backend) for size in counts}
    rows = sum(size * n for size, n in counts.items())
    in_process = rows / sum(times[size] * n for size, n in counts.items())
    mean_batch = rows / max(sum(counts.values()), 1)
    return {
        "server_rows_per_s": result["infer_per_s"],
        "p99_us": result["p99_us"],
        "in_process_rows_per_s": in_process,
        "ratio": result["infer_per_s"] / in_process,
        "mean_batch": mean_batch,
        "batches": counts,
        "compute_ms_server": server_ms,
        "compute_ms_in_process": {size: t * 1e3 for size, t in times.items()},
    }


def counts_of(result: dict[str, Any]) -> dict[int, int]:
    return result.get("batches", {})  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="onnxruntime", choices=sorted(BACKENDS))
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument(
        "--max-batch-size", type=int, default=16, help="half the concurrency: one batch computes while the next fills"
    )
    parser.add_argument("--delay-us", type=int, default=20000)
    parser.add_argument("--protocol", default="grpc", choices=["grpc", "http"])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="backend-throughput-"))
    repo = build(base, args)
    rounds = []
    for round_no in range(1, args.repeat + 1):
        result = one_round(repo, args, base, round_no)
        rounds.append(result)
        shown: dict[str, Any] = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in result.items()}
        shown.pop("batches", None)
        for key in ("compute_ms_server", "compute_ms_in_process"):
            if key in result:
                busy = {size: ms for size, ms in result[key].items() if counts_of(result).get(size, 0) > 10}
                shown[key] = {size: round(ms, 2) for size, ms in busy.items()}
        print(f"round {round_no} {args.backend}: {shown}", flush=True)
    ratios = [r["ratio"] for r in rounds if "ratio" in r]
    if ratios:
        print(f"{args.backend}: server / in-process at the same batch sizes, median of {len(ratios)}: "
              f"{statistics.median(ratios):.2f} (target >= 0.85)")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rounds": rounds}, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
