"""Every KServe v2 HTTP/REST endpoint as users call it: tritonclient.http (sync), plus raw
urllib requests for bodies no client would send. Runs against the session's ``example_server``."""

from __future__ import annotations

import gzip
import json
import struct
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from tritonclient.utils import InferenceServerException

from tests.serverproc import EXAMPLES, ServerProcess, running

pytestmark = pytest.mark.timeout(120)

MODELS = tuple(sorted(p.name for p in EXAMPLES.iterdir() if (p / "config.pbtxt").is_file()))  # every example
MLP_PATH = EXAMPLES / "mlp_torch" / "1" / "model.pt"
rng = np.random.default_rng(20240611)


@pytest.fixture
def http_url(example_server: ServerProcess) -> str:
    return example_server.http_url


@pytest.fixture
def client(http_url: str) -> Iterator[httpclient.InferenceServerClient]:
    triton = httpclient.InferenceServerClient(http_url)
    try:
        yield triton
    finally:
        triton.close()


def post(url: str, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://{url}{path}", data=body, headers=headers or {}, method="POST")
    return _send(request)[:2]


def get(url: str, path: str) -> tuple[int, bytes]:
    return _send(urllib.request.Request(f"http://{url}{path}"))[:2]


def _send(request: urllib.request.Request) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status), response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        with error:
            return int(error.code), error.read(), dict(error.headers)


def assert_error(answer: tuple[int, bytes], status: int, fragment: str) -> None:
    code, body = answer
    assert code == status, body
    message = json.loads(body)["error"]
    assert fragment in message, message


def simple_inputs(a: np.ndarray, b: np.ndarray, binary: bool = True) -> list[httpclient.InferInput]:
    inputs = []
    for name, data in (("INPUT0", a), ("INPUT1", b)):
        tensor = httpclient.InferInput(name, list(data.shape), "INT32")
        tensor.set_data_from_numpy(data, binary_data=binary)
        inputs.append(tensor)
    return inputs


def torch_reference(x: np.ndarray) -> np.ndarray:
    torch = pytest.importorskip("torch")
    model = torch.jit.load(str(MLP_PATH), map_location="cpu").eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------ health, metadata


def test_health(client: httpclient.InferenceServerClient, http_url: str) -> None:
    assert client.is_server_live() is True
    assert client.is_server_ready() is True
    assert get(http_url, "/v2/health/ready") == (200, b"")
    assert get(http_url, "/v2/health/live") == (200, b"")


@pytest.mark.parametrize("model", MODELS)
def test_model_ready(client: httpclient.InferenceServerClient, model: str) -> None:
    assert client.is_model_ready(model) is True
    assert client.is_model_ready(model, "1") is True
    assert client.is_model_ready(model, "2") is False
    assert client.is_model_ready("no_such_model") is False


def test_server_metadata(client: httpclient.InferenceServerClient) -> None:
    meta = client.get_server_metadata()
    assert meta["name"] == "clipperd"
    assert meta["version"]
    assert "binary_tensor_data" in meta["extensions"]
    assert "statistics" in meta["extensions"]


@pytest.mark.parametrize("model", MODELS)
def test_model_metadata_and_config(client: httpclient.InferenceServerClient, model: str) -> None:
    meta = client.get_model_metadata(model)
    assert meta["name"] == model
    assert meta["versions"] == ["1"]
    assert client.get_model_metadata(model, "1") == meta
    config = client.get_model_config(model)
    assert config["name"] == model
    assert [i["name"] for i in config["input"]] == [i["name"] for i in meta["inputs"]]
    for tensor, spec in zip(meta["inputs"], config["input"], strict=True):
        assert tensor["shape"][1:] == spec["dims"]
    assert client.get_model_config(model, "1") == config


