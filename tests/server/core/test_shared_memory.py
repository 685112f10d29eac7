"""The system shared memory extension as users drive it: tritonclient.grpc and tritonclient.http
with regions made by ``tritonclient.utils.shared_memory``, against real servers. Registration,
status and unregistration; inputs read from and outputs written to regions (results equal to the
path without shared memory); and the bad inputs, each with its status and the server still
serving afterwards."""

from __future__ import annotations

import functools
import json
import os
import textwrap
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException, serialize_byte_tensor, serialized_byte_size

from tests.conftest import Region
from tests.serverproc import EXAMPLES, ServerProcess, running

pytestmark = pytest.mark.timeout(120)

rng = np.random.default_rng(20240612)


# ------------------------------------------------------------------------------------ transports


@dataclass(frozen=True)
class Transport:
    """One of the two protocols, with what differs between their tritonclient modules."""

    name: str
    module: Any  # tritonclient.grpc or tritonclient.http
    url: str

    def client(self) -> Any:
        return self.module.InferenceServerClient(self.url)

    def status(self, client: Any, name: str = "") -> list[dict[str, Any]]:
        answer = client.get_system_shared_memory_status(name)
        if self.name == "http":
            return sorted(answer, key=lambda r: r["name"])  # type: ignore[no-any-return]
        rows = [
            {"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}
            for r in answer.regions.values()
        ]
        return sorted(rows, key=lambda r: r["name"])

    def code(self, error: InferenceServerException) -> str:
        return str(error.status()).removeprefix("StatusCode.")

    def expect(self, grpc_code: str, http_code: int) -> str:
        return grpc_code if self.name == "grpc" else str(http_code)


@pytest.fixture(params=["grpc", "http"])
def transport(request: pytest.FixtureRequest, example_server: ServerProcess) -> Transport:
    return transport_for(request.param, example_server)


def transport_for(name: str, server: ServerProcess) -> Transport:
    if name == "grpc":
        return Transport("grpc", grpcclient, server.url)
    return Transport("http", httpclient, server.http_url)


@pytest.fixture
def client(transport: Transport) -> Iterator[Any]:
    c = transport.client()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def names(client: Any) -> Iterator[Callable[[str], str]]:
    """Unique region names; every one is unregistered after the test."""
    given: list[str] = []

    def name(stem: str) -> str:
        given.append(f"{stem}_{uuid.uuid4().hex[:8]}")
        return given[-1]

    yield name
    for n in given:
        client.unregister_system_shared_memory(n)


def failure(call: Callable[[], object]) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


def expect_error(
    transport: Transport, call: Callable[[], object], grpc_code: str, http_code: int, fragment: str
) -> str:
    error = failure(call)
    message = error.message() or ""
    assert transport.code(error) == transport.expect(grpc_code, http_code), message
    assert fragment in message, message
    assert "/dev/shm" not in message, message
    assert "Traceback" not in message, message
    return message


def assert_serving(transport: Transport) -> None:
    """Live, and a plain request still answers right."""
    with transport.client() as c:
        assert c.is_server_live()
        x = rng.random((1, 16), dtype=np.float32)
        tensor = transport.module.InferInput("INPUT0", [1, 16], "FP32")
        tensor.set_data_from_numpy(x)
        np.testing.assert_array_equal(c.infer("identity_fp32", [tensor]).as_numpy("OUTPUT0"), x)


def shm_input(
    transport: Transport, name: str, shape: list[int], datatype: str, region: str, size: int, offset: int = 0
) -> Any:
    tensor = transport.module.InferInput(name, shape, datatype)
    tensor.set_shared_memory(region, size, offset)
    return tensor


def shm_output(transport: Transport, name: str, region: str, size: int, offset: int = 0) -> Any:
    output = transport.module.InferRequestedOutput(name)
    output.set_shared_memory(region, size, offset)
    return output


def data_input(transport: Transport, name: str, data: np.ndarray, datatype: str) -> Any:
    tensor = transport.module.InferInput(name, list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    return tensor


# ------------------------------------------------------------------------------ the management API


def test_server_lists_the_extension(client: Any, transport: Transport) -> None:
    meta = client.get_server_metadata()
    extensions = meta["extensions"] if transport.name == "http" else list(meta.extensions)
    assert "system_shared_memory" in extensions


def test_register_status_unregister(
    client: Any, transport: Transport, make_region: Callable[[int], Region], names: Callable[[str], str]
) -> None:
    key_a, _ = make_region(64)
    key_b, _ = make_region(8192)
    a, b = names("a"), names("b")
    client.register_system_shared_memory(a, key_a, 64)
    client.register_system_shared_memory(b, key_b, 100, offset=4100)  # an offset that is not page-aligned
    rows = {r["name"]: r for r in transport.status(client) if r["name"] in (a, b)}
    assert rows == {
        a: {"name": a, "key": key_a, "offset": 0, "byte_size": 64},
        b: {"name": b, "key": key_b, "offset": 4100, "byte_size": 100},
    }
    assert transport.status(client, b) == [{"name": b, "key": key_b, "offset": 4100, "byte_size": 100}]
    client.unregister_system_shared_memory(a)
    assert a not in [r["name"] for r in transport.status(client)]
    expect_error(transport, lambda: client.get_system_shared_memory_status(a), "NOT_FOUND", 404, a)
    client.unregister_system_shared_memory(a)  # unknown now: success, as in Triton
    client.register_system_shared_memory(a, key_a, 64)  # the name is free again
    client.unregister_system_shared_memory()  # every region
    assert transport.status(client) == []


def test_status_of_unknown_region(client: Any, transport: Transport) -> None:
    expect_error(
        transport, lambda: client.get_system_shared_memory_status("no_such_region"), "NOT_FOUND", 404, "no_such_region"
    )
    assert_serving(transport)


def test_cuda_shared_memory_stays_unsupported(client: Any, transport: Transport) -> None:
    for call in (
        lambda: client.get_cuda_shared_memory_status(),
        lambda: client.register_cuda_shared_memory("gpu", "aGFuZGxl", 0, 64),
    ):
        message = expect_error(transport, call, "UNIMPLEMENTED", 501, "CUDA shared memory")
        assert "not supported" in message
    client.unregister_cuda_shared_memory()  # nothing can be registered, so nothing to unregister


# ------------------------------------------------------------------------------------- inference


def test_identity_in_and_out_of_shared_memory(
    client: Any, transport: Transport, make_region: Callable[[int], Region], names: Callable[[str], str]
) -> None:
    """Input at offset 0, output at offset 4096 + 8 of one region; equal to the plain path."""
    x = rng.random((3, 16), dtype=np.float32)
    key, handle = make_region(8192)
    shm.set_shared_memory_region(handle, [x])
    region = names("io")
    client.register_system_shared_memory(region, key, 8192)
    result = client.infer(
        "identity_fp32",
        [shm_input(transport, "INPUT0", [3, 16], "FP32", region, x.nbytes)],
        outputs=[shm_output(transport, "OUTPUT0", region, x.nbytes, offset=4104)],
    )
    (output,) = result.get_response()["outputs"] if transport.name == "http" else result.get_response().outputs
    if transport.name == "http":
        assert output == {"name": "OUTPUT0", "datatype": "FP32", "shape": [3, 16]}  # no data, as Triton
    else:
        assert result.get_response().raw_output_contents == [b""]  # index-aligned, empty
        params = {k: getattr(v, str(v.WhichOneof("parameter_choice"))) for k, v in output.parameters.items()}
        assert params == {
            "shared_memory_region": region,
            "shared_memory_byte_size": x.nbytes,
            "shared_memory_offset": 4104,
        }
    plain = client.infer("identity_fp32", [data_input(transport, "INPUT0", x, "FP32")]).as_numpy("OUTPUT0")
    np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.float32, [3, 16], offset=4104), plain)
    np.testing.assert_array_equal(plain, x)


