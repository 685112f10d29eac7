"""Bad input over gRPC (the reference list "Bad input an inference server must survive"), on real servers.

Every malformed request gets its exact status code and a message that names the problem without
leaking internals (paths, tracebacks); afterwards the server is still live and a correct ``simple``
inference still gives the right answer (checked after every test by ``still_serving``). Covers:
unknown models / versions / path-like names, input and output name errors, data types, shapes,
raw and typed contents, BYTES framing, reserved parameters, oversized and undecodable messages,
cancelled and deadline-exceeded requests on a slow model, models that raise or return the wrong
type, the repository API in explicit mode (path traversal, symlinks, broken configs, failing
``initialize``), and memory after thousands of bad requests."""

from __future__ import annotations

import functools
import re
import shutil
import struct
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as tpb

from tests.serverproc import EXAMPLES, ServerProcess, running

SERVICE = "/inference.GRPCInferenceService"
MAX_DETAILS = 1000  # no client-facing message should be longer than this
MAX_NAME_DETAILS = 500  # messages that echo a (possibly huge) model name
LEAKS = re.compile(
    r"Traceback|File \"|site-packages|\.py\", line|line \d+, in |<class '|google\.protobuf|"
    r"(?<![\w.'])/(?:work|tmp|home|root|usr|opt|var|proc|srv)/"
)

A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.full((1, 16), 3, dtype=np.int32)


# ----------------------------------------------------------------------------------------- helpers


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()  # type: ignore[no-any-return]


class Client:
    """Raw unary calls with tritonclient's messages (so anything can be sent)."""

    def __init__(self, url: str, **options: Any) -> None:
        opts = [(f"grpc.{k}", v) for k, v in options.items()]
        self.channel = grpc.insecure_channel(url, options=opts)

    def method(self, name: str, response: Any, raw: bool = False) -> Any:
        return self.channel.unary_unary(
            f"{SERVICE}/{name}",
            request_serializer=None if raw else _serialize,
            response_deserializer=response.FromString,
        )

    def infer(self, request: Any, timeout: float = 30.0) -> Any:
        return self.method("ModelInfer", tpb.ModelInferResponse)(request, timeout=timeout)

    def close(self) -> None:
        self.channel.close()


def simple_request(a: np.ndarray = A, b: np.ndarray = B, model: str = "simple", version: str = "") -> Any:
    request = tpb.ModelInferRequest(model_name=model, model_version=version, id="req-1")
    for name, array in (("INPUT0", a), ("INPUT1", b)):
        request.inputs.add(name=name, datatype="INT32", shape=list(array.shape))
        request.raw_input_contents.append(array.tobytes())
    return request


def outputs_of(response: Any) -> dict[str, np.ndarray]:
    result = {}
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        assert tensor.datatype == "INT32", tensor
        result[tensor.name] = np.frombuffer(raw, dtype=np.int32).reshape(list(tensor.shape))
    return result


def check_simple(client: Client) -> None:
    """A correct ``simple`` inference gives OUTPUT0 = a + b and OUTPUT1 = a - b."""
    out = outputs_of(client.infer(simple_request()))
    np.testing.assert_array_equal(out["OUTPUT0"], A + B)
    np.testing.assert_array_equal(out["OUTPUT1"], A - B)


def assert_clean(details: str, max_len: int = MAX_DETAILS) -> None:
    assert details, "an error must say what went wrong"
    assert len(details) < max_len, f"{len(details)} chars: {details[:200]}..."
    assert not LEAKS.search(details), f"details leak internals: {details!r}"


def expect_error(call: Callable[[], Any], code: grpc.StatusCode, pattern: str, max_len: int = MAX_DETAILS) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call()
    error: Any = info.value
    details = error.details() or ""
    assert error.code() == code, f"expected {code}, got {error.code()}: {details[:300]!r}"
    assert re.search(pattern, details), f"{details[:300]!r} does not match {pattern!r}"
    assert_clean(details, max_len)
    return details


def _proc_status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def rss_kib(pid: int) -> int:
    return _proc_status_kib(pid, "VmRSS")


def _peak_rss_kib(pid: int) -> int:
    return _proc_status_kib(pid, "VmHWM")


