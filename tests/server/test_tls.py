"""TLS on the gRPC (both front ends) and HTTP listeners, with real clients: tritonclient (gRPC and
HTTP), curl, Python's ssl module on raw sockets; certificates made by the openssl command.
Mutual TLS, clean refusals of plaintext-to-TLS and TLS-to-plaintext, the handshake timeout, ALPN,
and certificates reloaded without a restart (SIGHUP, file changes, broken files)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from server.cli import build_parser
from tests.adversary import Watch, descriptors
from tests.serverproc import EXAMPLES, ROOT, ServerProcess, wait_until
from tests.tls_certs import Pair, make_ca, make_leaf

FRONTENDS = ["native", "grpcio"]
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # and an empty SETTINGS


@dataclass(frozen=True)
class Certs:
    ca: Pair
    server: Pair
    client: Pair
    ca2: Pair  # a second authority: the certificate a reload brings, and a client it did not sign
    server2: Pair
    stranger: Pair  # a client certificate from ca2


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    folder = tmp_path_factory.mktemp("certs")
    ca, ca2 = make_ca(folder, "ca1"), make_ca(folder, "ca2")
    return Certs(
        ca,
        make_leaf(folder, "server1", ca),
        make_leaf(folder, "client1", ca, "client"),
        ca2,
        make_leaf(folder, "server2", ca2),
        make_leaf(folder, "stranger", ca2, "client"),
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("repo")
    shutil.copytree(EXAMPLES / "identity_fp32", folder / "identity_fp32")
    return folder


class TlsServer(ServerProcess):
    """A server whose start-up probe speaks TLS on the gRPC port when it must."""

    def __init__(self, repository: Path, *args: str, log_dir: Path, creds: grpc.ChannelCredentials | None) -> None:
        super().__init__(repository, *args, log_dir=log_dir)
        self.creds = creds

    def _call(self, method: str, timeout: float = 2.0) -> bytes | None:
        if self.creds is None:
            return super()._call(method, timeout)
        with grpc.secure_channel(self.url, self.creds) as channel:
            rpc = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
            try:
                return rpc(b"", timeout=timeout)  # type: ignore[no-any-return]
            except grpc.RpcError:
                return None


def _creds(certs: Certs, mutual: bool = False) -> grpc.ChannelCredentials:
    client = (certs.client.key.read_bytes(), certs.client.cert.read_bytes()) if mutual else (None, None)
    return grpc.ssl_channel_credentials(certs.ca.cert.read_bytes(), *client)


@contextlib.contextmanager
def serving(repo: Path, log_dir: Path, *args: str, creds: grpc.ChannelCredentials | None) -> Iterator[TlsServer]:
    server = TlsServer(repo, *args, log_dir=log_dir, creds=creds)
    server.start()
    try:
        yield server
        assert server.is_running(), server.log()
    finally:
        server.stop()


def _tls_args(listener: str, pair: Pair, root: Path | None = None) -> list[str]:
    flag = f"--{listener}-use-ssl-mutual" if root else f"--{listener}-use-ssl=true"
    args = [flag, f"--{listener}-server-cert", str(pair.cert), f"--{listener}-server-key", str(pair.key)]
    return [*args, f"--{listener}-root-cert", str(root)] if root else args


@pytest.fixture(scope="module", params=FRONTENDS)
def tls_server(request: pytest.FixtureRequest, repo: Path, certs: Certs, logs_dir: Path) -> Iterator[TlsServer]:
    """gRPC and HTTP over TLS (server certificate only), a 1 s handshake timeout."""
    args = [*_tls_args("grpc", certs.server), *_tls_args("http", certs.server)]
    args += ["--grpc-frontend", request.param, "--tls-handshake-timeout-secs", "1", "--tls-reload-poll-secs", "0"]
    with serving(repo, logs_dir, *args, creds=_creds(certs)) as server:
        yield server


@pytest.fixture(scope="module", params=FRONTENDS)
def mutual_server(request: pytest.FixtureRequest, repo: Path, certs: Certs, logs_dir: Path) -> Iterator[TlsServer]:
    args = [*_tls_args("grpc", certs.server, certs.ca.cert), *_tls_args("http", certs.server, certs.ca.cert)]
    args += ["--grpc-frontend", request.param]
    with serving(repo, logs_dir, *args, creds=_creds(certs, mutual=True)) as server:
        yield server


@pytest.fixture(scope="module")
def plain_server(repo: Path, logs_dir: Path) -> Iterator[TlsServer]:
    with serving(repo, logs_dir, creds=None) as server:
        yield server


# ---- clients


def grpc_infer(url: str, **tls: Any) -> None:
    """One identity_fp32 call with tritonclient.grpc; the answer must be the input."""
    data = np.random.default_rng().random((1, 16), dtype=np.float32)
    with grpcclient.InferenceServerClient(url, **tls) as client:
        tensor = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
        tensor.set_data_from_numpy(data)
        answer = client.infer("identity_fp32", [tensor], client_timeout=30).as_numpy("OUTPUT0")
    np.testing.assert_array_equal(answer, data)


def http_infer(url: str, ssl_options: dict[str, str]) -> None:
    import gevent.ssl  # type: ignore[import-untyped]

    data = np.random.default_rng().random((1, 16), dtype=np.float32)
    client = httpclient.InferenceServerClient(
        url, ssl=True, ssl_options=ssl_options, ssl_context_factory=gevent.ssl.create_default_context
    )
    try:
        tensor = httpclient.InferInput("INPUT0", [1, 16], "FP32")
        tensor.set_data_from_numpy(data, binary_data=True)
        answer = client.infer("identity_fp32", [tensor]).as_numpy("OUTPUT0")
    finally:
        client.close()
    np.testing.assert_array_equal(answer, data)


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    command = ["curl", "-sS", "--max-time", "30", "-o", "/dev/null", "-w", "%{http_code}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def tls_socket(port: int, cas: list[Path], alpn: list[str] | None = None) -> ssl.SSLSocket:
    """A TLS connection that verifies the server against ``cas`` (and its name, localhost)."""
    context = ssl.create_default_context()
    context.load_verify_locations(cadata="".join(ca.read_text() for ca in cas))
    if alpn:
        context.set_alpn_protocols(alpn)
    raw = socket.create_connection(("127.0.0.1", port), timeout=20)
    try:
        return context.wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()
        raise


def peer_serial(port: int, certs: Certs) -> int:
    """The serial number of the certificate a new connection to ``port`` is shown."""
    with tls_socket(port, [certs.ca.cert, certs.ca2.cert]) as conn:
        return int(conn.getpeercert()["serialNumber"], 16)  # type: ignore[index,arg-type]


def read_to_end(conn: socket.socket, limit: int = 1 << 16) -> bytes:
    """What the server sends until it closes (a reset counts as closed); a hang fails the test
    through the socket's timeout."""
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while len(received) < limit and (chunk := conn.recv(4096)):
            received += chunk
    return received