def test_metadata_unknown_model_404(client: httpclient.InferenceServerClient, http_url: str) -> None:
    with pytest.raises(InferenceServerException) as error:
        client.get_model_metadata("no_such_model")
    assert error.value.status() == "404"
    assert_error(get(http_url, "/v2/models/no_such_model/config"), 404, "no_such_model")
    assert_error(get(http_url, "/v2/models/simple/versions/7"), 404, "simple")


def test_repository_index_and_control(client: httpclient.InferenceServerClient, http_url: str) -> None:
    index = client.get_model_repository_index()
    assert {(m["name"], m["version"], m["state"]) for m in index} == {(m, "1", "READY") for m in MODELS}
    for action in ("load", "unload"):
        with pytest.raises(InferenceServerException) as error:
            getattr(client, f"{action}_model")("simple")
        assert error.value.status() == "503"
        assert "control mode" in error.value.message()
    assert client.is_model_ready("simple") is True


# ------------------------------------------------------------------------------------- inference


@pytest.mark.parametrize("binary", [True, False])
def test_simple_infer(client: httpclient.InferenceServerClient, binary: bool) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.int32)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("OUTPUT0", "OUTPUT1")]
    result = client.infer("simple", simple_inputs(a, b, binary), outputs=outputs, request_id="r1")
    assert result.get_response()["id"] == "r1"
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    output = result.get_output("OUTPUT0")
    assert ("binary_data_size" in output.get("parameters", {})) == binary
    assert ("data" in output) == (not binary)


def test_simple_infer_all_outputs_by_default(client: httpclient.InferenceServerClient) -> None:
    a = rng.integers(-100, 100, size=(3, 16)).astype(np.int32)
    result = client.infer("simple", simple_inputs(a, a), model_version="1")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.zeros_like(a))


@pytest.mark.parametrize("binary", [True, False])
def test_simple_infer_output_filter(client: httpclient.InferenceServerClient, binary: bool) -> None:
    a = np.full((2, 16), 5, dtype=np.int32)
    outputs = [httpclient.InferRequestedOutput("OUTPUT1", binary_data=binary)]
    result = client.infer("simple", simple_inputs(a, a, binary), outputs=outputs)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["OUTPUT1"]
    assert result.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.zeros_like(a))


@pytest.mark.parametrize("binary", [True, False])
def test_simple_string_infer(client: httpclient.InferenceServerClient, binary: bool) -> None:
    a = rng.integers(-(10**6), 10**6, size=(4, 16))
    b = rng.integers(-(10**6), 10**6, size=(4, 16))
    inputs = [httpclient.InferInput("INPUT0", [4, 16], "BYTES"), httpclient.InferInput("INPUT1", [4, 16], "BYTES")]
    inputs[0].set_data_from_numpy(a.astype(str).astype(np.object_), binary_data=binary)
    inputs[1].set_data_from_numpy(b.astype(str).astype(np.object_), binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("OUTPUT0", "OUTPUT1")]
    result = client.infer("simple_string", inputs, outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0").astype(np.int64), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1").astype(np.int64), a - b)


@pytest.mark.parametrize(("batch", "binary"), [(1, True), (64, True), (3, False)])
def test_identity_fp32(client: httpclient.InferenceServerClient, batch: int, binary: bool) -> None:
    data = rng.standard_normal((batch, 16)).astype(np.float32)
    tensor = httpclient.InferInput("INPUT0", [batch, 16], "FP32")
    tensor.set_data_from_numpy(data, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)]
    out = client.infer("identity_fp32", [tensor], outputs=outputs).as_numpy("OUTPUT0")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, data)


@pytest.mark.parametrize("batch", [1, 7, 128])
def test_mlp_torch_matches_torch(client: httpclient.InferenceServerClient, batch: int) -> None:
    x = rng.standard_normal((batch, 64)).astype(np.float32)
    tensor = httpclient.InferInput("INPUT__0", [batch, 64], "FP32")
    tensor.set_data_from_numpy(x)
    out = client.infer("mlp_torch", [tensor]).as_numpy("OUTPUT__0")
    assert out.shape == (batch, 10)
    np.testing.assert_allclose(out, torch_reference(x), rtol=1e-5, atol=1e-6)


