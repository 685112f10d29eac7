from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tritonclient.utils.shared_memory as shm

from tests.serverproc import EXAMPLES, ROOT, ServerProcess, running

# The fast set (`make test-fast`): in-process tests that run in seconds, with no server process,
# no perf_analyzer, no Redis and no root. Every other module is end-to-end (marker ``e2e``); a
# module listed here that starts a server or perf_analyzer fails under `make test-fast`.
FAST = {
    "tests/backends/test_config.py",
    "tests/backends/test_parameters.py",
    "tests/backends/test_pinned.py",
    "tests/backends/test_remote_h2.py",
    "tests/backends/test_remote_settings.py",
    "tests/backends/test_streaming.py",
    "tests/backends/test_bls_bridge.py",
    "tests/backends/test_greenlets.py",
    "tests/backends/test_bls_request.py",
    "tests/schedulers/test_aimd.py",
    "tests/schedulers/test_applications_selection.py",
    "tests/schedulers/test_assembly.py",
    "tests/schedulers/test_rate_limiter.py",
    "tests/schedulers/test_scheduler.py",
    "tests/schedulers/test_sequence_config.py",
    "tests/schedulers/test_warmup_samples.py",
    "tests/server/applications/test_default_store.py",
    "tests/server/core/test_infer_stream.py",
    "tests/server/dashboard/test_feed.py",
    "tests/server/grpc/test_proto_compat.py",
    "tests/server/metrics/test_gpu.py",
    "tests/server/monitoring/test_drift_detection.py",
    "tests/server/monitoring/test_drift_units.py",
    "tests/server/monitoring/test_feedback_monitor.py",
    "tests/server/rest/test_codec_fuzz.py",
    "tests/server/storage/test_listing.py",
    "tests/server/storage/test_location.py",
    "tests/server/tracing/test_settings.py",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.relative_to(ROOT).as_posix() not in FAST:
            item.add_marker(pytest.mark.e2e)


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


Region = tuple[str, Any]  # (key, handle)


@pytest.fixture
def make_region() -> Iterator[Callable[[int], Region]]:
    """POSIX shared-memory objects with unique keys, removed after the test."""
    made: list[Any] = []

    def make(byte_size: int) -> Region:
        key = f"/clipperd_test_{uuid.uuid4().hex[:12]}"
        handle = shm.create_shared_memory_region(key[1:], key, byte_size)
        made.append(handle)
        return key, handle

    yield make
    for handle in made:
        shm.destroy_shared_memory_region(handle)