def test_simple_with_some_tensors_in_shared_memory(
    client: Any, transport: Transport, make_region: Callable[[int], Region], names: Callable[[str], str]
) -> None:
    """INPUT0 and OUTPUT0 in shared memory, INPUT1 and OUTPUT1 on the wire: raw entries stay
    aligned with their tensors."""
    a = rng.integers(-1000, 1000, (2, 16), dtype=np.int32)
    b = rng.integers(-1000, 1000, (2, 16), dtype=np.int32)
    key_in, h_in = make_region(a.nbytes)
    key_out, h_out = make_region(a.nbytes)
    shm.set_shared_memory_region(h_in, [a])
    r_in, r_out = names("in"), names("out")
    client.register_system_shared_memory(r_in, key_in, a.nbytes)
    client.register_system_shared_memory(r_out, key_out, a.nbytes)
    result = client.infer(
        "simple",
        [shm_input(transport, "INPUT0", [2, 16], "INT32", r_in, a.nbytes), data_input(transport, "INPUT1", b, "INT32")],
        outputs=[shm_output(transport, "OUTPUT0", r_out, a.nbytes), transport.module.InferRequestedOutput("OUTPUT1")],
    )
    np.testing.assert_array_equal(shm.get_contents_as_numpy(h_out, np.int32, [2, 16]), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_strings_in_shared_memory(
    client: Any, transport: Transport, make_region: Callable[[int], Region], names: Callable[[str], str]
) -> None:
    a = np.array([[str(v).encode() for v in range(16)]], dtype=object)
    b = np.array([[str(2 * v).encode() for v in range(16)]], dtype=object)
    raw_a, raw_b = serialize_byte_tensor(a), serialize_byte_tensor(b)
    size_a, size_b = serialized_byte_size(raw_a), serialized_byte_size(raw_b)
    key_in, h_in = make_region(size_a + size_b)
    key_out, h_out = make_region(1024)
    shm.set_shared_memory_region(h_in, [raw_a, raw_b])
    r_in, r_out = names("sin"), names("sout")
    client.register_system_shared_memory(r_in, key_in, size_a + size_b)
    client.register_system_shared_memory(r_out, key_out, 1024)
    client.infer(
        "simple_string",
        [
            shm_input(transport, "INPUT0", [1, 16], "BYTES", r_in, size_a),
            shm_input(transport, "INPUT1", [1, 16], "BYTES", r_in, size_b, offset=size_a),
        ],
        outputs=[
            shm_output(transport, "OUTPUT0", r_out, 512),
            shm_output(transport, "OUTPUT1", r_out, 512, offset=512),
        ],
    )
    plain = client.infer(
        "simple_string", [data_input(transport, "INPUT0", a, "BYTES"), data_input(transport, "INPUT1", b, "BYTES")]
    )
    sums = shm.get_contents_as_numpy(h_out, np.object_, [1, 16])
    differences = shm.get_contents_as_numpy(h_out, np.object_, [1, 16], offset=512)
    np.testing.assert_array_equal(sums, plain.as_numpy("OUTPUT0"))
    np.testing.assert_array_equal(differences, plain.as_numpy("OUTPUT1"))
    assert sums[0, 3] == b"9"


# ------------------------------------------------------------------------------- bad registrations


def test_register_unknown_key(client: Any, transport: Transport, names: Callable[[str], str]) -> None:
    key = f"/clipperd_test_missing_{uuid.uuid4().hex[:8]}"
    expect_error(
        transport, lambda: client.register_system_shared_memory(names("r"), key, 64), "NOT_FOUND", 404, "does not exist"
    )
    assert_serving(transport)


@pytest.mark.parametrize(
    "key", ["../../etc/passwd", "/../etc/hostname", "/a/b", "", ".", "/..", "/x\x00y", "/" + "k" * 300]
)
def test_register_path_like_keys(client: Any, transport: Transport, names: Callable[[str], str], key: str) -> None:
    expect_error(
        transport,
        lambda: client.register_system_shared_memory(names("r"), key, 4),
        "INVALID_ARGUMENT",
        400,
        "not a POSIX shared memory name",
    )
    assert_serving(transport)


def test_register_symlink_key_refused(client: Any, transport: Transport, names: Callable[[str], str]) -> None:
    """A link in /dev/shm to a file elsewhere is not a shared memory object."""
    link = Path("/dev/shm") / f"clipperd_test_link_{uuid.uuid4().hex[:8]}"
    target = Path(__file__)
    link.symlink_to(target)
    try:
        expect_error(
            transport,
            lambda: client.register_system_shared_memory(names("r"), f"/{link.name}", 16),
            "INVALID_ARGUMENT",
            400,
            "cannot be opened",
        )
    finally:
        link.unlink()
    assert_serving(transport)


@pytest.mark.parametrize(
    ("offset", "byte_size", "fragment"),
    [
        (0, 65, "out of bounds"),
        (60, 8, "out of bounds"),
        (64, 1, "out of bounds"),
        (0, 0, "byte_size must be an integer of at least 1"),
        (2**63, 8, "out of bounds"),
        (8, 2**64 - 1, "out of bounds"),
        (2**64 - 1, 2**64 - 1, "out of bounds"),
    ],
)
def test_register_out_of_bounds(
    client: Any,
    transport: Transport,
    make_region: Callable[[int], Region],
    names: Callable[[str], str],
    offset: int,
    byte_size: int,
    fragment: str,
) -> None:
    key, _ = make_region(64)
    name = names("r")
    expect_error(
        transport,
        lambda: client.register_system_shared_memory(name, key, byte_size, offset=offset),
        "INVALID_ARGUMENT",
        400,
        fragment,
    )
    assert name not in [r["name"] for r in transport.status(client)]
    assert_serving(transport)


def test_register_duplicate_name(
    client: Any, transport: Transport, make_region: Callable[[int], Region], names: Callable[[str], str]
) -> None:
    key_a, _ = make_region(64)
    key_b, _ = make_region(128)
    name = names("dup")
    client.register_system_shared_memory(name, key_a, 64)
    expect_error(
        transport,
        lambda: client.register_system_shared_memory(name, key_b, 128),
        "ALREADY_EXISTS",
        409,
        "already registered",
    )
    assert transport.status(client, name) == [{"name": name, "key": key_a, "offset": 0, "byte_size": 64}]
    assert_serving(transport)


def raw_post(url: str, path: str, body: bytes) -> tuple[int, str]:
    request = urllib.request.Request(f"http://{url}{path}", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return int(error.code), json.loads(error.read())["error"]


@pytest.mark.parametrize(
    "body",
    [
        {"key": "KEY", "offset": -1, "byte_size": 8},
        {"key": "KEY", "offset": 0, "byte_size": -8},
        {"key": "KEY", "offset": "0", "byte_size": 8},
        {"key": "KEY", "offset": 0, "byte_size": 8.0},
        {"key": "KEY", "offset": 0, "byte_size": True},
        {"key": "KEY", "offset": 0},
        {"key": 7, "byte_size": 8},
        {"offset": 0, "byte_size": 8},
        {"key": "KEY", "offset": 10**30, "byte_size": 8},  # past uint64: only JSON can say it
        {"key": "KEY", "offset": 8, "byte_size": 10**30},
    ],
)
def test_register_http_bodies_of_wrong_types(
    example_server: ServerProcess, make_region: Callable[[int], Region], body: dict[str, Any]
) -> None:
    key, _ = make_region(64)
    body = {k: key if v == "KEY" else v for k, v in body.items()}
    status, message = raw_post(
        example_server.http_url, "/v2/systemsharedmemory/region/bad/register", json.dumps(body).encode()
    )
    assert status == 400, message
    assert "key" in message or "offset" in message or "byte_size" in message, message
    assert_serving(transport_for("http", example_server))


def test_register_http_body_not_json(example_server: ServerProcess) -> None:
    status, message = raw_post(example_server.http_url, "/v2/systemsharedmemory/region/bad/register", b"{nope")
    assert status == 400
    assert "not valid JSON" in message


# ------------------------------------------------------------------------------- bad inference


@pytest.fixture
def region64(client: Any, make_region: Callable[[int], Region], names: Callable[[str], str]) -> tuple[str, Any]:
    """A registered 64-byte region (one [1, 16] FP32 tensor) holding known data."""
    key, handle = make_region(64)
    shm.set_shared_memory_region(handle, [np.arange(16, dtype=np.float32)])
    name = names("r64")
    client.register_system_shared_memory(name, key, 64)
    return name, handle


def identity(client: Any, transport: Transport, inputs: list[Any], outputs: list[Any] | None = None) -> Any:
    return client.infer("identity_fp32", inputs, outputs=outputs)


def test_infer_unknown_region(client: Any, transport: Transport) -> None:
    tensor = shm_input(transport, "INPUT0", [1, 16], "FP32", "no_such_region", 64)
    expect_error(transport, lambda: identity(client, transport, [tensor]), "NOT_FOUND", 404, "no_such_region")
    x = rng.random((1, 16), dtype=np.float32)
    out = shm_output(transport, "OUTPUT0", "no_such_region", 64)
    expect_error(
        transport,
        lambda: identity(client, transport, [data_input(transport, "INPUT0", x, "FP32")], [out]),
        "NOT_FOUND",
        404,
        "no_such_region",
    )
    assert_serving(transport)


@pytest.mark.parametrize(
    ("offset", "byte_size", "fragment"),
    [
        (0, 60, "60 bytes of raw data, but shape [1, 16] of FP32 needs 64"),
        (0, 68, "out of bounds"),
        (4, 64, "out of bounds"),
        (65, 0, "out of bounds"),
        (2**62, 64, "out of bounds"),
        (8, 2**63 - 1, "out of bounds"),
    ],
)
def test_infer_input_out_of_bounds_or_wrong_size(
    client: Any, transport: Transport, region64: tuple[str, Any], offset: int, byte_size: int, fragment: str
) -> None:
    tensor = shm_input(transport, "INPUT0", [1, 16], "FP32", region64[0], byte_size, offset)
    expect_error(transport, lambda: identity(client, transport, [tensor]), "INVALID_ARGUMENT", 400, fragment)
    assert_serving(transport)


def test_infer_reads_the_region_it_names(client: Any, transport: Transport, region64: tuple[str, Any]) -> None:
    tensor = shm_input(transport, "INPUT0", [1, 16], "FP32", region64[0], 64)
    result = identity(client, transport, [tensor])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.arange(16, dtype=np.float32).reshape(1, 16))


@pytest.mark.parametrize(("offset", "byte_size"), [(0, 60), (8, 56), (0, 0), (2**40, 64)])
def test_infer_output_region_too_small(
    client: Any, transport: Transport, region64: tuple[str, Any], offset: int, byte_size: int
) -> None:
    x = rng.random((1, 16), dtype=np.float32)
    out = shm_output(transport, "OUTPUT0", region64[0], byte_size, offset)
    fragment = "out of bounds" if offset + byte_size > 64 else "needs 64 bytes"
    expect_error(
        transport,
        lambda: identity(client, transport, [data_input(transport, "INPUT0", x, "FP32")], [out]),
        "INVALID_ARGUMENT",
        400,
        fragment,
    )
    np.testing.assert_array_equal(
        shm.get_contents_as_numpy(region64[1], np.float32, [16]), np.arange(16, dtype=np.float32)
    )
    assert_serving(transport)


def test_infer_truncated_object_refused(
    client: Any, transport: Transport, make_region: Callable[[int], Region], names: Callable[[str], str]
) -> None:
    """A client shrinking the object after registration must not crash the server (SIGBUS)."""
    key, _ = make_region(4096)
    name = names("shrunk")
    client.register_system_shared_memory(name, key, 4096)
    os.truncate(Path("/dev/shm") / key[1:], 0)
    tensor = shm_input(transport, "INPUT0", [1, 16], "FP32", name, 64)
    expect_error(transport, lambda: identity(client, transport, [tensor]), "FAILED_PRECONDITION", 400, "truncated")
    assert_serving(transport)


GRPC_BAD_PARAMETERS = [
    (
        {"shared_memory_region": "r", "shared_memory_byte_size": "64"},
        "shared_memory_byte_size must be a non-negative integer",
    ),
    ({"shared_memory_region": "r"}, "shared_memory_byte_size must be given"),
    (
        {"shared_memory_region": "r", "shared_memory_byte_size": 64, "shared_memory_offset": -8},
        "shared_memory_offset must be a non-negative integer",
    ),
    (
        {"shared_memory_region": "r", "shared_memory_byte_size": -1},
        "shared_memory_byte_size must be a non-negative integer",
    ),
    ({"shared_memory_region": 5, "shared_memory_byte_size": 64}, "shared_memory_region must be a non-empty string"),
    ({"shared_memory_region": "", "shared_memory_byte_size": 64}, "shared_memory_region must be a non-empty string"),
]


@pytest.mark.parametrize(("params", "fragment"), GRPC_BAD_PARAMETERS)
def test_infer_input_parameters_of_wrong_types_http(
    example_server: ServerProcess, params: dict[str, Any], fragment: str
) -> None:
    body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "parameters": params}]}
    status, message = raw_post(example_server.http_url, "/v2/models/identity_fp32/infer", json.dumps(body).encode())
    assert status == 400, message
    assert fragment in message, message
    assert_serving(transport_for("http", example_server))