def bytes_raw(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def write_model(repo: Path, name: str, config: str, model_py: str | None) -> Path:
    folder = repo / name
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(textwrap.dedent(config))
    if model_py is not None:
        (folder / "1" / "model.py").write_text(textwrap.dedent(model_py))
    return folder


def tensor_config(name: str, dtype: str, dims: str, *, mbs: int = 8, extra: str = "") -> str:
    return f"""
        name: "{name}"
        backend: "python"
        max_batch_size: {mbs}
        input [ {{ name: "INPUT0" data_type: {dtype} dims: [ {dims} ] }} ]
        output [ {{ name: "OUTPUT0" data_type: {dtype} dims: [ {dims} ] }} ]
        {extra}
        """


ECHO = """
    class Model:
        def execute(self, inputs):
            return {"OUTPUT0": inputs["INPUT0"]}
    """


LIAR = """
    import numpy as np

    class Model:
        def execute(self, inputs):
            x = inputs["INPUT0"]
            how = int(x[0, 0])
            if how == 0:
                return {}
            if how == 1:
                return {"OUTPUT0": x[:, :2]}
            if how == 2:
                return [x]
            if how == 3:
                return {"OUTPUT0": x, "EXTRA": x}
            if how == 4:
                return {"OUTPUT0": x.tolist()}
            return {"OUTPUT0": np.concatenate([x, x])}
    """


# ---------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def client(example_server: ServerProcess) -> Iterator[Client]:
    c = Client(example_server.url)
    yield c
    c.close()


@pytest.fixture(autouse=True)
def still_serving(example_server: ServerProcess, client: Client) -> Iterator[None]:
    """After every test: the example server is alive, live, and answers ``simple`` correctly."""
    yield
    assert example_server.is_running(), example_server.log()[-3000:]
    assert client.method("ServerLive", tpb.ServerLiveResponse)(tpb.ServerLiveRequest(), timeout=10).live
    check_simple(client)


@pytest.fixture(scope="module")
def custom_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Models for the cases the examples cannot show: INT8, FP16, slow, raising, lying about types."""
    repo = tmp_path_factory.mktemp("custom") / "repo"
    repo.mkdir()
    shutil.copytree(EXAMPLES / "simple", repo / "simple")
    write_model(repo, "int8_echo", tensor_config("int8_echo", "TYPE_INT8", "4"), ECHO)
    write_model(repo, "uint8_echo", tensor_config("uint8_echo", "TYPE_UINT8", "4"), ECHO)
    write_model(repo, "fp16_echo", tensor_config("fp16_echo", "TYPE_FP16", "4"), ECHO)
    thread_mode = 'parameters: { key: "execution_mode" value: { string_value: "thread" } }'
    write_model(
        repo,
        "slow",
        tensor_config("slow", "TYPE_INT32", "1", extra="dynamic_batching { }\n" + thread_mode),
        """
        import time

        class Model:
            def execute(self, inputs):
                time.sleep(0.5)
                return {"OUTPUT0": inputs["INPUT0"]}
        """,
    )
    write_model(
        repo,
        "raises",
        tensor_config("raises", "TYPE_FP32", "4"),
        """
        from pathlib import Path

        class Model:
            def execute(self, inputs):
                raise ValueError(f"weights missing at {Path(__file__).parent / 'weights.bin'}")
        """,
    )
    write_model(
        repo,
        "wrong_dtype",
        tensor_config("wrong_dtype", "TYPE_FP32", "4"),
        """
        import numpy as np

        class Model:
            def execute(self, inputs):
                return {"OUTPUT0": inputs["INPUT0"].astype(np.float64)}
        """,
    )
    write_model(repo, "liar", tensor_config("liar", "TYPE_FP32", "4"), LIAR)
    return repo


@pytest.fixture(scope="module")
def custom_server(custom_repo: Path, logs_dir: Path) -> Iterator[ServerProcess]:
    with running(custom_repo, log_dir=logs_dir) as server:
        yield server
        assert server.is_running(), server.log()[-3000:]


@pytest.fixture(scope="module")
def custom(custom_server: ServerProcess) -> Iterator[Client]:
    c = Client(custom_server.url)
    yield c
    check_simple(c)
    c.close()


# ------------------------------------------------------------------- names, versions, metadata


def test_unknown_model(client: Client) -> None:
    expect_error(
        lambda: client.infer(simple_request(model="no_such_model")),
        grpc.StatusCode.NOT_FOUND,
        r"unknown model.*no_such_model",
    )


def test_unknown_version(client: Client) -> None:
    expect_error(lambda: client.infer(simple_request(version="7")), grpc.StatusCode.NOT_FOUND, r"version 7")


@pytest.mark.parametrize("version", ["abc", "-1", "01x", "1.0", " 1", "\u0661", "9" * 40, "1\x00"])
def test_malformed_version(client: Client, version: str) -> None:
    expect_error(
        lambda: client.infer(simple_request(version=version)),
        grpc.StatusCode.INVALID_ARGUMENT,
        r"invalid model version",
    )


PATH_LIKE_NAMES = ["", ".", "..", "../simple", "simple/", "/etc/passwd", "sim\x00ple", "simple\\..", "a" * 10_000]
NAME_CODES = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)


def _name_error(call: Callable[[], Any]) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call()
    error: Any = info.value
    details = error.details() or ""
    assert error.code() in NAME_CODES, (error.code(), details[:300])
    assert re.search(r"model|name", details), details[:300]
    assert_clean(details, MAX_NAME_DETAILS)
    return details


@pytest.mark.parametrize("name", PATH_LIKE_NAMES, ids=lambda n: repr(n[:16]))
def test_path_like_model_names(client: Client, name: str) -> None:
    _name_error(lambda: client.infer(simple_request(model=name)))
    _name_error(lambda: client.method("ModelMetadata", tpb.ModelMetadataResponse)(tpb.ModelMetadataRequest(name=name)))
    _name_error(lambda: client.method("ModelConfig", tpb.ModelConfigResponse)(tpb.ModelConfigRequest(name=name)))
    if name:  # an empty name asks for the statistics of every model
        _name_error(
            lambda: client.method("ModelStatistics", tpb.ModelStatisticsResponse)(tpb.ModelStatisticsRequest(name=name))
        )
    ready = client.method("ModelReady", tpb.ModelReadyResponse)(tpb.ModelReadyRequest(name=name), timeout=10)
    assert not ready.ready


def test_metadata_of_bad_versions(client: Client) -> None:
    metadata = client.method("ModelMetadata", tpb.ModelMetadataResponse)
    expect_error(
        lambda: metadata(tpb.ModelMetadataRequest(name="simple", version="7")), grpc.StatusCode.NOT_FOUND, "version 7"
    )
    expect_error(
        lambda: metadata(tpb.ModelMetadataRequest(name="simple", version="-1")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid model version",
    )
    ready = client.method("ModelReady", tpb.ModelReadyResponse)
    assert not ready(tpb.ModelReadyRequest(name="simple", version="abc"), timeout=10).ready


def test_repository_api_refused_in_control_mode_none(client: Client) -> None:
    load = client.method("RepositoryModelLoad", tpb.RepositoryModelLoadResponse)
    unload = client.method("RepositoryModelUnload", tpb.RepositoryModelUnloadResponse)
    expect_error(
        lambda: load(tpb.RepositoryModelLoadRequest(model_name="simple"), timeout=10),
        grpc.StatusCode.UNAVAILABLE,
        r"not allowed.*explicit",
    )
    expect_error(
        lambda: unload(tpb.RepositoryModelUnloadRequest(model_name="simple"), timeout=10),
        grpc.StatusCode.UNAVAILABLE,
        r"not allowed.*explicit",
    )


# ----------------------------------------------------------------- inputs, outputs, types, shapes


def _drop_input1() -> Any:
    request = simple_request()
    del request.inputs[1]
    del request.raw_input_contents[1]
    return request


def _extra_input() -> Any:
    request = simple_request()
    request.inputs.add(name="INPUT2", datatype="INT32", shape=[1, 16])
    request.raw_input_contents.append(A.tobytes())
    return request


def _duplicate_input() -> Any:
    request = simple_request()
    request.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 16])
    request.raw_input_contents.append(A.tobytes())
    return request


def _outputs(*names: str) -> Any:
    request = simple_request()
    for name in names:
        request.outputs.add(name=name)
    return request


def _input0(datatype: str = "INT32", shape: list[int] | None = None, nbytes: int | None = None) -> Any:
    """``simple`` with INPUT0 changed: its type, its shape and its raw byte length."""
    request = simple_request()
    tensor = request.inputs[0]
    tensor.datatype = datatype
    if shape is not None:
        del tensor.shape[:]
        tensor.shape.extend(shape)
    if nbytes is not None:
        request.raw_input_contents[0] = bytes(nbytes)
    return request


def _batch(n: int) -> Any:
    a = np.zeros((n, 16), dtype=np.int32)
    return simple_request(a, a)


def _typed(fill: Callable[[Any, int], None]) -> Any:
    """``simple`` with both inputs in typed contents, filled by ``fill(contents, index)``."""
    request = simple_request()
    del request.raw_input_contents[:]
    for i, tensor in enumerate(request.inputs):
        fill(tensor.contents, i)
    return request


def _mixed() -> Any:
    request = simple_request()
    request.inputs[0].contents.int_contents.extend(range(16))
    return request


def _raw_entries(count: int) -> Any:
    request = simple_request()
    del request.raw_input_contents[:]
    request.raw_input_contents.extend([A.tobytes()] * count)
    return request


def _no_data() -> Any:
    request = simple_request()
    del request.raw_input_contents[:]
    return request


def _param(name: str, kind: str, value: Any, where: str = "request") -> Any:
    request = simple_request()
    if where == "request":
        target = request.parameters[name]
    elif where == "input":
        target = request.inputs[0].parameters[name]
    else:
        target = request.outputs.add(name="OUTPUT0").parameters[name]
    if kind:
        setattr(target, kind, value)
    else:
        target.SetInParent()  # present, but no value in its oneof
    return request


def _string_request(raw0: bytes, shape: tuple[int, ...] = (1, 16)) -> Any:
    request = tpb.ModelInferRequest(model_name="simple_string")
    good = bytes_raw([b"1"] * 16) if shape == (1, 16) else raw0
    for name, raw in (("INPUT0", raw0), ("INPUT1", good)):
        request.inputs.add(name=name, datatype="BYTES", shape=list(shape))
        request.raw_input_contents.append(raw)
    return request


def _two_kinds(contents: Any, index: int) -> None:
    contents.int_contents.extend([1] * 16)
    contents.bytes_contents.append(b"x")


def _typed_shape(shape: list[int]) -> Any:
    request = _typed(lambda c, i: c.int_contents.extend([1] * 16))
    del request.inputs[0].shape[:]
    request.inputs[0].shape.extend(shape)
    return request


def _typed_strings(count: int) -> Any:
    """``simple_string`` in bytes_contents, INPUT0 with ``count`` elements (16 are right)."""
    request = _string_request(GOOD_STRINGS)
    del request.raw_input_contents[:]
    request.inputs[0].contents.bytes_contents.extend([str(i).encode() for i in range(count)])
    request.inputs[1].contents.bytes_contents.extend([b"1"] * 16)
    return request


INVALID = grpc.StatusCode.INVALID_ARGUMENT
GOOD_STRINGS = bytes_raw([str(i).encode() for i in range(16)])

# id -> (request factory, code, pattern the details must match)
CASES: dict[str, tuple[Callable[[], Any], grpc.StatusCode, str]] = {
    "missing input": (_drop_input1, INVALID, r"missing: 'INPUT1'"),
    "unknown input": (_extra_input, INVALID, r"unexpected inference input 'INPUT2'"),
    "duplicate input": (_duplicate_input, INVALID, r"'INPUT0'.*more than once"),
    "duplicate output": (lambda: _outputs("OUTPUT0", "OUTPUT0"), INVALID, r"'OUTPUT0'.*more than once"),
    "unknown output": (lambda: _outputs("OUTPUT0", "OUTPUT9"), INVALID, r"unexpected inference output 'OUTPUT9'"),
    "empty output name": (lambda: _outputs(""), INVALID, r"unexpected inference output ''"),
    "datatype mismatch": (lambda: _input0("FP32"), INVALID, r"'INPUT0'.*'FP32'.*expects 'INT32'"),
    "datatype lowercase": (lambda: _input0("int32"), INVALID, r"unknown data type 'int32'"),
    "unknown datatype": (lambda: _input0("FP33"), INVALID, r"unknown data type 'FP33'"),
    "empty datatype": (lambda: _input0(""), INVALID, r"unknown data type ''"),
    "wrong rank 3": (lambda: _input0(shape=[1, 4, 4]), INVALID, r"unexpected shape for input 'INPUT0'"),
    "wrong rank 1": (lambda: _input0(shape=[16], nbytes=64), INVALID, r"batch-size must be <= 8|unexpected shape"),
    "scalar shape": (lambda: _input0(shape=[], nbytes=4), INVALID, r"'INPUT0'.*batch dimension"),
    "wrong dim": (lambda: _input0(shape=[2, 8]), INVALID, r"unexpected shape for input 'INPUT0'"),
    "negative dim": (lambda: _input0(shape=[-1, 16]), INVALID, r"negative dimension"),
    "negative inner dim": (lambda: _input0(shape=[1, -16]), INVALID, r"negative dimension"),
    "zero batch": (lambda: _input0(shape=[0, 16], nbytes=0), INVALID, r"batch dimension of at least 1"),
    "batch above max": (lambda: _batch(9), INVALID, r"batch-size must be <= 8.*got 9"),
    "batch mismatch": (
        lambda: simple_request(np.zeros((2, 16), np.int32), np.zeros((1, 16), np.int32)),
        INVALID,
        r"'INPUT1' has batch size 1, other inputs 2",
    ),
    "overflow 2**62 x 4": (lambda: _input0(shape=[2**62, 4]), INVALID, r"more elements than int64"),
    "overflow 2**31 cubed": (lambda: _input0(shape=[2**31, 2**31, 2**31]), INVALID, r"more elements than int64"),
    "overflow int64 max x 2": (lambda: _input0(shape=[2**63 - 1, 2]), INVALID, r"more elements than int64"),
    "zero dim next to huge dims": (
        lambda: _input0(shape=[0, 2**62, 2**62], nbytes=0),
        INVALID,
        r"'INPUT0' shape \[0, 4611686018427387904, 4611686018427387904\]",
    ),
    "huge count, few bytes": (lambda: _input0(shape=[2**40, 16]), INVALID, r"bytes of raw data"),
    "raw too short": (lambda: _input0(nbytes=63), INVALID, r"'INPUT0'.*63 bytes.*needs 64"),
    "raw too long": (lambda: _input0(nbytes=65), INVALID, r"'INPUT0'.*65 bytes.*needs 64"),
    "raw empty": (lambda: _input0(nbytes=0), INVALID, r"'INPUT0'.*0 bytes.*needs 64"),
    "raw and typed mixed": (_mixed, INVALID, r"'INPUT0'.*cannot be mixed"),
    "more raw entries": (lambda: _raw_entries(3), INVALID, r"expected 2 raw_input_contents entries.*got 3"),
    "fewer raw entries": (lambda: _raw_entries(1), INVALID, r"expected 2 raw_input_contents entries.*got 1"),
    "raw without inputs": (
        lambda: tpb.ModelInferRequest(model_name="simple", raw_input_contents=[b"x"]),
        INVALID,
        r"expected 0 raw_input_contents entries.*got 1",
    ),
    "no inputs": (lambda: tpb.ModelInferRequest(model_name="simple"), INVALID, r"missing: 'INPUT0', 'INPUT1'"),
    "typed of the wrong kind": (
        lambda: _typed(lambda c, i: c.fp32_contents.extend([1.0] * 16)),
        INVALID,
        r"'INPUT0'.*must use int_contents, not fp32_contents",
    ),
    "typed of two kinds": (
        lambda: _typed(_two_kinds),
        INVALID,
        r"must use int_contents, not bytes_contents",
    ),
    "typed too few": (
        lambda: _typed(lambda c, i: c.int_contents.extend([1] * 15)),
        INVALID,
        r"'INPUT0'.*15 values in int_contents.*\(16\)",
    ),
    "typed too many": (
        lambda: _typed(lambda c, i: c.int_contents.extend([1] * 17)),
        INVALID,
        r"'INPUT0'.*17 values in int_contents",
    ),
    "typed empty": (lambda: _typed(lambda c, i: c.SetInParent()), INVALID, r"'INPUT0'.*0 values in int_contents"),
    "typed with overflowing shape": (
        lambda: _typed_shape([2**62, 4]),
        INVALID,
        r"'INPUT0' shape.*more elements than int64",
    ),
    "typed with negative shape": (lambda: _typed_shape([1, -16]), INVALID, r"'INPUT0' shape.*negative dimension"),
    "no data": (_no_data, INVALID, r"input 'INPUT0' has no data"),
    "BYTES prefix past buffer": (
        lambda: _string_request(struct.pack("<I", 1000) + b"a" * 100),
        INVALID,
        r"'INPUT0'.*BYTES element 0 runs past the end",
    ),
    "BYTES huge prefix": (
        lambda: _string_request(struct.pack("<I", 0xFFFFFFFF) + b"a" * 100),
        INVALID,
        r"runs past the end",
    ),
    "BYTES truncated prefix": (
        lambda: _string_request(bytes_raw([b"1"] * 15) + b"\x01\x00"),
        INVALID,
        r"'INPUT0'.*BYTES data ends before element 15 of 16",
    ),
    "BYTES leftover": (lambda: _string_request(GOOD_STRINGS + b"xx"), INVALID, r"2 bytes left over after 16"),
    "BYTES empty raw": (lambda: _string_request(b""), INVALID, r"'INPUT0'.*BYTES"),
    "BYTES huge shape, few bytes": (
        lambda: _string_request(bytes_raw([b"1"]), shape=(1, 2**40)),
        INVALID,
        r"'INPUT0'.*BYTES",
    ),
    "BYTES typed count": (
        lambda: _typed_strings(15),
        INVALID,
        r"'INPUT0'.*15 elements given for shape \[1, 16\]",
    ),
    "priority as string": (
        lambda: _param("priority", "string_param", "high"),
        INVALID,
        r"parameter 'priority' must be int, got str",
    ),
    "priority as bool": (
        lambda: _param("priority", "bool_param", True),
        INVALID,
        r"parameter 'priority' must be int, got bool",
    ),
    "priority negative": (
        lambda: _param("priority", "int64_param", -1),
        INVALID,
        r"parameter 'priority' must not be negative",
    ),
    "timeout negative": (
        lambda: _param("timeout", "int64_param", -5),
        INVALID,
        r"parameter 'timeout' must not be negative, got -5",
    ),
    "timeout as double": (
        lambda: _param("timeout", "double_param", 1.5),
        INVALID,
        r"parameter 'timeout' must be int, got float",
    ),
    "binary_data_output as int": (
        lambda: _param("binary_data_output", "int64_param", 1),
        INVALID,
        r"parameter 'binary_data_output' must be bool, got int",
    ),
    "sequence_start as string": (
        lambda: _param("sequence_start", "string_param", "yes"),
        INVALID,
        r"parameter 'sequence_start' must be bool",
    ),
    "sequence_id as double": (
        lambda: _param("sequence_id", "double_param", 1.0),
        INVALID,
        r"parameter 'sequence_id' must be int or str",
    ),
    "request parameter without value": (lambda: _param("foo", "", None), INVALID, r"parameter 'foo' has no value"),
    "input parameter without value": (
        lambda: _param("foo", "", None, "input"),
        INVALID,
        r"parameter 'foo' has no value",
    ),
    "output parameter without value": (
        lambda: _param("binary_data", "", None, "output"),
        INVALID,
        r"parameter 'binary_data' has no value",
    ),
}


BAD_REQUESTS = [pytest.param(*case, id=name) for name, case in CASES.items()]


@pytest.mark.parametrize(("make", "code", "pattern"), BAD_REQUESTS)
def test_bad_infer_request(client: Client, make: Callable[[], Any], code: grpc.StatusCode, pattern: str) -> None:
    expect_error(lambda: client.infer(make()), code, pattern)


def test_typed_contents_are_accepted_when_right(client: Client) -> None:
    """The control for the typed-contents cases: the same request, well formed, is answered."""
    request = _typed(lambda c, i: c.int_contents.extend((A if i == 0 else B).reshape(-1).tolist()))
    out = outputs_of(client.infer(request))
    np.testing.assert_array_equal(out["OUTPUT0"], A + B)
    response = client.infer(_typed_strings(16))
    assert [o.name for o in response.outputs] == ["OUTPUT0", "OUTPUT1"]


def test_long_names_in_messages_are_bounded(client: Client) -> None:
    """Names the client chose are echoed shortened, never whole."""
    long = "X" * 100_000
    request = simple_request()
    request.inputs.add(name=long, datatype="INT32", shape=[1, 16])
    request.raw_input_contents.append(A.tobytes())
    expect_error(lambda: client.infer(request), INVALID, r"unexpected inference input 'X+'", MAX_NAME_DETAILS)
    expect_error(lambda: client.infer(_outputs(long)), INVALID, r"unexpected inference output 'X+'", MAX_NAME_DETAILS)
    expect_error(lambda: client.infer(_input0("F" * 100_000)), INVALID, r"unknown data type 'F+'", MAX_NAME_DETAILS)
    expect_error(lambda: client.infer(_param(long, "", None)), INVALID, r"has no value", MAX_NAME_DETAILS)


def test_bytes_shape_far_beyond_the_data_allocates_nothing(client: Client, example_server: ServerProcess) -> None:
    """40 bytes claiming 2**27 BYTES elements: refused without allocating for 2**27 elements (1 GiB
    of object pointers), which would let a handful of tiny requests exhaust the server's memory."""
    assert example_server.proc is not None
    peak_before = _peak_rss_kib(example_server.proc.pid)
    expect_error(lambda: client.infer(_string_request(bytes_raw([b"1"]), shape=(1, 2**27))), INVALID, r"'INPUT0'")
    grown = _peak_rss_kib(example_server.proc.pid) - peak_before
    assert grown < 256 * 1024, f"peak RSS grew by {grown // 1024} MiB for a 40-byte request"


def test_stream_reports_bad_requests_and_stays_open(client: Client) -> None:
    stream = client.channel.stream_stream(
        f"{SERVICE}/ModelStreamInfer",
        request_serializer=_serialize,
        response_deserializer=tpb.ModelStreamInferResponse.FromString,
    )
    bad = _input0("FP33")
    bad.id = "bad"
    good = simple_request()
    good.id = "good"
    answers = {}
    for answer in stream(iter([bad, good]), timeout=30):
        answers[answer.infer_response.id] = answer
    assert set(answers) == {"bad", "good"}
    assert "unknown data type 'FP33'" in answers["bad"].error_message
    assert_clean(answers["bad"].error_message)
    assert not answers["good"].error_message
    np.testing.assert_array_equal(outputs_of(answers["good"].infer_response)["OUTPUT0"], A + B)


# ---------------------------------------------------------------------- typed values out of range


def _typed_one(model: str, datatype: str, field: str, values: list[Any]) -> Any:
    request = tpb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="INPUT0", datatype=datatype, shape=[1, len(values)])
    getattr(tensor.contents, field).extend(values)
    return request


