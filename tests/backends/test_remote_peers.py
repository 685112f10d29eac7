"""The remote backend in front of other KServe v2 servers: a clipperd front end whose models are
served by NVIDIA Triton's own tritonserver (its Python backend) and by Seldon MLServer 1.7.1,
real processes on 127.0.0.1 (tests/peerproc.py; installed by perf/install_peers.sh, which
``make test`` runs). The front end answers exactly as the peer answers directly: gRPC and HTTP
to the peer, FP32 and BYTES, batched (concurrent clients whose rows go out as one request) and
unbatched, with inputs and outputs completed from the peer's ModelConfig (Triton) or
ModelMetadata (MLServer, which has no ModelConfig)."""

from __future__ import annotations

import concurrent.futures
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import np_to_triton_dtype

from tests.backends.test_remote import assert_same, infer, infer_http, metric
from tests.peerproc import PeerProcess, start_mlserver, start_tritonserver
from tests.remote_cluster import remote_config, write_repository
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.e2e

PEERS = ("tritonserver", "mlserver")
PROTOCOLS = ("grpc", "http")
MODELS = ("identity_fp32", "bytes_upper")
# the batched configs declared for MLServer, whose metadata has no max_batch_size
DECLARED = {
    "identity_fp32": "max_batch_size: 16\n"
    'input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ 16 ] } ]\n'
    'output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 16 ] } ]',
    "bytes_upper": "max_batch_size: 16\n"
    'input [ { name: "INPUT0", data_type: TYPE_STRING, dims: [ 4 ] } ]\n'
    'output [ { name: "OUTPUT0", data_type: TYPE_STRING, dims: [ 4 ] },'
    ' { name: "OUTPUT1", data_type: TYPE_INT32, dims: [ 4 ] } ]',
}


class Setup:
    def __init__(self, front: ServerProcess, peers: dict[str, PeerProcess]) -> None:
        self.front = front
        self.peers = peers


def front_configs(peers: dict[str, PeerProcess]) -> dict[str, str]:
    """Per peer, protocol and model: ``P_M_PROTO`` batched (Triton: completed from its
    ModelConfig; MLServer: declared) and ``P_M_PROTO_meta`` completed without dynamic batching
    (for MLServer, from ModelMetadata: whole requests pass through unbatched)."""
    configs = {}
    for peer_name, peer in peers.items():
        for protocol in PROTOCOLS:
            endpoint = peer.url if protocol == "grpc" else peer.http_url
            for model in MODELS:
                name = f"{peer_name}_{model}_{protocol}"
                declare = DECLARED[model] if peer_name == "mlserver" else ""
                configs[name] = remote_config(
                    name, endpoint, protocol=protocol, remote_model=model, declare=declare, count=2
                )
                configs[f"{name}_meta"] = remote_config(
                    f"{name}_meta", endpoint, protocol=protocol, remote_model=model, batching=False
                )
    return configs


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[Setup]:
    workdir = tmp_path_factory.mktemp("peers")
    peers: dict[str, PeerProcess] = {}
    front: ServerProcess | None = None
    try:
        peers["tritonserver"] = start_tritonserver(workdir / "tritonserver", logs_dir)
        peers["mlserver"] = start_mlserver(workdir, logs_dir)
        repository = write_repository(workdir / "front", front_configs(peers))
        front = ServerProcess(repository, log_dir=logs_dir).start()
        yield Setup(front, peers)
    finally:
        if front is not None:
            front.stop()
        for peer in peers.values():
            peer.stop()


