"""Triton's GPU families on a real server's /metrics: absent without a GPU, with nothing logged
at error level; present and plausible where NVML sees a GPU (skipped elsewhere)."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.server.dashboard.repo import dashboard_repository
from tests.server.metrics.test_gpu import GPU_FAMILIES, nvml_sees_a_gpu
from tests.serverproc import ServerProcess, running, wait_until

pytestmark = pytest.mark.timeout(120)
HAS_GPU = nvml_sees_a_gpu()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repository = dashboard_repository(tmp_path_factory.mktemp("gpu") / "models")
    with running(repository, "--metrics-interval-ms", "200", log_dir=tmp_path_factory.mktemp("logs")) as server:
        yield server


def scrape(server: ServerProcess) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    return {f.name: [(s.labels, s.value) for s in f.samples] for f in text_string_to_metric_families(text)}


def error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if re.search(r"\b(ERROR|CRITICAL)\b|Traceback", line)]


@pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU: the families are there (the test below)")
def test_without_a_gpu_the_families_are_absent_and_nothing_is_logged_as_an_error(server: ServerProcess) -> None:
    families = scrape(server)
    assert "nv_cpu_utilization" in families  # the scrape is a full one
    assert not GPU_FAMILIES & set(families)
    assert not [name for name in families if name.startswith("nv_gpu")]
    log = server.log()
    assert "GPU metrics off" in log
    assert error_lines(log) == []


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU and its driver (NVML); this machine has none")
def test_on_a_gpu_the_families_are_there_and_plausible(server: ServerProcess) -> None:
    wait_until(lambda: set(scrape(server)) >= GPU_FAMILIES, "the GPU families after the first reading")
    families = scrape(server)
    uuids = {labels["gpu_uuid"] for labels, _ in families["nv_gpu_memory_total_bytes"]}
    assert uuids
    assert all(u.startswith("GPU-") for u in uuids)
    for name in GPU_FAMILIES:
        assert {labels["gpu_uuid"] for labels, _ in families[name]} <= uuids, name
    value = {name: {labels["gpu_uuid"]: v for labels, v in families[name]} for name in GPU_FAMILIES}
    for uuid in uuids:
        assert 0.0 <= value["nv_gpu_utilization"][uuid] <= 1.0
        assert 2**30 <= value["nv_gpu_memory_total_bytes"][uuid] <= 2**40
        assert 0 < value["nv_gpu_memory_used_bytes"][uuid] <= value["nv_gpu_memory_total_bytes"][uuid]
        assert 1.0 < value["nv_gpu_power_usage"][uuid] <= value["nv_gpu_power_limit"][uuid] * 1.5
        assert 20.0 <= value["nv_gpu_power_limit"][uuid] <= 2000.0
    first = value["nv_energy_consumption"]
    wait_until(lambda: all(v > first[u] for u, v in scrape_energy(server).items()), "energy grows", timeout_s=60)
    with urllib.request.urlopen(f"http://{server.http_url}/v2/dashboard", timeout=10) as response:
        gpus = json.loads(response.read())["gpus"]
    assert {g["uuid"] for g in gpus} == uuids
    assert error_lines(server.log()) == []


def scrape_energy(server: ServerProcess) -> dict[str, float]:
    return {labels["gpu_uuid"]: v for labels, v in scrape(server)["nv_energy_consumption"]}