@pytest.mark.parametrize(("params", "fragment"), GRPC_BAD_PARAMETERS[:2] + GRPC_BAD_PARAMETERS[3:])
def test_infer_output_parameters_of_wrong_types_grpc(
    example_server: ServerProcess, params: dict[str, Any], fragment: str
) -> None:
    transport = transport_for("grpc", example_server)
    x = rng.random((1, 16), dtype=np.float32)
    output = grpcclient.InferRequestedOutput("OUTPUT0")
    for key, value in params.items():  # what set_shared_memory would refuse to write
        parameter = output._get_tensor().parameters[key]
        if isinstance(value, str):
            parameter.string_param = value
        else:
            parameter.int64_param = value
    with grpcclient.InferenceServerClient(example_server.url) as c:
        expect_error(
            transport,
            lambda: c.infer("identity_fp32", [data_input(transport, "INPUT0", x, "FP32")], outputs=[output]),
            "INVALID_ARGUMENT",
            400,
            fragment,
        )
    assert_serving(transport)


def test_infer_offset_without_region(client: Any, transport: Transport) -> None:
    x = rng.random((1, 16), dtype=np.float32)
    output = transport.module.InferRequestedOutput("OUTPUT0")
    if transport.name == "grpc":
        output._get_tensor().parameters["shared_memory_offset"].int64_param = 0
    else:
        output._parameters["shared_memory_offset"] = 0
    expect_error(
        transport,
        lambda: identity(client, transport, [data_input(transport, "INPUT0", x, "FP32")], [output]),
        "INVALID_ARGUMENT",
        400,
        "need shared_memory_region",
    )