def test_int8_typed_value_out_of_range(custom: Client) -> None:
    expect_error(
        lambda: custom.infer(_typed_one("int8_echo", "INT8", "int_contents", [1000, 0, 0, 0])),
        INVALID,
        r"'INPUT0'.*do not fit INT8",
    )
    expect_error(
        lambda: custom.infer(_typed_one("int8_echo", "INT8", "int_contents", [-129, 0, 0, 0])),
        INVALID,
        r"do not fit INT8",
    )
    expect_error(
        lambda: custom.infer(_typed_one("uint8_echo", "UINT8", "uint_contents", [256, 0, 0, 0])),
        INVALID,
        r"do not fit UINT8",
    )
    # the boundaries themselves are fine
    response = custom.infer(_typed_one("int8_echo", "INT8", "int_contents", [127, -128, 0, 1]))
    assert np.frombuffer(response.raw_output_contents[0], np.int8).tolist() == [127, -128, 0, 1]


def test_fp16_has_no_typed_contents(custom: Client) -> None:
    for field, value in (("fp32_contents", 1.0), ("int_contents", 1), ("bytes_contents", b"1")):
        request = _typed_one("fp16_echo", "FP16", field, [value] * 4)
        expect_error(
            functools.partial(custom.infer, request),
            INVALID,
            r"'INPUT0'.*FP16 data must be sent in raw_input_contents",
        )
    request = tpb.ModelInferRequest(model_name="fp16_echo")
    request.inputs.add(name="INPUT0", datatype="FP16", shape=[1, 4])
    request.raw_input_contents.append(np.array([[1, 2, 3, 4]], np.float16).tobytes())
    response = custom.infer(request)
    assert np.frombuffer(response.raw_output_contents[0], np.float16).tolist() == [1, 2, 3, 4]


