"""Test certificates made with the ``openssl`` command (no Python dependency): a CA, server
certificates for 127.0.0.1/localhost, client certificates; each with a serial of its own."""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = clipperd test
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client_ext]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""
_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path
    serial: int


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def _config(folder: Path) -> Path:
    path = folder / "openssl.cnf"
    if not path.exists():
        path.write_text(_CONFIG)
    return path


def make_ca(folder: Path, name: str) -> Pair:
    serial = secrets.randbits(62) + 1
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    _openssl("req", "-x509", *_KEY, "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}",
             "-set_serial", str(serial), "-config", _config(folder), "-extensions", "ca_ext")  # fmt: skip
    return Pair(cert, key, serial)


def make_leaf(folder: Path, name: str, ca: Pair, kind: str = "server") -> Pair:
    """A certificate signed by ``ca``: ``kind`` "server" (127.0.0.1, localhost) or "client"."""
    serial = secrets.randbits(62) + 1
    cert, key, csr = folder / f"{name}.pem", folder / f"{name}.key", folder / f"{name}.csr"
    _openssl("req", "-new", *_KEY, "-keyout", key, "-out", csr, "-subj", f"/CN={name}", "-config", _config(folder))
    _openssl("x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-set_serial", str(serial),
             "-days", "2", "-extfile", _config(folder), "-extensions", f"{kind}_ext", "-out", cert)  # fmt: skip
    return Pair(cert, key, serial)