def test_json_nested_data_and_request_binary_output(http_url: str) -> None:
    body = {
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [2, 16], "data": [list(range(16)), list(range(16))]},
            {"name": "INPUT1", "datatype": "INT32", "shape": [2, 16], "data": [1] * 32},
        ],
        "parameters": {"binary_data_output": True},
    }
    request = urllib.request.Request(
        f"http://{http_url}/v2/models/simple/infer", data=json.dumps(body).encode(), method="POST"
    )
    code, answer, headers = _send(request)
    assert code == 200
    assert headers["Content-Type"] == "application/octet-stream"
    header = json.loads(answer[: int(headers["Inference-Header-Content-Length"])])
    sizes = [o["parameters"]["binary_data_size"] for o in header["outputs"]]
    assert sizes == [128, 128]
    raw = answer[len(answer) - 256 :]
    np.testing.assert_array_equal(np.frombuffer(raw[:128], "<i4"), np.tile(np.arange(1, 17), 2))


# -------------------------------------------------------------------------------------- statistics


def test_statistics_count_what_was_sent(client: httpclient.InferenceServerClient) -> None:
    def stats() -> dict[str, Any]:
        rows = client.get_inference_statistics("simple")["model_stats"]
        assert len(rows) == 1
        return rows[0]  # type: ignore[no-any-return]

    before = stats()
    sizes = [1, 2, 2]
    for size in sizes:
        a = np.ones((size, 16), dtype=np.int32)
        client.infer("simple", simple_inputs(a, a))
    bad = np.ones((9, 16), dtype=np.int32)
    with pytest.raises(InferenceServerException):
        client.infer("simple", simple_inputs(bad, bad))
    after = stats()
    assert (after["name"], after["version"]) == ("simple", "1")
    assert after["inference_count"] - before["inference_count"] == sum(sizes)
    got, was = after["inference_stats"], before["inference_stats"]
    assert got["success"]["count"] - was["success"]["count"] == len(sizes)
    assert got["success"]["ns"] > was["success"]["ns"]
    assert got["fail"]["count"] - was["fail"]["count"] == 1
    moved = {b["batch_size"]: b["compute_infer"]["count"] for b in after["batch_stats"]}
    assert {1, 2} <= set(moved)
    everything = client.get_inference_statistics()["model_stats"]
    assert {r["name"] for r in everything} == set(MODELS)


# -------------------------------------------------------------------------------- bad requests

GOOD_INPUT = {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16]}


def _binary_body(sizes: list[int], payload: bytes) -> tuple[bytes, dict[str, str]]:
    inputs = [{**GOOD_INPUT, "parameters": {"binary_data_size": s}} for s in sizes]
    header = json.dumps({"inputs": inputs}).encode()
    return header + payload, {"Inference-Header-Content-Length": str(len(header))}


