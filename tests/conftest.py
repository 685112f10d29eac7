from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serverproc import EXAMPLES, ServerProcess, running


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="session")
def example_server(logs_dir: Path) -> Iterator[ServerProcess]:
    """One server on the bundled example repository (control mode none) for read-mostly tests."""
    with running(EXAMPLES, log_dir=logs_dir) as server:
        yield server
        assert server.is_running(), server.log()


@pytest.fixture
def grpc_url(example_server: ServerProcess) -> str:
    return example_server.url
