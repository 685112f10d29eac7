"""A real redis-server (Debian's, which `make test` installs) on 127.0.0.1 for the tests that
share application state through Redis: started on a free port, keeping nothing on disk."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.serverproc import free_port, wait_until

REDIS_SERVER = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin:/usr/sbin")


def start_redis(port: int, folder: Path) -> subprocess.Popen[bytes]:
    """A redis-server on 127.0.0.1:``port`` that keeps nothing on disk."""
    assert REDIS_SERVER is not None
    args = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    return subprocess.Popen([*args, "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


@contextlib.contextmanager
def redis_running(folder: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """(its URL, its process) once it answers PING; stopped afterwards."""
    import redis

    assert REDIS_SERVER is not None
    port = free_port()
    proc = start_redis(port, folder)
    try:
        client = redis.Redis(port=port)
        wait_until(lambda: pings(client), "redis-server answers", timeout_s=10)
        client.close()
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
