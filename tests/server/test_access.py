"""Closed management (server/access.py): the loopback rule, the parsing of Triton's restriction
flags and of the management token, every method and route filed under an API, and real servers on
127.0.0.1 (both gRPC front ends, HTTP) refusing restricted APIs without their header and serving
them with it or with the token. The non-loopback default is tested for real in test_access_netns.py."""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from clipperd_admin import ClipperdAdmin, ServerError
from server import access
from server.access import AccessPolicy, grpc_peer_host, is_loopback, parse_restrictions
from server.applications.manager import ApplicationManager
from server.applications.state import MemoryStore
from server.cli import main
from server.core.dataplane import DataPlane
from server.core.repository import ControlMode, ModelRepository
from server.proto import grpc_service_pb2 as pb
from server.rest.body import BodyLimits
from server.rest.routes import RestApi
from tests.serverproc import EXAMPLES, ServerProcess, running

pytestmark = pytest.mark.timeout(240)

TOKEN = "t0ken-for-the-tests-0123456789abcdef"
RESTRICTED = "model-repository,applications-admin:admin-key=secret"


# ---- the address rule ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("127.255.255.254", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("::ffff:127.9.8.7", True),
        ("unix", True),
        ("10.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("fe80::1", False),
        ("fe80::1%eth0", False),
        ("198.18.0.1", False),
        ("0.0.0.0", False),
        ("::", False),
        ("::127.0.0.1", False),  # IPv4-compatible (deprecated), not mapped: not loopback
        ("128.0.0.1", False),
        ("", False),
        ("localhost", False),  # names are never trusted, only addresses
        ("127.0.0.1.evil", False),
    ],
)
def test_loopback_rule(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("ipv4:127.0.0.1:51234", "127.0.0.1"),
        ("ipv6:[::1]:51234", "::1"),
        ("ipv6:%5B::1%5D:51234", "::1"),  # grpc core percent-encodes the brackets
        ("ipv6:%5B::ffff:127.0.0.1%5D:1", "::ffff:127.0.0.1"),
        ("ipv4:::1:51234", "::1"),  # the native front end labels every TCP peer ipv4
        ("ipv4:10.0.0.1:80", "10.0.0.1"),
        ("unix:/tmp/socket", "unix"),
        ("unknown", ""),
        ("", ""),
    ],
)
def test_grpc_peer_host(peer: str, host: str) -> None:
    assert grpc_peer_host(peer) == host


# ---- parsing ---------------------------------------------------------------------------------


def test_restriction_parsing() -> None:
    parsed = parse_restrictions(
        ["model-repository,shared-memory:Admin-Key=s3cret=with=equals", "inference:k=v"], "--flag"
    )
    assert set(parsed) == {"model-repository", "shared-memory", "inference"}
    assert parsed["shared-memory"].key == "admin-key"  # header names are case-insensitive
    assert parsed["shared-memory"].value == "s3cret=with=equals"  # split at the first '='
    assert parsed["inference"].key == "k"
    assert "s3cret" not in repr(parsed)  # the value never shows in a repr