def test_http_input_with_data_and_region(example_server: ServerProcess, region64: tuple[str, Any]) -> None:
    params = {"shared_memory_region": region64[0], "shared_memory_byte_size": 64}
    body = {
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16, "parameters": params}]
    }
    status, message = raw_post(example_server.http_url, "/v2/models/identity_fp32/infer", json.dumps(body).encode())
    assert status == 400, message
    assert "in shared memory and cannot have data too" in message


# ------------------------------------------------------------------------- unregister while in use

HELD_MODEL = """
import time
from pathlib import Path


class Model:
    def initialize(self, context):
        self.markers = Path(context.parameters["markers"])

    def execute(self, inputs):
        (self.markers / "started").touch()
        deadline = time.monotonic() + 60
        while not (self.markers / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return {"OUTPUT0": inputs["INPUT0"]}
"""


@pytest.fixture
def held_server(tmp_path: Path, logs_dir: Path) -> Iterator[tuple[ServerProcess, Path]]:
    """A server with ``held``, an identity over FP32 [16] that waits for ``markers/release``, and
    ``identity_fp32``."""
    repo, markers = tmp_path / "repository", tmp_path / "markers"
    markers.mkdir()
    (repo / "held" / "1").mkdir(parents=True)
    (repo / "held" / "1" / "model.py").write_text(HELD_MODEL)
    (repo / "held" / "config.pbtxt").write_text(
        textwrap.dedent(
            f"""
            name: "held"
            backend: "python"
            max_batch_size: 8
            input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }} ]
            output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }} ]
            parameters {{ key: "execution_mode" value: {{ string_value: "thread" }} }}
            parameters {{ key: "markers" value: {{ string_value: "{markers}" }} }}
            """
        )
    )
    identity = EXAMPLES / "identity_fp32"
    (repo / "identity_fp32" / "1").mkdir(parents=True)
    (repo / "identity_fp32" / "config.pbtxt").write_text((identity / "config.pbtxt").read_text())
    (repo / "identity_fp32" / "1" / "model.py").write_text((identity / "1" / "model.py").read_text())
    with running(repo, log_dir=logs_dir) as server:
        yield server, markers
        (markers / "release").touch()
        assert server.is_running(), server.log()