# ---- TLS with real clients


def test_grpc_over_tls_with_tritonclient(tls_server: TlsServer, certs: Certs) -> None:
    grpc_infer(tls_server.url, ssl=True, root_certificates=str(certs.ca.cert))


def test_http_over_tls_with_tritonclient_and_curl(tls_server: TlsServer, certs: Certs) -> None:
    http_infer(tls_server.http_url, {"ca_certs": str(certs.ca.cert)})
    ready = curl("--cacert", str(certs.ca.cert), f"https://{tls_server.http_url}/v2/health/ready")
    assert ready.stdout == "200", ready.stderr
    body = '{"inputs":[{"name":"INPUT0","shape":[1,16],"datatype":"FP32","data":[' + ",".join(["1.5"] * 16) + "]}]}"
    infer = subprocess.run(
        ["curl", "-sS", "--max-time", "30", "--cacert", str(certs.ca.cert), "-d", body,
         f"https://{tls_server.http_url}/v2/models/identity_fp32/infer"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert '"data":[1.5,1.5' in infer.stdout.replace(" ", ""), infer.stdout
    unknown_ca = curl(f"https://{tls_server.http_url}/v2/health/ready")  # the system's CAs only
    assert unknown_ca.returncode != 0


def test_alpn(tls_server: TlsServer, certs: Certs) -> None:
    grpc_port, http_port = tls_server.grpc_port, tls_server.http_port
    with tls_socket(grpc_port, [certs.ca.cert], ["h2", "http/1.1"]) as conn:
        assert conn.selected_alpn_protocol() == "h2"
        assert conn.version() in ("TLSv1.2", "TLSv1.3")
    with tls_socket(http_port, [certs.ca.cert], ["h2", "http/1.1"]) as conn:
        assert conn.selected_alpn_protocol() == "http/1.1"
    # a client that offers only HTTP/1.1 to the gRPC port: no protocol agreed; its request is not served
    with tls_socket(grpc_port, [certs.ca.cert], ["http/1.1"]) as conn:
        assert conn.selected_alpn_protocol() is None
        conn.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"HTTP/1.1 200" not in read_to_end(conn)


def test_http2_over_tls_without_alpn(tls_server: TlsServer, certs: Certs) -> None:
    """A TLS client that negotiated no protocol but speaks HTTP/2 (prior knowledge): the native
    front end serves it (a documented leniency), grpcio's C core closes the connection."""
    with tls_socket(tls_server.grpc_port, [certs.ca.cert]) as conn:
        assert conn.selected_alpn_protocol() is None
        conn.sendall(PREFACE)
        answer = read_to_end(conn, limit=9)
    if "native" in tls_server.args:
        assert answer[3:4] == b"\x04", answer  # the server's SETTINGS frame
    else:
        assert answer == b""


# ---- refusals


def test_plaintext_client_to_tls_port_is_refused(tls_server: TlsServer, certs: Certs) -> None:
    with pytest.raises(InferenceServerException):
        grpc_infer(tls_server.url)  # an insecure channel
    http_get = b"GET /v2 HTTP/1.1\r\nHost: x\r\n\r\n"
    with Watch(tls_server, probe=False) as watch:
        for port, hello in ((tls_server.grpc_port, PREFACE), (tls_server.http_port, http_get)):
            with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
                conn.sendall(hello)
                answer = read_to_end(conn)
            assert answer[:1] in (b"", b"\x15"), answer[:64]  # closed, at most after a TLS alert record
    watch.check()
    grpc_infer(tls_server.url, ssl=True, root_certificates=str(certs.ca.cert))  # still serving


def test_tls_client_to_plaintext_port_is_refused(plain_server: TlsServer, certs: Certs) -> None:
    for port in (plain_server.grpc_port, plain_server.http_port):
        with pytest.raises((ssl.SSLError, ConnectionResetError, ConnectionAbortedError)):
            tls_socket(port, [certs.ca.cert], ["h2", "http/1.1"]).close()
    with pytest.raises(InferenceServerException):
        grpc_infer(plain_server.url, ssl=True, root_certificates=str(certs.ca.cert))
    grpc_infer(plain_server.url)  # still serving


def test_handshake_timeout_closes_a_silent_client(tls_server: TlsServer, certs: Certs) -> None:
    """Connections that never start their handshake are cut after --tls-handshake-timeout-secs (1 s)."""
    ports = [tls_server.grpc_port, tls_server.http_port]
    conns = [socket.create_connection(("127.0.0.1", port), timeout=30) for port in ports]  # the timeout is 1 s
    started = time.monotonic()
    try:
        for conn in conns:
            assert read_to_end(conn) == b""
    finally:
        for conn in conns:
            conn.close()
    assert time.monotonic() - started >= 0.9  # closed by the timeout, not at once
    grpc_infer(tls_server.url, ssl=True, root_certificates=str(certs.ca.cert))


def test_silent_and_stalled_handshakes_are_all_cut(tls_server: TlsServer, certs: Certs) -> None:
    """200 connections that never finish a handshake (half send nothing, half the first bytes of
    a ClientHello): each is closed by the handshake timeout, the server's descriptors come back,
    its loop is never stalled, and TLS clients are served meanwhile."""
    assert tls_server.proc is not None
    pid = tls_server.proc.pid
    before = descriptors(pid)
    ports = [tls_server.grpc_port, tls_server.http_port]
    with Watch(tls_server, probe=False) as watch:
        conns = [socket.create_connection(("127.0.0.1", ports[i % 2]), timeout=30) for i in range(200)]
        try:
            for conn in conns[::2]:
                conn.sendall(b"\x16\x03\x01\x02\x00\x01")  # a TLS record header and a ClientHello's start
            grpc_infer(tls_server.url, ssl=True, root_certificates=str(certs.ca.cert))
            for conn in conns:
                assert read_to_end(conn)[:1] in (b"", b"\x15")
        finally:
            for conn in conns:
                conn.close()
    watch.check()
    wait_until(lambda: descriptors(pid) <= before + 2, "the server's descriptors released")


# ---- mutual TLS


def test_mutual_tls_grpc(mutual_server: TlsServer, certs: Certs) -> None:
    ca, client = str(certs.ca.cert), certs.client
    grpc_infer(mutual_server.url, ssl=True, root_certificates=ca, private_key=str(client.key),
               certificate_chain=str(client.cert))  # fmt: skip
    with pytest.raises(InferenceServerException):
        grpc_infer(mutual_server.url, ssl=True, root_certificates=ca)  # no client certificate
    with pytest.raises(InferenceServerException):  # a certificate the root does not vouch for
        grpc_infer(mutual_server.url, ssl=True, root_certificates=ca, private_key=str(certs.stranger.key),
                   certificate_chain=str(certs.stranger.cert))  # fmt: skip
    grpc_infer(mutual_server.url, ssl=True, root_certificates=ca, private_key=str(client.key),
               certificate_chain=str(client.cert))  # fmt: skip


def test_mutual_tls_http(mutual_server: TlsServer, certs: Certs) -> None:
    url = f"https://{mutual_server.http_url}/v2/health/ready"
    ca, client, stranger = certs.ca.cert, certs.client, certs.stranger
    assert curl("--cacert", str(ca), "--cert", str(client.cert), "--key", str(client.key), url).stdout == "200"
    assert curl("--cacert", str(ca), url).returncode != 0
    assert curl("--cacert", str(ca), "--cert", str(stranger.cert), "--key", str(stranger.key), url).returncode != 0
    http_infer(mutual_server.http_url, {"ca_certs": str(ca), "certfile": str(client.cert), "keyfile": str(client.key)})


# ---- reload without a restart


def _install(folder: Path, pair: Pair) -> None:
    """Puts ``pair`` where the server reads its certificate, as a secret update would: whole files
    swapped in (rename), the key first."""
    for source, name in ((pair.key, "server.key"), (pair.cert, "server.pem")):
        shutil.copyfile(source, folder / f".{name}.new")
        os.replace(folder / f".{name}.new", folder / name)


def _reload_server(repo: Path, logs_dir: Path, folder: Path, certs: Certs, frontend: str, poll: str) -> TlsServer:
    _install(folder, certs.server)
    live = Pair(folder / "server.pem", folder / "server.key", 0)
    args = [*_tls_args("grpc", live), *_tls_args("http", live), "--grpc-frontend", frontend]
    server = TlsServer(repo, *args, "--tls-reload-poll-secs", poll, log_dir=logs_dir, creds=_creds(certs))
    server.start()
    return server


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_sighup_reloads_the_certificate(
    frontend: str, repo: Path, certs: Certs, logs_dir: Path, tmp_path: Path
) -> None:
    server = _reload_server(repo, logs_dir, tmp_path, certs, frontend, poll="0")
    try:
        ports = (server.grpc_port, server.http_port)
        assert [peer_serial(p, certs) for p in ports] == [certs.server.serial] * 2
        _install(tmp_path, certs.server2)
        assert [peer_serial(p, certs) for p in ports] == [certs.server.serial] * 2  # no watching: poll is 0
        server.signal(signal.SIGHUP)
        wait_until(lambda: [peer_serial(p, certs) for p in ports] == [certs.server2.serial] * 2, "reloaded")
        grpc_infer(server.url, ssl=True, root_certificates=str(certs.ca2.cert))
        http_infer(server.http_url, {"ca_certs": str(certs.ca2.cert)})
        assert "TLS certificate reloaded (SIGHUP)" in server.log()
        assert server.is_running()
    finally:
        server.stop()


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_changed_files_reload_and_broken_ones_keep_serving(
    frontend: str, repo: Path, certs: Certs, logs_dir: Path, tmp_path: Path
) -> None:
    server = _reload_server(repo, logs_dir, tmp_path, certs, frontend, poll="0.2")
    try:
        (tmp_path / "server.pem").write_text("-----BEGIN CERTIFICATE-----\nnot one\n-----END CERTIFICATE-----\n")
        wait_until(lambda: server.log().count("TLS not reloaded (files changed)") >= 2, "the broken file reported")
        shutil.copyfile(certs.server2.cert, tmp_path / "server.pem")  # a certificate that does not match the key
        wait_until(lambda: server.log().count("TLS not reloaded (files changed)") >= 4, "the mismatch reported")
        assert peer_serial(server.grpc_port, certs) == certs.server.serial
        grpc_infer(server.url, ssl=True, root_certificates=str(certs.ca.cert))  # the old certificate serves
        server.signal(signal.SIGHUP)  # a broken file on SIGHUP: the same
        wait_until(lambda: "TLS not reloaded (SIGHUP)" in server.log(), "SIGHUP with a broken pair reported")
        assert server.is_running()
        _install(tmp_path, certs.server2)
        ports = (server.grpc_port, server.http_port)
        wait_until(lambda: [peer_serial(p, certs) for p in ports] == [certs.server2.serial] * 2, "reloaded")
        grpc_infer(server.url, ssl=True, root_certificates=str(certs.ca2.cert))
        assert "TLS certificate reloaded (files changed)" in server.log()
    finally:
        server.stop()


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_sighup_reloads_the_root_of_client_certificates(
    frontend: str, repo: Path, certs: Certs, logs_dir: Path, tmp_path: Path
) -> None:
    """Mutual TLS: after the root file is replaced (ca1 by ca2) and SIGHUP, new connections need a
    client certificate from the new authority; the one from the old is refused."""
    root = tmp_path / "root.pem"
    shutil.copyfile(certs.ca.cert, root)
    args = [*_tls_args("grpc", certs.server, root), *_tls_args("http", certs.server, root)]
    server = TlsServer(repo, *args, "--grpc-frontend", frontend, "--tls-reload-poll-secs", "0", log_dir=logs_dir,
                       creds=_creds(certs, mutual=True))  # fmt: skip
    server.start()
    ca = str(certs.ca.cert)

    def accepted(client: Pair) -> bool:
        try:
            grpc_infer(server.url, ssl=True, root_certificates=ca, private_key=str(client.key),
                       certificate_chain=str(client.cert))  # fmt: skip
        except InferenceServerException:
            return False
        return True

    def curl_ok(client: Pair) -> bool:
        args = ("--cacert", ca, "--cert", str(client.cert), "--key", str(client.key))
        return curl(*args, f"https://{server.http_url}/v2/health/ready").stdout == "200"

    try:
        assert accepted(certs.client)
        assert not accepted(certs.stranger)
        shutil.copyfile(certs.ca2.cert, tmp_path / ".root.new")
        os.replace(tmp_path / ".root.new", root)
        server.signal(signal.SIGHUP)
        wait_until(lambda: server.log().count("TLS certificate reloaded (SIGHUP)") == 2, "reloaded")
        assert accepted(certs.stranger)
        assert not accepted(certs.client)
        assert curl_ok(certs.stranger)
        assert not curl_ok(certs.client)
    finally:
        server.stop()


# ---- flags


def _serve_fails(*args: str, env: dict[str, str] | None = None) -> str:
    command = [sys.executable, "-m", "server.cli", "serve", "--model-repository", str(EXAMPLES), *args]
    done = subprocess.run(
        command, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 2, done.stderr
    return done.stderr


def test_bad_tls_flags_stop_the_start_with_a_clear_message(certs: Certs, tmp_path: Path) -> None:
    assert "--grpc-use-ssl needs --grpc-server-cert" in _serve_fails("--grpc-use-ssl")
    missing = _serve_fails(*_tls_args("http", Pair(tmp_path / "none.pem", certs.server.key, 0)))
    assert "--http-server-cert" in missing
    assert "No such file" in missing
    mismatch = _serve_fails(*_tls_args("grpc", Pair(certs.server2.cert, certs.server.key, 0)))
    assert "--grpc-server-cert" in mismatch
    assert "the key does not match the certificate" in mismatch
    junk = tmp_path / "junk.pem"
    junk.write_text("junk\n")
    assert "not a PEM certificate" in _serve_fails(*_tls_args("grpc", Pair(junk, certs.server.key, 0)))
    assert "OpenSSL: NO_CERTIFICATE_OR_CRL_FOUND" in _serve_fails(*_tls_args("grpc", certs.server, junk))
    assert "needs --grpc-root-cert" in _serve_fails("--grpc-use-ssl-mutual=1", *_tls_args("grpc", certs.server)[1:])
    assert "CLIPPERD_GRPC_USE_SSL" in _serve_fails(env={"CLIPPERD_GRPC_USE_SSL": "ture"})
    assert "--grpc-use-ssl: expected true or false" in _serve_fails("--grpc-use-ssl=maybe")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], False),
        (["--grpc-use-ssl"], True),
        (["--grpc-use-ssl=true"], True),
        (["--grpc-use-ssl=false"], False),
        (["--grpc-use-ssl=1"], True),
        (["--grpc-use-ssl=0"], False),
        (["--grpc-use-ssl", "false"], False),
        (["--grpc-use-ssl", "--no-grpc-use-ssl"], False),
        (["--no-grpc-use-ssl"], False),
    ],
)
def test_boolean_flags_take_tritons_syntax(argv: list[str], expected: bool) -> None:
    args = build_parser().parse_args(["serve", *argv])
    assert args.grpc_use_ssl is expected
    assert args.allow_metrics is True  # other booleans keep their defaults
    assert args.strict_readiness is True


def test_boolean_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPPERD_HTTP_USE_SSL", "true")
    monkeypatch.setenv("CLIPPERD_ALLOW_METRICS", "0")
    args = build_parser().parse_args(["serve"])
    assert args.http_use_ssl is True
    assert args.allow_metrics is False
    assert build_parser().parse_args(["serve", "--allow-metrics=true"]).allow_metrics is True
