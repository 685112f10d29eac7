"""Ports for the servers a benchmark starts."""

from __future__ import annotations

import socket

_GIVEN: set[int] = set()


def free_port() -> int:
    """A port free now and not handed out before by this process: the kernel may give a port it
    just gave again once its socket is closed, and a server told to listen twice on one port
    does not start."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port
    raise RuntimeError("no fresh port in 100 tries")
