"""NVIDIA perf_analyzer, the real binary, against the example server over gRPC and HTTP (binary
and JSON tensors, and with ``--shared-memory system``): it must run to the end (exit 0), measure
a throughput, and read the server's own statistics."""

from __future__ import annotations

import csv
import re
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as grpcclient

from tests.serverproc import ServerProcess, perf_analyzer

pytestmark = pytest.mark.timeout(180)

PA_TIMEOUT_S = 90


def server_stats(url: str, model: str) -> Any:
    with grpcclient.InferenceServerClient(url) as client:
        (stats,) = client.get_inference_statistics(model).model_stats
    return stats


PROTOCOLS = {
    "grpc": ["-i", "grpc"],
    "http-binary": ["-i", "http"],
    "http-json": ["-i", "http", "--input-tensor-format", "json", "--output-tensor-format", "json"],
}


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
@pytest.mark.parametrize("model", ["identity_fp32", "mlp_torch"])
def test_perf_analyzer(example_server: ServerProcess, tmp_path: Path, model: str, protocol: str) -> None:
    binary = perf_analyzer()
    out = tmp_path / "out.csv"
    before = server_stats(example_server.url, model)
    url = example_server.url if protocol == "grpc" else example_server.http_url
    cmd = [
        str(binary),
        "-m",
        model,
        *PROTOCOLS[protocol],
        "-u",
        url,
        "--concurrency-range",
        "1:4:3",
        "--measurement-interval",
        "1500",
        "--stability-percentage",
        "50",
        "--max-trials",
        "10",
        "-f",
        str(out),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=PA_TIMEOUT_S, check=False)
    report = f"perf_analyzer exited {run.returncode}\nstdout:\n{run.stdout[-4000:]}\nstderr:\n{run.stderr[-4000:]}"
    assert run.returncode == 0, report
    after = server_stats(example_server.url, model)

    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["Concurrency"]) for r in rows) == [1, 4], report  # rows come sorted by throughput
    for row in rows:
        assert float(row["Inferences/Second"]) > 0, row
        assert "Server Compute Infer" in row, row  # perf_analyzer read the statistics extension

    # every request perf_analyzer saw answered was counted by the server, none failed
    client_counts = [int(n) for n in re.findall(r"Client:\s*\n\s*Request count: (\d+)", run.stdout)]
    server_counts = [int(n) for n in re.findall(r"Successful request count: (\d+)", run.stdout)]
    assert len(client_counts) == 2, report
    assert len(server_counts) == 2, report  # the "Server:" part comes from ModelStatistics
    assert all(n > 0 for n in client_counts + server_counts), report
    sent = after.inference_stats.success.count - before.inference_stats.success.count
    assert sent >= sum(client_counts)
    assert sent >= sum(server_counts)
    assert after.inference_stats.fail.count == before.inference_stats.fail.count
    assert after.inference_count - before.inference_count == sent  # batch size 1 each
    assert 1 <= after.execution_count - before.execution_count <= sent


class RegionWatcher:
    """Polls the server's system shared memory status while perf_analyzer runs: the regions it
    registered show that its tensors really went through shared memory."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> RegionWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _poll(self) -> None:
        with grpcclient.InferenceServerClient(self.url) as client:
            while not self._stop.wait(0.2):
                self.seen.update(client.get_system_shared_memory_status().regions)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("model", ["identity_fp32", "mlp_torch"])
def test_perf_analyzer_system_shared_memory(example_server: ServerProcess, model: str, protocol: str) -> None:
    """``perf_analyzer --shared-memory system``: inputs and outputs in regions it registers, reads
    and writes; it must run to the end, every request succeed, and it must unregister cleanly."""
    binary = perf_analyzer()
    url = example_server.url if protocol == "grpc" else example_server.http_url
    before = server_stats(example_server.url, model)
    cmd = [
        str(binary),
        "-m",
        model,
        "-i",
        protocol,
        "-u",
        url,
        "--shared-memory",
        "system",
        "--concurrency-range",
        "2",
        "--measurement-interval",
        "1000",
        "--stability-percentage",
        "100",  # a short run on a shared machine: completing is the point here
        "--max-trials",
        "10",
    ]
    with RegionWatcher(example_server.url) as watcher:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=PA_TIMEOUT_S, check=False)
    report = f"perf_analyzer exited {run.returncode}\nstdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-3000:]}"
    assert run.returncode == 0, report
    assert "Unable to" not in run.stderr, report  # its clean-up (unregister, unmap) went through
    assert len(watcher.seen) >= 2, (watcher.seen, report)  # an input region and an output region at least
    with grpcclient.InferenceServerClient(example_server.url) as client:
        assert not client.get_system_shared_memory_status().regions  # it unregistered them all
    after = server_stats(example_server.url, model)
    (client_count,) = (int(n) for n in re.findall(r"Client:\s*\n\s*Request count: (\d+)", run.stdout))
    assert client_count > 0, report
    assert after.inference_stats.success.count - before.inference_stats.success.count >= client_count
    assert after.inference_stats.fail.count == before.inference_stats.fail.count