def test_restriction_pieces_split_at_commas_as_the_environment_gives_them() -> None:
    parsed = parse_restrictions(["model-repository", "statistics:k=v", "health:h=w"], "--flag")
    assert parsed["model-repository"] is parsed["statistics"]
    assert parsed["health"].key == "h"


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("model-repository", "expected <api>"),
        ("model-repository:admin-key", "expected <api>"),
        ("nonsense:k=v", "unknown API 'nonsense'"),
        (":k=v", "unknown API ''"),
        ("logging:k=v", "the logging API is not implemented"),
        ("statistics,logging:k=v", "the logging API is not implemented"),
        ("model-repository:=v", "header name"),
        ("model-repository:bad key=v", "header name"),
        ("model-repository:grpc-timeout=v", "header name"),
        ("model-repository:key-bin=v", "header name"),
        ("model-repository:k=", "header value"),
        ("model-repository:k= padded", "header value"),
        ("model-repository:k=caf\u00e9", "header value"),
    ],
)
def test_bad_restrictions_are_refused(spec: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_restrictions([spec], "--grpc-restricted-protocol")


def test_an_api_in_two_restrictions_is_refused() -> None:
    with pytest.raises(ValueError, match="more than one restriction"):
        parse_restrictions(["model-repository:a=1", "statistics,model-repository:b=2"], "--flag")


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        (["--grpc-restricted-protocol", "logging:k=v"], "logging API is not implemented"),
        (["--http-restricted-api", "model-repository"], "--http-restricted-api: expected"),
        (["--http-restricted-api", "a:k=v", "--http-restricted-api", "a:k=v"], "unknown API 'a'"),
        (["--management-token", "short"], "at least 16"),
        (["--management-token", "has a space in it, sadly"], "without spaces"),
    ],
)
def test_bad_flags_exit_2_with_a_one_line_reason(
    flags: list[str], reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--model-repository", str(EXAMPLES), *flags])
    assert exit_.value.code == 2
    printed = capsys.readouterr().err
    error = printed.strip().splitlines()[-1]
    assert reason in error, error
    if flags[0] == "--management-token":
        assert flags[1] not in printed  # a token is never echoed


# ---- every method and route is filed under an API --------------------------------------------


def test_every_grpc_method_has_an_api() -> None:
    methods = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name
    filed = {m: access.grpc_api(m) for m in methods}
    assert filed["RepositoryIndex"] == filed["RepositoryModelLoad"] == "model-repository"
    assert filed["SystemSharedMemoryRegister"] == filed["CudaSharedMemoryUnregister"] == "shared-memory"
    assert filed["ModelInfer"] == filed["ModelStreamInfer"] == "inference"
    assert {filed["ServerLive"], access.grpc_api("Check")} == {"health"}
    with pytest.raises(ValueError, match="belongs to no API"):
        access.grpc_api("Unheard")


def test_every_http_route_has_an_api(tmp_path: Path) -> None:
    repository = ModelRepository(tmp_path, ControlMode.EXPLICIT, [])
    apps = ApplicationManager(repository, MemoryStore())
    plane = DataPlane(repository, applications=apps)
    api = RestApi(plane, BodyLimits(1 << 20, 1 << 20), applications=apps)  # it files every route, or raises
    filed = {(r.method, r.path): access.http_api(r.path) for r in api.router.routes}
    assert filed[("POST", "/v2/repository/index")] == "model-repository"
    assert filed[("POST", "/v2/systemsharedmemory/region/{name}/register")] == "shared-memory"
    assert filed[("GET", "/v2/models/{model}/versions/{version}/ready")] == "health"
    assert filed[("GET", "/v2/models/{model}/config")] == "model-config"
    assert filed[("GET", "/v2/models/stats")] == "statistics"
    assert filed[("GET", "/v2/models/{model}")] == filed[("GET", "/v2")] == "metadata"
    assert set(filed.values()) <= set(access.APIS)


def test_default_policy_checks_management_only() -> None:
    policy = AccessPolicy()
    assert policy.grpc_rule("ModelInfer") is None  # open to all: the hot path is not wrapped
    assert policy.http_rule("/v2/models/{model}/infer") is None
    assert policy.http_rule("/{app}/predict") is None
    for method in ("RepositoryModelLoad", "SystemSharedMemoryRegister"):
        rule = policy.grpc_rule(method)
        assert rule is not None
        assert rule.denial("127.0.0.1", lambda _: None) is None
        assert rule.denial("::ffff:127.0.0.1", lambda _: None) is None
        reason = rule.denial("10.0.0.1", lambda _: None)
        assert reason is not None
        assert "--allow-remote-management" in reason
    opened = AccessPolicy(allow_remote_management=True)
    assert opened.grpc_rule("RepositoryModelLoad") is None


def test_the_token_opens_management_and_nothing_else() -> None:
    policy = AccessPolicy(token=TOKEN, grpc_restrictions=parse_restrictions(["statistics:k=v"], "--flag"))
    headers = {"authorization": f"bearer {TOKEN}"}  # the scheme in any case
    load = policy.grpc_rule("RepositoryModelLoad")
    assert load is not None
    assert load.denial("10.0.0.1", headers.get) is None
    assert load.denial("10.0.0.1", {"authorization": f"Bearer {TOKEN}x"}.get) is not None
    assert load.denial("10.0.0.1", {"authorization": f"Basic {TOKEN}"}.get) is not None
    stats = policy.grpc_rule("ModelStatistics")
    assert stats is not None
    assert stats.denial("127.0.0.1", headers.get) == "This protocol is restricted, expecting header 'k'"
    assert stats.denial("127.0.0.1", {"triton-grpc-protocol-k": "v"}.get) is None  # Triton's clients' name
    assert stats.denial("10.0.0.1", {"k": "v"}.get) is None


def test_shared_memory_registration_can_be_turned_off() -> None:
    policy = AccessPolicy(allow_shared_memory=False, token=TOKEN, allow_remote_management=True)
    for rule in (
        policy.grpc_rule("SystemSharedMemoryRegister"),
        policy.http_rule("/v2/systemsharedmemory/region/{name}/register"),
    ):
        assert rule is not None
        assert "turned off" in str(rule.denial("127.0.0.1", {"authorization": f"Bearer {TOKEN}"}.get))
    assert policy.grpc_rule("SystemSharedMemoryStatus") is None


# ---- real servers on 127.0.0.1 ------------------------------------------------------------


@pytest.fixture(scope="module", params=["native", "grpcio"])
def restricted_server(request: pytest.FixtureRequest, logs_dir: Path) -> Iterator[ServerProcess]:
    args = (
        *("--grpc-frontend", request.param),
        *("--model-control-mode", "explicit", "--load-model", "identity_fp32"),
        *("--grpc-restricted-protocol", RESTRICTED, "--grpc-restricted-protocol", "statistics:stats-key=s2"),
        *("--http-restricted-api", RESTRICTED),
        *("--management-token", TOKEN),
    )
    with running(EXAMPLES, *args, log_dir=logs_dir) as server:
        yield server
        assert server.is_running(), server.log()


def _grpc_refused(call: Any) -> str:
    with pytest.raises(InferenceServerException) as refused:
        call()
    assert refused.value.status() == "StatusCode.PERMISSION_DENIED", refused.value
    return str(refused.value.message())


def test_grpc_restricted_protocol(restricted_server: ServerProcess) -> None:
    with grpcclient.InferenceServerClient(restricted_server.url) as client:
        message = _grpc_refused(client.get_model_repository_index)
        assert message == "This protocol is restricted, expecting header 'admin-key'"
        _grpc_refused(lambda: client.get_model_repository_index(headers={"admin-key": "wrong"}))
        _grpc_refused(lambda: client.load_model("identity_fp32", headers={"other": "secret"}))
        index = client.get_model_repository_index(headers={"admin-key": "secret"})
        assert "identity_fp32" in [m.name for m in index.models]
        client.get_model_repository_index(headers={"triton-grpc-protocol-admin-key": "secret"})
        client.load_model("identity_fp32", headers={"authorization": f"Bearer {TOKEN}"})
        # a second restriction group, with its own header; the token opens management only
        _grpc_refused(lambda: client.get_inference_statistics("identity_fp32"))
        _grpc_refused(lambda: client.get_inference_statistics("identity_fp32", headers={"admin-key": "secret"}))
        _grpc_refused(lambda: client.get_inference_statistics(headers={"authorization": f"Bearer {TOKEN}"}))
        client.get_inference_statistics("identity_fp32", headers={"stats-key": "s2"})
        # the rest stays open
        assert client.is_server_ready()
        assert client.get_model_metadata("identity_fp32").name == "identity_fp32"
        data = np.arange(16, dtype=np.float32).reshape(1, 16)
        infer_input = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
        infer_input.set_data_from_numpy(data)
        assert np.array_equal(client.infer("identity_fp32", [infer_input]).as_numpy("OUTPUT0"), data)


def _http(
    server: ServerProcess, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None
) -> tuple[int, Any]:
    if body is None and method == "POST":
        body = b"{}"
    request = urllib.request.Request(f"http://{server.http_url}{path}", body, headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            payload = answer.read()
            return answer.status, json.loads(payload) if payload else None
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_http_restricted_api(restricted_server: ServerProcess) -> None:
    status, body = _http(restricted_server, "POST", "/v2/repository/index")
    assert (status, body) == (403, {"error": "This API is restricted, expecting header 'admin-key'"})
    assert _http(restricted_server, "POST", "/v2/repository/index", {"Admin-Key": "wrong"})[0] == 403
    status, rows = _http(restricted_server, "POST", "/v2/repository/index", {"Admin-Key": "secret"})
    assert status == 200
    assert "identity_fp32" in [r["name"] for r in rows]
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert _http(restricted_server, "POST", "/v2/repository/index", bearer)[0] == 200
    assert _http(restricted_server, "GET", "/admin/applications")[0] == 403
    assert _http(restricted_server, "GET", "/admin/applications", bearer) == (200, [])
    # statistics is restricted over gRPC only; health, metadata and inference are open
    assert _http(restricted_server, "GET", "/v2/models/identity_fp32/stats")[0] == 200
    with httpclient.InferenceServerClient(restricted_server.http_url) as client:
        assert client.is_server_live()
        data = np.ones((1, 16), dtype=np.float32)
        infer_input = httpclient.InferInput("INPUT0", [1, 16], "FP32")
        infer_input.set_data_from_numpy(data)
        assert np.array_equal(client.infer("identity_fp32", [infer_input]).as_numpy("OUTPUT0"), data)
        with pytest.raises(InferenceServerException, match="restricted"):
            client.unload_model("identity_fp32")
        client.get_model_repository_index(headers={"admin-key": "secret"})


def test_admin_client_sends_headers_or_the_token(restricted_server: ServerProcess, tmp_path: Path) -> None:
    with pytest.raises(ServerError) as refused:
        ClipperdAdmin(tmp_path, restricted_server.http_url, control_mode="explicit").list_models()
    assert refused.value.status == 403
    with pytest.raises(ServerError) as refused:
        ClipperdAdmin(tmp_path, restricted_server.http_url).applications.list_applications()
    assert refused.value.status == 403
    for credentials in ({"headers": {"admin-key": "secret"}}, {"token": TOKEN}):
        admin = ClipperdAdmin(tmp_path, restricted_server.http_url, control_mode="explicit", **credentials)
        assert "identity_fp32" in [m.name for m in admin.list_models()]
        assert admin.applications.list_applications() == []


def _stream_outcome(client: grpcclient.InferenceServerClient, headers: dict[str, str] | None = None) -> Any:
    """The first answer of a ModelStreamInfer call with one request: an InferResult or the error."""
    answers: queue.Queue[Any] = queue.Queue()
    client.start_stream(lambda result, error: answers.put(error or result), headers=headers)
    try:
        # a refusal may end the stream before the request is sent: the callback has the status
        with contextlib.suppress(InferenceServerException):
            client.async_stream_infer("identity_fp32", [_grpc_input()])
        return answers.get(timeout=30)
    finally:
        client.stop_stream()


def _grpc_input() -> grpcclient.InferInput:
    infer_input = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    infer_input.set_data_from_numpy(np.ones((1, 16), dtype=np.float32))
    return infer_input


@pytest.mark.parametrize("frontend", ["native", "grpcio"])
def test_restricted_inference_registration_off_and_metrics_host(
    frontend: str, logs_dir: Path, make_region: Any
) -> None:
    """Inference restricted (the unary and the streaming call, HTTP's fast path), shared-memory
    registration off for every client, and the metrics port on its own address."""
    key, _ = make_region(64)
    args = (
        *("--grpc-frontend", frontend, "--model-control-mode", "explicit", "--load-model", "identity_fp32"),
        *("--grpc-restricted-protocol", "inference:infer-key=v1", "--http-restricted-api", "inference:infer-key=v1"),
        *("--no-allow-shared-memory", "--metrics-host", "127.0.0.2"),
    )
    with running(EXAMPLES, *args, log_dir=logs_dir) as server:
        with grpcclient.InferenceServerClient(server.url) as client:
            _grpc_refused(lambda: client.infer("identity_fp32", [_grpc_input()]))
            client.infer("identity_fp32", [_grpc_input()], headers={"infer-key": "v1"})
            refused = _stream_outcome(client)
            assert isinstance(refused, InferenceServerException), refused
            assert refused.status() == "StatusCode.PERMISSION_DENIED"
            answered = _stream_outcome(client, {"triton-grpc-protocol-infer-key": "v1"})
            assert answered.as_numpy("OUTPUT0").shape == (1, 16)
            message = _grpc_refused(lambda: client.register_system_shared_memory("r", key, 64))
            assert "turned off" in message
            assert list(client.get_system_shared_memory_status().regions) == []
        infer = "/v2/models/identity_fp32/infer"
        body = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": [1] * 16}]})
        assert _http(server, "POST", infer, body=body.encode())[0] == 403
        assert _http(server, "POST", infer, {"infer-key": "v1"}, body.encode())[0] == 200
        register = json.dumps({"key": key, "byte_size": 64}).encode()
        status, answer = _http(server, "POST", "/v2/systemsharedmemory/region/r/register", body=register)
        assert status == 403
        assert "turned off" in answer["error"]
        with urllib.request.urlopen(f"http://127.0.0.2:{server.metrics_port}/metrics", timeout=30) as metrics:
            assert metrics.status == 200
        with pytest.raises(urllib.error.URLError):  # not on --host's address
            urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30)


def test_no_token_or_body_in_the_log(logs_dir: Path) -> None:
    """At DEBUG, a token, a restricted header's value and request bodies with a marker, sent to
    answered and refused calls alike, never reach the server's log."""
    marker, wrong = "MARKER-7f3a9c-in-a-body", "WRONG-TOKEN-5e1d2b-not-it"
    args = (
        *("--log-level", "DEBUG", "--model-control-mode", "explicit", "--load-model", "identity_fp32"),
        *("--management-token", TOKEN, "--http-restricted-api", "statistics:k=hidden-v4l"),
    )
    with running(EXAMPLES, *args, log_dir=logs_dir) as server:
        with grpcclient.InferenceServerClient(server.url) as client:
            client.get_model_repository_index(headers={"authorization": f"Bearer {TOKEN}", "x-note": marker})
            with pytest.raises(InferenceServerException):
                client.load_model(marker, headers={"authorization": f"Bearer {wrong}"})
            infer_input = grpcclient.InferInput("INPUT0", [1, 1], "BYTES")
            infer_input.set_data_from_numpy(np.array([[marker.encode()]], dtype=object))
            with pytest.raises(InferenceServerException):
                client.infer("identity_fp32", [infer_input], headers={"x-note": marker})
        for path, body in (
            ("/v2/repository/index", marker.encode()),  # not JSON
            ("/v2/repository/models/x/load", json.dumps({"parameters": {"config": marker}}).encode()),
            ("/v2/models/identity_fp32/infer", json.dumps({"inputs": [{"name": marker}]}).encode()),
            ("/v2/models/no_such_model/infer", marker.encode()),
        ):
            headers = {"Authorization": f"Bearer {TOKEN}", "k": "hidden-v4l", "X-Note": marker}
            request = urllib.request.Request(f"http://{server.http_url}{path}", body, headers, method="POST")
            with pytest.raises(urllib.error.HTTPError):
                urllib.request.urlopen(request, timeout=30)
        assert _http(server, "GET", "/v2/models/stats", {"k": "hidden-v4l"})[0] == 200
        assert _http(server, "GET", "/v2/models/stats", {"k": marker, "Authorization": f"Bearer {TOKEN}"})[0] == 403
        with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as raw:
            raw.sendall(f"POST /{marker} HTTP/1.1\r\nX-Note: {marker}\x01\r\n\r\n".encode())
            assert raw.recv(4096).startswith(b"HTTP/1.1 400")
    log = server.log()
    # the level was on, and refusals were logged (without what they carried)
    assert "refused a statistics request from 127.0.0.1" in log
    assert "rejected HTTP request" in log
    for secret in (TOKEN, wrong, marker, "hidden-v4l"):
        assert secret not in log, f"{secret!r} is in the server's log"