BAD_BODIES: dict[str, tuple[bytes, dict[str, str], int, str]] = {
    "malformed_json": (b'{"inputs": [', {}, 400, "not valid JSON"),
    "not_an_object": (b"[1, 2]", {}, 400, "JSON object"),
    "header_negative": (b"{}", {"Inference-Header-Content-Length": "-1"}, 400, "non-negative integer"),
    "header_not_numeric": (b"{}", {"Inference-Header-Content-Length": "ten"}, 400, "non-negative integer"),
    "header_too_large": (b"{}", {"Inference-Header-Content-Length": "1000"}, 400, "larger than"),
    "binary_size_short": (*_binary_body([64], b"\0" * 60), 400, "runs past"),
    "binary_size_extra": (*_binary_body([64], b"\0" * 70), 400, "not claimed"),
    "binary_size_wrong_for_shape": (*_binary_body([60], b"\0" * 60), 400, "needs 64"),
    "fp16_in_json": (
        json.dumps({"inputs": [{**GOOD_INPUT, "datatype": "FP16", "data": [0.0] * 16}]}).encode(),
        {},
        400,
        "FP16 data cannot be sent as JSON",
    ),
    "wrong_shape": (
        json.dumps({"inputs": [{**GOOD_INPUT, "shape": [1, 8], "data": [0.0] * 8}]}).encode(),
        {},
        400,
        "unexpected shape",
    ),
    "wrong_count": (json.dumps({"inputs": [{**GOOD_INPUT, "data": [0.0] * 3}]}).encode(), {}, 400, "3 values"),
    "string_in_fp32": (json.dumps({"inputs": [{**GOOD_INPUT, "data": ["a"] * 16}]}).encode(), {}, 400, "not FP32"),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_infer_bodies(http_url: str, case: str) -> None:
    body, headers, status, fragment = BAD_BODIES[case]
    assert_error(post(http_url, "/v2/models/identity_fp32/infer", body, headers), status, fragment)
    assert get(http_url, "/v2/health/live")[0] == 200


def test_unknown_model_infer_404(http_url: str) -> None:
    body = json.dumps({"inputs": [{**GOOD_INPUT, "data": [0.0] * 16}]}).encode()
    assert_error(post(http_url, "/v2/models/no_such_model/infer", body), 404, "no_such_model")
    assert_error(get(http_url, "/v2/no/such/route"), 404, "Not Found")
    assert get(http_url, "/v2/health/live")[0] == 200


def test_binary_bytes_input_by_hand(http_url: str) -> None:
    """BYTES travel with 4-byte little-endian length prefixes in the binary extension."""
    items = [str(i).encode() for i in range(16)]
    raw = b"".join(struct.pack("<I", len(x)) + x for x in items)
    inputs = [
        {"name": n, "datatype": "BYTES", "shape": [1, 16], "parameters": {"binary_data_size": len(raw)}}
        for n in ("INPUT0", "INPUT1")
    ]
    header = json.dumps({"inputs": inputs, "outputs": [{"name": "OUTPUT0"}]}).encode()
    headers = {"Inference-Header-Content-Length": str(len(header))}
    code, answer = post(http_url, "/v2/models/simple_string/infer", header + raw + raw, headers)
    assert code == 200, answer
    out = json.loads(answer)["outputs"]
    assert [o["name"] for o in out] == ["OUTPUT0"]
    assert out[0]["data"] == [str(2 * i) for i in range(16)]


def test_body_over_the_limit_413(logs_dir: Path) -> None:
    with running(EXAMPLES, "--http-max-input-size", "4096", log_dir=logs_dir) as server:
        assert_error(post(server.http_url, "/v2/models/simple/infer", b"\0" * 5000), 413, "4096")
        assert get(server.http_url, "/v2/health/ready") == (200, b"")


# ------------------------------------------------------------------------- compression, asyncio


@pytest.mark.parametrize(("request_algo", "response_algo"), [("gzip", "gzip"), ("deflate", "deflate"), ("gzip", None)])
def test_compressed_infer(
    client: httpclient.InferenceServerClient, request_algo: str, response_algo: str | None
) -> None:
    x = rng.standard_normal((4, 16)).astype(np.float32)
    tensor = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    result = client.infer(
        "identity_fp32",
        [tensor],
        request_compression_algorithm=request_algo,
        response_compression_algorithm=response_algo,
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)


def test_response_is_compressed_only_when_asked(http_url: str) -> None:
    body = json.dumps({"inputs": [{**GOOD_INPUT, "data": [0.0] * 16}]}).encode()
    request = urllib.request.Request(
        f"http://{http_url}/v2/models/identity_fp32/infer", data=body, headers={"Accept-Encoding": "gzip"}
    )
    code, answer, headers = _send(request)
    assert code == 200
    assert headers.get("Content-Encoding") == "gzip"
    assert json.loads(gzip.decompress(answer))["outputs"][0]["data"] == [0.0] * 16
    code, answer, headers = _send(urllib.request.Request(request.full_url, data=body))
    assert code == 200
    assert "Content-Encoding" not in headers
    assert json.loads(answer)["outputs"][0]["data"] == [0.0] * 16


async def test_aio_client_drives_every_endpoint(http_url: str) -> None:
    client = aiohttpclient.InferenceServerClient(http_url)
    try:
        assert await client.is_server_live() is True
        assert await client.is_server_ready() is True
        assert (await client.get_server_metadata())["name"] == "clipperd"
        assert await client.is_model_ready("simple") is True
        assert (await client.get_model_metadata("simple"))["name"] == "simple"
        assert (await client.get_model_config("simple"))["name"] == "simple"
        index = await client.get_model_repository_index()
        assert {m["name"] for m in index} == set(MODELS)
        before = (await client.get_inference_statistics("simple"))["model_stats"][0]["inference_stats"]["success"]
        a = rng.integers(-50, 50, size=(2, 16)).astype(np.int32)
        b = rng.integers(-50, 50, size=(2, 16)).astype(np.int32)
        for binary in (True, False):
            inputs = []
            for name, data in (("INPUT0", a), ("INPUT1", b)):
                tensor = aiohttpclient.InferInput(name, list(data.shape), "INT32")
                tensor.set_data_from_numpy(data, binary_data=binary)
                inputs.append(tensor)
            outputs = [aiohttpclient.InferRequestedOutput(n, binary_data=binary) for n in ("OUTPUT0", "OUTPUT1")]
            result = await client.infer("simple", inputs, outputs=outputs)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
        after = (await client.get_inference_statistics("simple"))["model_stats"][0]["inference_stats"]["success"]
        assert after["count"] - before["count"] == 2
        with pytest.raises(InferenceServerException) as error:
            await client.get_model_metadata("no_such_model")
        assert error.value.status() == "404"
    finally:
        await client.close()


def test_wrong_method_405_names_the_allowed_ones(http_url: str) -> None:
    code, body, headers = _send(urllib.request.Request(f"http://{http_url}/v2/models/simple/infer"))
    assert code == 405, body
    assert headers["Allow"] == "POST"
    assert "GET is not allowed" in json.loads(body)["error"]
    code, body, headers = _send(urllib.request.Request(f"http://{http_url}/v2/health/live", method="DELETE"))
    assert code == 405
    assert "GET" in headers["Allow"]
    assert_error(get(http_url, "/v2/models/simple/nonsense"), 404, "Not Found")


def test_load_and_unload_in_explicit_mode(logs_dir: Path) -> None:
    with running(EXAMPLES, "--model-control-mode", "explicit", "--load-model", "simple", log_dir=logs_dir) as server:
        triton = httpclient.InferenceServerClient(server.http_url)
        try:
            assert triton.is_model_ready("simple") is True
            assert triton.is_model_ready("identity_fp32") is False
            triton.load_model("identity_fp32")
            assert triton.is_model_ready("identity_fp32") is True
            x = rng.standard_normal((2, 16)).astype(np.float32)
            tensor = httpclient.InferInput("INPUT0", [2, 16], "FP32")
            tensor.set_data_from_numpy(x)
            np.testing.assert_array_equal(triton.infer("identity_fp32", [tensor]).as_numpy("OUTPUT0"), x)
            triton.unload_model("simple")
            assert triton.is_model_ready("simple") is False
            states = {m["name"]: m.get("state") for m in triton.get_model_repository_index()}
            assert states["identity_fp32"] == "READY"
            assert states["simple"] == "UNAVAILABLE"
            with pytest.raises(InferenceServerException) as error:
                triton.load_model("no_such_model")
            assert error.value.status() == "404"
            with pytest.raises(InferenceServerException) as error:
                triton.load_model("simple", config='{"max_batch_size": 2}')
            assert error.value.status() == "501"
        finally:
            triton.close()