# ------------------------------------------------------------------ models that fail or lie


def _fp32_request(model: str) -> Any:
    request = tpb.ModelInferRequest(model_name=model)
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    return request


def test_model_that_raises(custom: Client) -> None:
    details = expect_error(
        lambda: custom.infer(_fp32_request("raises")),
        grpc.StatusCode.INTERNAL,
        r"model 'raises' failed: ValueError: weights missing at .*weights\.bin",
    )
    assert "\n" not in details
    check_simple(custom)


def test_model_returning_wrong_dtype(custom: Client) -> None:
    expect_error(
        lambda: custom.infer(_fp32_request("wrong_dtype")),
        grpc.StatusCode.INTERNAL,
        r"model 'wrong_dtype' failed: output 'OUTPUT0' has dtype float64, config expects FP32",
    )
    check_simple(custom)


LIES = [
    (0, r"output 'OUTPUT0' is missing"),
    (1, r"output 'OUTPUT0' has shape \[1, 2\], config expects \[1, 4\]"),
    (2, r"returned a list, expected a dict of numpy arrays"),
    (3, r"unexpected output\(s\) \['EXTRA'\]"),
    (4, r"output 'OUTPUT0' is a list, not a numpy array"),
    (5, r"output 'OUTPUT0' has shape \[2, 4\], config expects \[1, 4\]"),
]