def wait_for(path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.02)


def test_unregister_refused_while_a_request_uses_the_region(
    held_server: tuple[ServerProcess, Path], make_region: Callable[[int], Region]
) -> None:
    server, markers = held_server
    grpc_side, http_side = transport_for("grpc", server), transport_for("http", server)
    x = rng.random((1, 16), dtype=np.float32)
    key_in, h_in = make_region(64)
    key_out, h_out = make_region(64)
    key_idle, _ = make_region(64)
    shm.set_shared_memory_region(h_in, [x])
    with grpc_side.client() as g, http_side.client() as h:
        g.register_system_shared_memory("in", key_in, 64)
        h.register_system_shared_memory("out", key_out, 64)
        g.register_system_shared_memory("idle", key_idle, 64)

        def held_request() -> Any:
            with grpcclient.InferenceServerClient(server.url) as c:
                inputs = [shm_input(grpc_side, "INPUT0", [1, 16], "FP32", "in", 64)]
                return c.infer("held", inputs, outputs=[shm_output(grpc_side, "OUTPUT0", "out", 64)], client_timeout=60)

        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(held_request)
            wait_for(markers / "started")
            for side, client in ((grpc_side, g), (http_side, h)):
                for name in ("in", "out"):
                    unregister = functools.partial(client.unregister_system_shared_memory, name)
                    expect_error(side, unregister, "FAILED_PRECONDITION", 400, "in use")
                unregister_all = functools.partial(client.unregister_system_shared_memory)
                message = expect_error(side, unregister_all, "FAILED_PRECONDITION", 400, "in use")
                assert "'in'" in message, message
                assert "'out'" in message, message
                assert "idle" not in message, message
            assert [r["name"] for r in grpc_side.status(g)] == ["in", "out"]  # the idle one went
            assert_serving(grpc_side)  # other requests still answer meanwhile
            assert not pending.done()
            (markers / "release").touch()
            pending.result(timeout=30)
        np.testing.assert_array_equal(shm.get_contents_as_numpy(h_out, np.float32, [1, 16]), x)
        g.unregister_system_shared_memory("in")
        h.unregister_system_shared_memory()
        assert grpc_side.status(g) == []