def sample(model: str, rows: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if model == "identity_fp32":
        return {"INPUT0": rng.standard_normal((rows, 16)).astype(np.float32)}
    # UTF-8 text (MLServer speaks JSON over HTTP, which carries text), empty elements too
    words = ["".join(rng.choice(list("abxyz é"), rng.integers(0, 9))).encode() for _ in range(rows * 4)]
    return {"INPUT0": np.array(words, dtype=object).reshape(rows, 4)}


def direct(peer: PeerProcess, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The peer's own answer, asked with tritonclient over HTTP in JSON (the form both peers
    read for every data type: MLServer reads neither binary tensors nor raw gRPC BYTES)."""
    with httpclient.InferenceServerClient(peer.http_url) as client:
        tensors = []
        for name, array in inputs.items():
            tensor = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array, binary_data=False)
            tensors.append(tensor)
        result = client.infer(model, tensors)
        return {o["name"]: _bytes(result.as_numpy(o["name"])) for o in result.get_response()["outputs"]}


def _bytes(array: np.ndarray) -> np.ndarray:
    """JSON answers give BYTES as str: as bytes, as binary answers give them."""
    if array.dtype == object:
        return np.array([v.encode() if isinstance(v, str) else v for v in array.reshape(-1)], object).reshape(
            array.shape
        )
    return array


def expected(model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the models compute, so that the peers' own answers are checked too."""
    data = inputs["INPUT0"]
    if model == "identity_fp32":
        return {"OUTPUT0": data}
    flat = list(data.reshape(-1))
    upper = np.array([v.upper() for v in flat], dtype=object).reshape(data.shape)
    return {"OUTPUT0": upper, "OUTPUT1": np.array([len(v) for v in flat], np.int32).reshape(data.shape)}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("peer", PEERS)
def test_answers_as_the_peer_does(setup: Setup, peer: str, model: str, protocol: str) -> None:
    """Batched and unbatched (``_meta``) configs, asked over gRPC and HTTP of the front end."""
    for seed, rows in enumerate((1, 3)):
        inputs = sample(model, rows, seed)
        want = direct(setup.peers[peer], model, inputs)
        assert_same(want, expected(model, inputs))
        for name in (f"{peer}_{model}_{protocol}", f"{peer}_{model}_{protocol}_meta"):
            assert_same(infer(setup.front.url, name, inputs), want)
            assert_same(infer_http(setup.front.http_url, name, inputs), want)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("peer", PEERS)
def test_concurrent_clients_are_batched(setup: Setup, peer: str, protocol: str) -> None:
    """16 clients, one row each: the front end sends batches of several rows to the peer as one
    request, and every client gets its own answer (BYTES, so a row in the wrong answer shows)."""
    model = f"{peer}_bytes_upper_{protocol}"
    before = sum(metric(setup.front, "clipperd_remote_requests", model).values())

    def client(seed: int) -> None:
        for i in range(12):
            inputs = sample("bytes_upper", 1, seed * 100 + i)
            assert_same(infer(setup.front.url, model, inputs), expected("bytes_upper", inputs))

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(client, range(16)))
    calls = sum(metric(setup.front, "clipperd_remote_requests", model).values()) - before
    assert 0 < calls < 16 * 12, f"{calls} remote calls for {16 * 12} rows: no batch of several rows went out"


def _config(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)  # type: ignore[no-any-return]


def _tensors(config: dict[str, object], kind: str) -> list[tuple[str, str, list[int]]]:
    return [(t["name"], t["data_type"], list(t["dims"])) for t in config[kind]]  # type: ignore[attr-defined]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", MODELS)
def test_completed_from_tritonserver_model_config(setup: Setup, model: str, protocol: str) -> None:
    mine = _config(f"http://{setup.front.http_url}/v2/models/tritonserver_{model}_{protocol}/config")
    theirs = _config(f"http://{setup.peers['tritonserver'].http_url}/v2/models/{model}/config")
    assert mine["max_batch_size"] == theirs["max_batch_size"] == (16 if model == "bytes_upper" else 64)
    for kind in ("input", "output"):
        assert _tensors(mine, kind) == _tensors(theirs, kind)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", MODELS)
def test_completed_from_mlserver_metadata(setup: Setup, model: str, protocol: str) -> None:
    """MLServer has no ModelConfig: its metadata's shapes, taken as they are, unbatched."""
    mine = _config(f"http://{setup.front.http_url}/v2/models/mlserver_{model}_{protocol}_meta/config")
    metadata = _config(f"http://{setup.peers['mlserver'].http_url}/v2/models/{model}")
    assert mine.get("max_batch_size", 0) == 0  # proto3 JSON leaves zero out
    for kind in ("input", "output"):
        theirs = [(t["name"], "TYPE_" + t["datatype"], t["shape"]) for t in metadata[kind + "s"]]  # type: ignore[attr-defined]
        theirs = [(n, "TYPE_STRING" if d == "TYPE_BYTES" else d, s) for n, d, s in theirs]
        assert _tensors(mine, kind) == theirs