@pytest.mark.parametrize(("how", "pattern"), LIES, ids=[str(n) for n, _ in LIES])
def test_model_returning_what_its_config_does_not_allow(custom: Client, how: int, pattern: str) -> None:
    request = tpb.ModelInferRequest(model_name="liar")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.full((1, 4), how, np.float32).tobytes())
    expect_error(lambda: custom.infer(request), grpc.StatusCode.INTERNAL, r"model 'liar' failed: " + pattern)


# --------------------------------------------------- model code that exits (SystemExit) or crashes

EXITS_IN_EXECUTE = """
    class Model:
        def execute(self, inputs):
            raise SystemExit(3)
    """
EXITS_IN_INITIALIZE = """
    class Model:
        def initialize(self, context):
            raise SystemExit(4)

        def execute(self, inputs):
            return {"OUTPUT0": inputs["INPUT0"]}
    """
EXITS_ON_IMPORT = """
    import sys

    sys.exit(5)
    """


@pytest.fixture
def crash_server(tmp_path: Path, logs_dir: Path) -> Iterator[ServerProcess]:
    """A fresh explicit-mode server per test: a model that takes the server down must not take the
    other tests with it."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(EXAMPLES / "simple", repo / "simple")
    args = ("--model-control-mode", "explicit", "--load-model", "simple", "--exit-timeout-secs", "5")
    server = ServerProcess(repo, *args, log_dir=logs_dir).start()
    yield server
    try:
        server.stop(timeout=20)  # kills it when it does not stop
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server did not stop within 20s of SIGTERM (an instance is wedged):\n{server.log()[-2000:]}")


@pytest.mark.parametrize("mode", ["event_loop", "thread", "process"])
def test_model_raising_system_exit_in_execute(crash_server: ServerProcess, mode: str) -> None:
    extra = f'parameters: {{ key: "execution_mode" value: {{ string_value: "{mode}" }} }}'
    write_model(
        crash_server.repository, "exits", tensor_config("exits", "TYPE_FP32", "4", extra=extra), EXITS_IN_EXECUTE
    )
    c = Client(crash_server.url)
    try:
        _load(c, "exits")
        for _ in range(2):  # the instance must not be left wedged either
            expect_error(
                lambda: c.infer(_fp32_request("exits"), timeout=10),
                grpc.StatusCode.INTERNAL,
                r"model 'exits' failed: SystemExit",
            )
        assert crash_server.is_running(), crash_server.log()[-3000:]
        check_simple(c)
    finally:
        c.close()


@pytest.mark.parametrize(
    ("source", "pattern"),
    [(EXITS_IN_INITIALIZE, r"'exits'.*SystemExit: 4"), (EXITS_ON_IMPORT, r"'exits'.*SystemExit: 5")],
    ids=["initialize", "import"],
)
def test_model_raising_system_exit_while_loading(crash_server: ServerProcess, source: str, pattern: str) -> None:
    write_model(crash_server.repository, "exits", tensor_config("exits", "TYPE_FP32", "4"), source)
    c = Client(crash_server.url)
    try:
        with pytest.raises(grpc.RpcError) as info:
            _load(c, "exits")
        error: Any = info.value
        assert error.code() == grpc.StatusCode.INTERNAL, error  # as for any other exception (init_fails)
        assert re.search(pattern, error.details()), error.details()
        assert_clean(error.details())
        assert crash_server.is_running(), crash_server.log()[-3000:]
        check_simple(c)
    finally:
        c.close()


# -------------------------------------------------------- clients that go away (cancel, deadline)


def _slow_request(value: int) -> Any:
    request = tpb.ModelInferRequest(model_name="slow", id=str(value))
    request.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 1])
    request.raw_input_contents.append(np.array([[value]], np.int32).tobytes())
    return request


def _slow_value(response: Any) -> int:
    return int(np.frombuffer(response.raw_output_contents[0], np.int32)[0])


def _slow_stats(client: Client) -> Any:
    stats = client.method("ModelStatistics", tpb.ModelStatisticsResponse)(
        tpb.ModelStatisticsRequest(name="slow"), timeout=10
    )
    assert len(stats.model_stats) == 1
    return stats.model_stats[0].inference_stats


def _wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_cancelled_and_deadline_exceeded_leave_nothing_behind(custom: Client, custom_server: ServerProcess) -> None:
    infer = custom.method("ModelInfer", tpb.ModelInferResponse)
    before = _slow_stats(custom)
    successes = 0
    abandoned = 0

    # a deadline far too short to be met, and one that expires while the model sleeps
    for timeout in (0.0001, 0.2):
        with pytest.raises(grpc.RpcError) as info:
            infer(_slow_request(1), timeout=timeout)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
        abandoned += 1

    # one request runs, three wait behind it; one waiting and the running one are cancelled
    running_one = infer.future(_slow_request(10), timeout=30)
    time.sleep(0.1)
    mates = [infer.future(_slow_request(v), timeout=30) for v in (11, 12)]
    victim = infer.future(_slow_request(13), timeout=30)
    time.sleep(0.1)
    for future, value in ((victim, 13), (running_one, 10)):
        if future.cancel():  # False only if it was answered already (a very slow machine)
            abandoned += 1
            assert future.cancelled()
            with pytest.raises(grpc.FutureCancelledError):
                future.result()
        else:
            assert _slow_value(future.result()) == value
            successes += 1
    assert [_slow_value(m.result()) for m in mates] == [11, 12]  # batch-mates unaffected
    successes += 2

    # the server stays live and answers new requests, all of them, with the right values
    assert custom_server.is_running()
    futures = [infer.future(_slow_request(v), timeout=30) for v in range(20, 28)]
    assert [_slow_value(f.result()) for f in futures] == list(range(20, 28))
    successes += 8

    # statistics settle: every success counted once, failures only for the abandoned requests
    def settled() -> bool:
        stats = _slow_stats(custom)
        done = stats.success.count - before.success.count
        failed = stats.fail.count - before.fail.count
        return bool(done == successes and failed <= abandoned)

    assert _wait_for(settled), _slow_stats(custom)
    after = _slow_stats(custom)
    # nothing left queued: one more request is answered and counted at once
    assert _slow_value(infer(_slow_request(99), timeout=30)) == 99
    assert _slow_stats(custom).success.count == after.success.count + 1
    check_simple(custom)


def test_cancel_many_queued_requests(custom: Client) -> None:
    """Cancelling a burst of queued requests leaves the queue empty for the next ones."""
    infer = custom.method("ModelInfer", tpb.ModelInferResponse)
    futures = [infer.future(_slow_request(v), timeout=60) for v in range(30)]
    time.sleep(0.1)
    for future in futures:
        future.cancel()
    with ThreadPoolExecutor(4) as pool:
        values = list(pool.map(lambda v: _slow_value(infer(_slow_request(v), timeout=60)), range(100, 104)))
    assert values == [100, 101, 102, 103]


# ------------------------------------------------------------------------ transport-level abuse


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\xff" * 16, id="garbage"),
        pytest.param(b"\x0a\x05sim", id="truncated-string"),
        pytest.param(b"\x0a\x02\xc3\x28", id="invalid-utf8-name"),
        pytest.param(b"\x2a\xff\xff\xff\xff\x0f", id="huge-length"),
        pytest.param(b"\x08" + b"\xff" * 11, id="bad-varint"),
        pytest.param(b"\x07", id="wire-type-7"),
    ],
)
def test_undecodable_protobuf(client: Client, payload: bytes) -> None:
    raw_infer = client.method("ModelInfer", tpb.ModelInferResponse, raw=True)
    with pytest.raises(grpc.RpcError) as info:
        raw_infer(payload, timeout=10)
    error: Any = info.value
    assert error.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT), error
    assert_clean(error.details() or "unparsable")


def test_unknown_method(client: Client) -> None:
    call = client.channel.unary_unary(f"{SERVICE}/NoSuchMethod")
    with pytest.raises(grpc.RpcError) as info:
        call(b"", timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]


def test_oversized_message(logs_dir: Path) -> None:
    with running(EXAMPLES, "--grpc-max-message-bytes", "100000", log_dir=logs_dir) as small:
        c = Client(small.url)
        try:
            big = simple_request()
            big.raw_input_contents[0] = bytes(200_000)
            expect_error(lambda: c.infer(big), grpc.StatusCode.RESOURCE_EXHAUSTED, r"larger than max")
            # just under the limit: it arrives, and is refused for what it is
            under = simple_request()
            under.raw_input_contents[0] = bytes(90_000)
            expect_error(lambda: c.infer(under), INVALID, r"90000 bytes of raw data")
            assert small.is_running()
            check_simple(c)
        finally:
            c.close()
        assert small.is_running(), small.log()[-3000:]


# ------------------------------------------------------------- the repository API, explicit mode


OUTSIDE_CONFIG = tensor_config("", "TYPE_INT32", "1").replace('name: ""', "")


@pytest.fixture(scope="module")
def explicit_server(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("explicit")
    repo = base / "repo"
    shutil.copytree(EXAMPLES, repo)
    outside = write_model(base, "outside_model", OUTSIDE_CONFIG, ECHO)
    (repo / "evil").symlink_to(outside, target_is_directory=True)
    with running(repo, "--model-control-mode", "explicit", "--load-model", "*", log_dir=logs_dir) as server:
        yield server
        assert server.is_running(), server.log()[-3000:]


@pytest.fixture(scope="module")
def explicit(explicit_server: ServerProcess) -> Iterator[Client]:
    c = Client(explicit_server.url)
    yield c
    check_simple(c)
    c.close()


def _load(client: Client, name: str, **parameters: Any) -> Any:
    request = tpb.RepositoryModelLoadRequest(model_name=name)
    for key, (kind, value) in parameters.items():
        setattr(request.parameters[key], kind, value)
    return client.method("RepositoryModelLoad", tpb.RepositoryModelLoadResponse)(request, timeout=60)


def _unload(client: Client, name: str) -> Any:
    request = tpb.RepositoryModelUnloadRequest(model_name=name)
    return client.method("RepositoryModelUnload", tpb.RepositoryModelUnloadResponse)(request, timeout=60)


def _index(client: Client) -> dict[str, list[Any]]:
    response = client.method("RepositoryIndex", tpb.RepositoryIndexResponse)(tpb.RepositoryIndexRequest(), timeout=10)
    rows: dict[str, list[Any]] = {}
    for row in response.models:
        rows.setdefault(row.name, []).append(row)
    return rows


@pytest.mark.parametrize(
    "name",
    ["../x", "..", ".", "a/b", "simple/../simple", "/etc", "/tmp/outside_model", "sim\x00ple", ".hidden", "a\\b"],
    ids=repr,
)
def test_load_path_like_names_refused(explicit: Client, name: str) -> None:
    expect_error(lambda: _load(explicit, name), INVALID, r"invalid model name", MAX_NAME_DETAILS)
    expect_error(lambda: _unload(explicit, name), INVALID, r"invalid model name", MAX_NAME_DETAILS)


def test_load_absolute_path_of_a_real_model_refused(explicit: Client, explicit_server: ServerProcess) -> None:
    outside = explicit_server.repository.parent / "outside_model"
    details = expect_error(lambda: _load(explicit, str(outside)), INVALID, r"invalid model name", 10_000)
    assert len(details) < MAX_NAME_DETAILS


def test_load_long_and_empty_names(explicit: Client) -> None:
    expect_error(lambda: _load(explicit, "a" * 10_000), INVALID, r"invalid model name", MAX_NAME_DETAILS)
    expect_error(lambda: _load(explicit, ""), INVALID, r"invalid model name")
    expect_error(lambda: _load(explicit, "no_such_model"), grpc.StatusCode.NOT_FOUND, r"'no_such_model'.*not in")
    expect_error(lambda: _unload(explicit, "no_such_model"), grpc.StatusCode.NOT_FOUND, r"'no_such_model'.*not in")


def test_symlink_leading_outside_is_neither_scanned_nor_loaded(explicit: Client) -> None:
    assert "evil" not in _index(explicit)  # the scan at start skipped it
    expect_error(lambda: _load(explicit, "evil"), INVALID, r"'evil' leads outside the model repository")
    assert "evil" not in _index(explicit)
    ready = explicit.method("ModelReady", tpb.ModelReadyResponse)(tpb.ModelReadyRequest(name="evil"), timeout=10)
    assert not ready.ready
    request = tpb.ModelInferRequest(model_name="evil")
    request.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 1])
    request.raw_input_contents.append(np.zeros((1, 1), np.int32).tobytes())
    expect_error(lambda: explicit.infer(request), grpc.StatusCode.NOT_FOUND, r"unknown model.*'evil'")


def test_load_parameters_unimplemented(explicit: Client) -> None:
    config = '{"name": "simple", "backend": "python", "max_batch_size": 8}'
    expect_error(
        lambda: _load(explicit, "simple", config=("string_param", config)),
        grpc.StatusCode.UNIMPLEMENTED,
        r"load parameters",
    )
    expect_error(
        lambda: _load(explicit, "simple", **{"file:1/model.py": ("bytes_param", b"import os")}),
        grpc.StatusCode.UNIMPLEMENTED,
        r"load parameters",
    )
    check_simple(explicit)


def test_unknown_repository_name(explicit: Client) -> None:
    request = tpb.RepositoryModelLoadRequest(repository_name="other", model_name="simple")
    expect_error(
        lambda: explicit.method("RepositoryModelLoad", tpb.RepositoryModelLoadResponse)(request, timeout=10),
        INVALID,
        r"unknown model repository 'other'",
    )


BROKEN_CONFIGS = {
    "broken_mbs": ("max_batch_size: -1", r"broken_mbs/config\.pbtxt: field 'max_batch_size': must be >= 0"),
    "broken_dims": (
        'input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ -7 ] } ]',
        r"broken_dims/config\.pbtxt: field 'input\[0\]\.dims'",
    ),
    "broken_syntax": ("max_batch_size: [[[", r"broken_syntax/config\.pbtxt: cannot parse"),
}


@pytest.mark.parametrize("name", list(BROKEN_CONFIGS))
def test_load_broken_config(explicit: Client, explicit_server: ServerProcess, name: str) -> None:
    line, pattern = BROKEN_CONFIGS[name]
    config = tensor_config(name, "TYPE_INT32", "1")
    if line.startswith("max_batch_size"):
        config = config.replace("max_batch_size: 8", line)
    else:
        config = re.sub(r"input \[.*\]\n", line + "\n", config)
    write_model(explicit_server.repository, name, config, ECHO)
    with pytest.raises(grpc.RpcError) as info:
        _load(explicit, name)
    error: Any = info.value
    assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAVAILABLE), error
    assert re.search(pattern, error.details()), error.details()
    assert_clean(error.details())
    rows = _index(explicit)[name]
    assert [(r.state, bool(re.search(pattern, r.reason))) for r in rows] == [("UNAVAILABLE", True)], rows
    assert not LEAKS.search(rows[0].reason), rows[0].reason
    check_simple(explicit)


INIT_FAILS = """
    class Model:
        def initialize(self, context):
            raise RuntimeError("no weights for this model")

        def execute(self, inputs):
            return {"OUTPUT0": inputs["INPUT0"]}
    """
IMPORT_FAILS = """
    raise ImportError("module numpyy is missing")
    """
SYNTAX_ERROR = """
    class Model:
        def execute(self, inputs)
            return inputs
    """
NO_MODEL_CLASS = """
    class NotAModel:
        pass
    """


@pytest.mark.parametrize(
    ("name", "source", "code", "pattern"),
    [
        ("init_fails", INIT_FAILS, grpc.StatusCode.INTERNAL, r"'init_fails'.*RuntimeError: no weights for this model"),
        ("import_fails", IMPORT_FAILS, grpc.StatusCode.INTERNAL, r"'import_fails'.*module numpyy is missing"),
        ("syntax_error", SYNTAX_ERROR, INVALID, r"'syntax_error'.*model\.py line 3: syntax error"),
        ("no_model_class", NO_MODEL_CLASS, INVALID, r"'no_model_class'.*defines no class 'Model'"),
    ],
)
def test_load_model_whose_code_fails(
    explicit: Client, explicit_server: ServerProcess, name: str, source: str, code: grpc.StatusCode, pattern: str
) -> None:
    write_model(explicit_server.repository, name, tensor_config(name, "TYPE_INT32", "1"), source)
    expect_error(lambda: _load(explicit, name), code, pattern)
    rows = _index(explicit)[name]
    assert [r.state for r in rows] == ["UNAVAILABLE"], rows
    assert re.search(pattern, rows[0].reason), rows[0].reason
    assert not LEAKS.search(rows[0].reason), rows[0].reason
    request = tpb.ModelInferRequest(model_name=name)
    request.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 1])
    request.raw_input_contents.append(np.zeros((1, 1), np.int32).tobytes())
    expect_error(lambda: explicit.infer(request), grpc.StatusCode.UNAVAILABLE, rf"'{name}'.*not ready")
    check_simple(explicit)


def test_reload_with_broken_config_keeps_serving(explicit: Client, explicit_server: ServerProcess) -> None:
    """A model that serves, then gets a broken config and a load call: the old version keeps answering."""
    repo = explicit_server.repository
    shutil.copytree(repo / "simple", repo / "simple_copy")
    config = repo / "simple_copy" / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "simple"', 'name: "simple_copy"'))
    _load(explicit, "simple_copy")
    check_simple_named = simple_request(model="simple_copy")
    assert outputs_of(explicit.infer(check_simple_named))["OUTPUT0"].tolist() == (A + B).tolist()
    config.write_text(config.read_text().replace("max_batch_size: 8", "max_batch_size: -8"))
    expect_error(lambda: _load(explicit, "simple_copy"), INVALID, r"simple_copy/config\.pbtxt.*max_batch_size")
    assert outputs_of(explicit.infer(check_simple_named))["OUTPUT0"].tolist() == (A + B).tolist()


# ------------------------------------------------------------------------------------------ memory


def test_memory_after_thousands_of_bad_requests(client: Client, example_server: ServerProcess) -> None:
    assert example_server.proc is not None
    pid = example_server.proc.pid
    makers = [case[0] for case in CASES.values()]
    big = simple_request()
    big.raw_input_contents[0] = bytes(256 * 1024)  # a large body with the wrong length
    bad = [make() for make in makers] + [big, simple_request(model="x" * 5000), simple_request(version="7")]
    raw_infer = client.method("ModelInfer", tpb.ModelInferResponse, raw=True)
    garbage = [b"\xff" * 64, b"\x0a\x02\xc3\x28"]

    def hammer(count: int) -> None:
        for i in range(count):
            if i % 25 == 0:
                with pytest.raises(grpc.RpcError):
                    raw_infer(garbage[i % 2], timeout=30)
                continue
            with pytest.raises(grpc.RpcError) as info:
                client.infer(bad[i % len(bad)])
            assert info.value.code() != grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]

    hammer(300)  # warm-up: caches, arenas and lazily built state
    check_simple(client)
    before = rss_kib(pid)
    hammer(3000)
    check_simple(client)
    grown = rss_kib(pid) - before
    assert grown < 20 * 1024, f"RSS grew by {grown} KiB after 3000 bad requests"
