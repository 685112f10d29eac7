"""``clipperd health``: the container's health check. GET /v2/health/ready on this machine's HTTP
port, exit 0 when the server answers 200, 1 otherwise (Docker's HEALTHCHECK reserves 2).

It imports only the standard library and the settings, so that a check every few seconds costs a
fraction of the server's own start-up (the image runs it with no shell)."""

from __future__ import annotations

import argparse
import http.client
import ssl
import sys
from collections.abc import Sequence
from typing import NoReturn

from server.settings import env_default

READY_PATH = "/v2/health/ready"
DEFAULT_TIMEOUT_S = 3.0
MAX_TIMEOUT_S = 60.0  # a health check that waits longer than this is already a failure
UNHEALTHY = 1
WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]"})


class ProbeError(Exception):
    """Why the server is not healthy, in one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(UNHEALTHY, f"{self.prog}: error: {message}\n")


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text[:32]!r}") from None
    if not 0 < value <= MAX_TIMEOUT_S:
        raise argparse.ArgumentTypeError(f"expected more than 0 and at most {MAX_TIMEOUT_S:g} seconds, got {text}")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got {text[:32]!r}")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--http-port", type=_port, default=None, help="the server's HTTP port (default: CLIPPERD_HTTP_PORT, else 8000)"
    )
    parser.add_argument(
        "--timeout",
        type=_timeout,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds to connect and answer (default {DEFAULT_TIMEOUT_S:g}, at most {MAX_TIMEOUT_S:g})",
    )


def target() -> tuple[str, bool]:
    """The address to ask (the server's own HTTP address, loopback where it binds every
    interface) and whether HTTP runs over TLS, both from the server's environment."""
    address = str(env_default("http_address", "")) or str(env_default("host", "0.0.0.0"))
    host = "127.0.0.1" if address in WILDCARDS else address.strip("[]")
    return host, bool(env_default("http_use_ssl", False))


def check(host: str, port: int, timeout_s: float, tls: bool = False) -> None:
    """ProbeError unless GET /v2/health/ready answers 200 within ``timeout_s``."""
    connection: http.client.HTTPConnection
    if tls:
        # a loopback probe of this machine's own server: what it checks is the status, not who answers
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        connection = http.client.HTTPSConnection(host, port, timeout=timeout_s, context=context)
    else:
        connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        connection.request("GET", READY_PATH)
        response = connection.getresponse()
        response.read(4096)
    except (OSError, http.client.HTTPException) as error:
        raise ProbeError(f"{host}:{port}: {type(error).__name__}: {error}"[:300]) from None
    finally:
        connection.close()
    if response.status != 200:
        raise ProbeError(f"{host}:{port}{READY_PATH}: HTTP {response.status} (not ready)")


def main(argv: Sequence[str]) -> int:
    parser = _Parser(prog="clipperd health", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        port = args.http_port if args.http_port is not None else int(env_default("http_port", 8000))
        host, tls = target()
        check(host, port, args.timeout, tls)
    except (ValueError, ProbeError) as error:  # ValueError: a CLIPPERD_* variable that does not parse
        print(f"clipperd health: {error}", file=sys.stderr)
        return UNHEALTHY
    return 0
