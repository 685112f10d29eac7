"""The remote backend end to end: a clipperd front end whose models are served by two clipperd
model containers (real processes on 127.0.0.1, tritonclient as the client)."""

from __future__ import annotations

import concurrent.futures
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from tests.remote_cluster import RemoteCluster, received, remote_config, sample_inputs
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.e2e

MODELS = ("identity_fp32", "simple", "simple_string", "mlp_onnx")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[RemoteCluster]:
    """Two containers; a front end with each model over gRPC and over HTTP, batched (inputs and
    outputs completed from the containers), and ``simple`` unbatched with its tensors declared."""
    cluster = RemoteCluster(tmp_path_factory.mktemp("remote"), logs_dir, MODELS, containers=2)
    cluster.start_containers()
    configs = {}
    for protocol in ("grpc", "http"):
        endpoints = cluster.endpoints(protocol)
        for model in MODELS:
            configs[f"{model}_{protocol}"] = remote_config(
                f"{model}_{protocol}", endpoints, protocol=protocol, remote_model=model, count=2
            )
        configs[f"simple_fp32_{protocol}"] = remote_config(
            f"simple_fp32_{protocol}", endpoints, protocol=protocol, remote_model="simple", declare=SIMPLE_FP32
        )
        configs[f"simple_unbatched_{protocol}"] = remote_config(
            f"simple_unbatched_{protocol}",
            endpoints,
            protocol=protocol,
            remote_model="simple",
            batching=False,
            declare=SIMPLE_UNBATCHED,
        )
    try:
        cluster.start_front(configs)
        yield cluster
    finally:
        cluster.stop()


def _tensors(kind: str, names: tuple[str, str], data_type: str, dims: str) -> str:
    return (
        f"{kind} [ " + ", ".join(f'{{ name: "{n}", data_type: {data_type}, dims: [ {dims} ] }}' for n in names) + " ]"
    )


INPUTS, OUTPUTS = ("INPUT0", "INPUT1"), ("OUTPUT0", "OUTPUT1")
SIMPLE_UNBATCHED = "\n".join(
    [
        "max_batch_size: 0",
        _tensors("input", INPUTS, "TYPE_INT32", "1, 16"),
        _tensors("output", OUTPUTS, "TYPE_INT32", "1, 16"),
    ]
)


# ``simple`` declared with FP32 inputs: the front end accepts them, the container refuses them
SIMPLE_FP32 = "\n".join(
    ["max_batch_size: 8", _tensors("input", INPUTS, "TYPE_FP32", "16"), _tensors("output", OUTPUTS, "TYPE_INT32", "16")]
)


def infer(url: str, model: str, inputs: dict[str, np.ndarray], timeout_s: float = 30.0) -> dict[str, np.ndarray]:
    with grpcclient.InferenceServerClient(url) as client:
        tensors = []
        for name, array in inputs.items():
            tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        result = client.infer(model, tensors, client_timeout=timeout_s)
        response = result.get_response()
        return {o.name: result.as_numpy(o.name) for o in response.outputs}


def infer_http(url: str, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with httpclient.InferenceServerClient(url) as client:
        tensors = []
        for name, array in inputs.items():
            tensor = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array, binary_data=True)
            tensors.append(tensor)
        result = client.infer(model, tensors)
        return {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert got[name].shape == want[name].shape, name
        assert np.array_equal(got[name], want[name]), name


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("model", MODELS)
def test_answers_as_the_container_does(cluster: RemoteCluster, model: str, protocol: str) -> None:
    front = cluster.front
    assert front is not None
    direct = cluster.containers[1].url
    for seed, rows in enumerate((1, 3)):
        inputs = sample_inputs(model, rows, seed)
        want = infer(direct, model, inputs)
        assert_same(infer(front.url, f"{model}_{protocol}", inputs), want)
        assert_same(infer_http(front.http_url, f"{model}_{protocol}", inputs), want)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_unbatched_model(cluster: RemoteCluster, protocol: str) -> None:
    front = cluster.front
    assert front is not None
    inputs = sample_inputs("simple", 1, 7)
    want = infer(cluster.containers[0].url, "simple", inputs)
    assert_same(infer(front.url, f"simple_unbatched_{protocol}", inputs), want)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_metadata_completed_from_the_remote_model(cluster: RemoteCluster, protocol: str) -> None:
    front = cluster.front
    assert front is not None
    for model in MODELS:
        with urllib.request.urlopen(f"http://{front.http_url}/v2/models/{model}_{protocol}/config") as r:
            mine = json.load(r)
        with urllib.request.urlopen(f"http://{cluster.containers[0].http_url}/v2/models/{model}/config") as r:
            theirs = json.load(r)
        assert mine["max_batch_size"] == theirs["max_batch_size"]
        for kind in ("input", "output"):
            keep = ("name", "data_type", "dims")
            assert [{k: t.get(k) for k in keep} for t in mine[kind]] == [
                {k: t.get(k) for k in keep} for t in theirs[kind]
            ]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_concurrent_clients_are_batched_across_both_containers(cluster: RemoteCluster, protocol: str) -> None:
    """16 clients, one row each: the front end sends batches of several rows as one request,
    to both containers, and every client gets its own answer."""
    front = cluster.front
    assert front is not None
    model = "simple_string"
    before = [received(c.url, model) for c in cluster.containers]

    def client(seed: int) -> None:
        for i in range(12):
            inputs = sample_inputs(model, 1, seed * 100 + i)
            got = infer(front.url, f"{model}_{protocol}", inputs)
            a = inputs["INPUT0"].astype(np.int64)
            b = inputs["INPUT1"].astype(np.int64)
            assert got["OUTPUT0"].astype(np.int64).tolist() == (a + b).tolist()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(client, range(16)))
    after = [received(c.url, model) for c in cluster.containers]
    requests = [a[0] - b[0] for a, b in zip(after, before, strict=True)]
    rows = [a[1] - b[1] for a, b in zip(after, before, strict=True)]
    assert sum(rows) == 16 * 12
    assert all(r > 0 for r in requests), f"a container got nothing: {requests}"
    assert sum(requests) < sum(rows), f"no batch of several rows went out: {requests} requests for {rows} rows"


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_remote_model_error_passes_through(cluster: RemoteCluster, protocol: str) -> None:
    """The container's INVALID_ARGUMENT keeps its status and message; nobody is ejected."""
    front = cluster.front
    assert front is not None
    inputs = {"INPUT0": np.zeros((1, 16), np.float32), "INPUT1": np.zeros((1, 16), np.float32)}
    with pytest.raises(InferenceServerException) as direct:
        infer(cluster.containers[0].url, "simple", inputs)
    with pytest.raises(InferenceServerException) as remote:
        infer(front.url, f"simple_fp32_{protocol}", inputs)
    assert direct.value.status() == remote.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "INPUT0" in str(remote.value.message())
    ejections = metric(front, "clipperd_remote_ejections", f"simple_fp32_{protocol}")
    assert len(ejections) == 2, ejections
    assert sum(ejections.values()) == 0


def metric(server: ServerProcess, name: str, model: str) -> dict[str, float]:
    """``name`` of ``model`` by endpoint, scraped now."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.removesuffix("_total") == name and sample.labels.get("model") == model:
                values[sample.labels["endpoint"]] = sample.value
    return values
