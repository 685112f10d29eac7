"""TLS for the gRPC and HTTP listeners (Triton's ``--grpc-use-ssl`` family, the same for HTTP),
with certificates reloaded without a restart.

An asyncio listener takes one ``ssl.SSLContext`` when it is created, so it is given a stable
*front* context whose ``sni_callback`` (which OpenSSL runs at every ClientHello, whether or not the
client sends a server name) hands the handshake the context of the newest certificate. grpcio's
front end asks a certificate-configuration fetcher at every handshake instead. Files are read
again on SIGHUP and when one of them changes (inode, size or mtime, checked every
``--tls-reload-poll-secs``); files that do not load (half written, a key that does not match, not
PEM) leave the previous certificate in service and log an error. Connections already open keep
the certificate they were made with."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from server.settings import Settings

log = logging.getLogger(__name__)

MIN_VERSION = ssl.TLSVersion.TLSv1_2  # RFC 8996: TLS 1.0 and 1.1 are deprecated
ALPN_GRPC = ("h2",)  # gRPC is HTTP/2; RFC 9113 §3.2 names it "h2" over TLS
ALPN_HTTP = ("http/1.1",)  # the REST server speaks HTTP/1.1 only

FileStamps = tuple[tuple[int, int, int, int] | None, ...]  # per file: (device, inode, size, mtime) or None


class TlsError(ValueError):
    """Certificate, key or root files that cannot be used; the message names the flag."""


@dataclass(frozen=True)
class TlsFiles:
    listener: str  # "grpc" or "http": names the flags in messages
    cert: Path
    key: Path
    root: Path | None
    mutual: bool  # clients must present a certificate that chains to ``root``

    def paths(self) -> tuple[Path, ...]:
        return (self.cert, self.key) if self.root is None else (self.cert, self.key, self.root)


def tls_files(settings: Settings, listener: str) -> TlsFiles | None:
    """The files ``--<listener>-*`` name, or None for a plaintext listener; TlsError when the flags
    do not fit together (as Triton, ``--x-use-ssl-mutual`` implies ``--x-use-ssl``)."""
    mutual = bool(getattr(settings, f"{listener}_use_ssl_mutual"))
    if not (getattr(settings, f"{listener}_use_ssl") or mutual):
        return None
    cert, key, root = (str(getattr(settings, f"{listener}_{n}")) for n in ("server_cert", "server_key", "root_cert"))
    if not cert or not key:
        raise TlsError(f"--{listener}-use-ssl needs --{listener}-server-cert and --{listener}-server-key")
    if mutual and not root:
        raise TlsError(f"--{listener}-use-ssl-mutual needs --{listener}-root-cert (the CAs of client certificates)")
    return TlsFiles(listener, Path(cert), Path(key), Path(root) if root else None, mutual)


def check_tls_settings(settings: Settings) -> None:
    """Loads every configured certificate once, so that a mistake stops the start with a clear
    message (TlsError) before any model is loaded."""
    for listener, alpn in (("grpc", ALPN_GRPC), ("http", ALPN_HTTP)):
        files = tls_files(settings, listener)
        if files is not None:
            server_context(files, alpn)
    if settings.tls_reload_poll_secs < 0 or settings.tls_handshake_timeout_secs <= 0:
        raise TlsError("--tls-reload-poll-secs must be >= 0 and --tls-handshake-timeout-secs > 0")


def _encrypted_key() -> bytes:
    # Without a password callback OpenSSL would prompt on the terminal for an encrypted key.
    raise TlsError("the private key is encrypted: give an unencrypted PEM key")


def server_context(files: TlsFiles, alpn: Sequence[str]) -> ssl.SSLContext:
    """A server context of the files: TLS 1.2 or later, ``alpn`` offered, client certificates
    verified against the root file (required when mutual, checked when presented otherwise)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MIN_VERSION
    context.options |= ssl.OP_NO_RENEGOTIATION  # client-initiated renegotiation costs the server CPU (CVE-2011-1473)
    context.set_alpn_protocols(list(alpn))
    flags = f"--{files.listener}-server-cert {files.cert} / --{files.listener}-server-key {files.key}"
    try:
        context.load_cert_chain(files.cert, files.key, password=_encrypted_key)
    except OSError as error:
        raise TlsError(f"{flags}: {_reason(error)}") from None
    except TlsError as error:
        raise TlsError(f"{flags}: {error}") from None
    if files.root is not None:
        try:
            context.load_verify_locations(cafile=files.root)
        except OSError as error:
            raise TlsError(f"--{files.listener}-root-cert {files.root}: {_reason(error)}") from None
        context.verify_mode = ssl.CERT_REQUIRED if files.mutual else ssl.CERT_OPTIONAL
    return context