def test_concurrent_requests_share_a_region(
    client: Any, transport: Transport, make_region: Callable[[int], Region], names: Callable[[str], str]
) -> None:
    """Many requests reading one region and writing disjoint slices of another."""
    n = 16
    x = rng.random((n, 16), dtype=np.float32)
    key_in, h_in = make_region(x.nbytes)
    key_out, h_out = make_region(x.nbytes)
    shm.set_shared_memory_region(h_in, [x])
    r_in, r_out = names("cin"), names("cout")
    client.register_system_shared_memory(r_in, key_in, x.nbytes)
    client.register_system_shared_memory(r_out, key_out, x.nbytes)

    def one(i: int) -> None:
        with transport.client() as c:
            c.infer(
                "identity_fp32",
                [shm_input(transport, "INPUT0", [1, 16], "FP32", r_in, 64, offset=64 * i)],
                outputs=[shm_output(transport, "OUTPUT0", r_out, 64, offset=64 * i)],
            )

    errors: list[BaseException] = []
    threads = [threading.Thread(target=lambda i=i: _record(errors, one, i)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    np.testing.assert_array_equal(shm.get_contents_as_numpy(h_out, np.float32, [n, 16]), x)


def _record(errors: list[BaseException], call: Callable[[int], None], i: int) -> None:
    try:
        call(i)
    except BaseException as error:  # reported by the test's assert
        errors.append(error)