def _reason(error: OSError) -> str:
    if isinstance(error, ssl.SSLError):
        if error.reason == "KEY_VALUES_MISMATCH":
            return "the key does not match the certificate"
        if "PEM lib" in str(error):  # OpenSSL says no more, nor which of the two files
            return "not a PEM certificate (chain) and an unencrypted PEM key"
        return f"OpenSSL: {error.reason or error}"
    return str(error.strerror or error)  # "No such file or directory"


def _signature(paths: Sequence[Path]) -> FileStamps:
    stats: list[tuple[int, int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)  # follows symbolic links: a Kubernetes secret's ..data swap changes the inode
        except OSError:
            stats.append(None)
        else:
            stats.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(stats)


@dataclass(frozen=True)
class Generation:
    """One loading of the files: the context for the native listeners, the PEM bytes for grpcio."""

    context: ssl.SSLContext
    cert_pem: bytes
    key_pem: bytes
    root_pem: bytes | None
    signature: FileStamps


def load_generation(files: TlsFiles, alpn: Sequence[str]) -> Generation:
    """Reads the files once; TlsError when they do not load or change while being read."""
    before = _signature(files.paths())
    context = server_context(files, alpn)
    try:
        cert, key = files.cert.read_bytes(), files.key.read_bytes()
        root = files.root.read_bytes() if files.root is not None else None
    except OSError as error:
        raise TlsError(f"--{files.listener}-server-cert/-key: {_reason(error)}") from None
    if _signature(files.paths()) != before:
        raise TlsError(f"the {files.listener} certificate files changed while being read")
    return Generation(context, cert, key, root, before)


class ReloadingTls:
    """The TLS state of one listener: the newest loaded generation, the stable front context given
    to an asyncio listener, and grpcio's credentials that follow the same generations."""

    def __init__(self, files: TlsFiles, alpn: Sequence[str]) -> None:
        self.files = files
        self.alpn = tuple(alpn)
        self.current = load_generation(files, alpn)
        self.reloads = 0  # successful reloads since start
        self._tried = self.current.signature
        self._given_grpc: Generation | None = None
        self.front = server_context(files, alpn)
        self.front.sni_callback = self._hand_over

    def _hand_over(self, connection: ssl.SSLObject, server_name: str | None, front: ssl.SSLContext) -> None:
        # OpenSSL then takes the certificate, key and trust store of the newest context.
        connection.context = self.current.context

    def changed(self) -> bool:
        return _signature(self.files.paths()) != self._tried

    def reload(self, why: str) -> bool:
        """Loads the files again; on failure the previous certificate stays and the error is logged."""
        self._tried = _signature(self.files.paths())
        try:
            generation = load_generation(self.files, self.alpn)
        except TlsError as error:
            log.error("%s TLS not reloaded (%s): %s; still serving the previous certificate", self.name, why, error)
            return False
        self.current = generation
        self._tried = generation.signature
        self.reloads += 1
        log.info("%s TLS certificate reloaded (%s): new connections use %s", self.name, why, self.files.cert)
        return True

    @property
    def name(self) -> str:
        return "gRPC" if self.files.listener == "grpc" else "HTTP"

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """grpcio's credentials: at every handshake grpc asks ``_fetch`` whether the files changed."""
        self._given_grpc = self.current
        return grpc.dynamic_ssl_server_credentials(
            _grpc_config(self.current), self._fetch, require_client_authentication=self.files.mutual
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        generation = self.current
        if generation is self._given_grpc:
            return None  # grpc keeps what it has
        self._given_grpc = generation
        return _grpc_config(generation)


def _grpc_config(generation: Generation) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(generation.key_pem, generation.cert_pem)], root_certificates=generation.root_pem
    )


class TlsReloader:
    """Reloads every listener's files on request (SIGHUP) and when they change (a polling task)."""

    def __init__(self, listeners: Sequence[ReloadingTls], poll_secs: float) -> None:
        self.listeners = list(listeners)
        self.poll_secs = poll_secs
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.listeners and self.poll_secs > 0:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    def reload_all(self, why: str) -> None:
        for listener in self.listeners:
            listener.reload(why)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_secs)
            for listener in self.listeners:
                if listener.changed():
                    listener.reload("files changed")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


async def listen(
    factory: Callable[[], asyncio.BaseProtocol],
    host: str,
    port: int,
    context: ssl.SSLContext | None,
    handshake_timeout: float | None,
) -> asyncio.Server:
    """A listener for ``factory``'s connections; with ``context``, over TLS, a handshake not done
    in ``handshake_timeout`` s cut."""
    return await asyncio.get_running_loop().create_server(
        factory,
        host,
        port,
        reuse_address=True,
        ssl=context,
        ssl_handshake_timeout=handshake_timeout if context is not None else None,
    )
