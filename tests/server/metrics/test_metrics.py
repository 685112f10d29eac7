"""Prometheus metrics on the metrics port: scraped before and after a known set of requests (real
server, real tritonclient clients), the counters and durations must move by exactly what was sent
and agree with the statistics endpoint; plus the endpoint's own behaviour and the parts that can
be checked without a server (the CPU figures from /proc files, the histogram's buckets, the
failure reasons)."""

from __future__ import annotations

import asyncio
import queue
import shutil
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from backends.common.errors import (
    Cancelled,
    DeadlineExceeded,
    InvalidArgument,
    ModelExecutionError,
    ResourceExhausted,
    Unavailable,
)
from schedulers.stats import LATENCY_BUCKETS_NS, FailureReason, ModelStats, failure_reason
from server.metrics.exporter import CpuMetrics
from tests.serverproc import EXAMPLES, ServerProcess, running

pytestmark = pytest.mark.timeout(120)

# A model that fails on negative inputs (a BACKEND failure) and, given 999, holds its instance
# thread until the file "release" appears in its version folder (to cancel a request mid-way).
PICKY_MODEL = """
import time
import numpy as np

class Model:
    def initialize(self, context):
        self.release = context.version_path / "release"

    def execute(self, inputs):
        x = inputs["INPUT0"]
        if (x < 0).any():
            raise ValueError("negative input")
        if (x == 999).any():
            end = time.monotonic() + 60
            while not self.release.exists() and time.monotonic() < end:
                time.sleep(0.01)
        return {"OUTPUT0": x}
"""

PICKY_CONFIG = """
name: "picky"
backend: "python"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] } ]
parameters { key: "execution_mode" value: { string_value: "thread" } }
"""

DURATIONS = {
    "nv_inference_request_duration_us": "success",
    "nv_inference_queue_duration_us": "queue",
    "nv_inference_compute_input_duration_us": "compute_input",
    "nv_inference_compute_infer_duration_us": "compute_infer",
    "nv_inference_compute_output_duration_us": "compute_output",
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# ----------------------------------------------------------------------------------------- helpers


def scrape(url: str, accept: str = "") -> tuple[str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode(), response.headers["Content-Type"]


def samples(url: str) -> Samples:
    """Every sample by (name, labels); the parser calls counter samples ``<name>_total``, which
    the wire does not (test_triton_names_help_and_types checks the wire)."""
    text, _ = scrape(url)
    return {
        (s.name.removesuffix("_total"), frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: Samples, name: str, model: str, **labels: str) -> float:
    return metrics[(name, frozenset({"model": model, "version": "1", **labels}.items()))]


def delta(before: Samples, after: Samples, name: str, model: str, **labels: str) -> float:
    return value(after, name, model, **labels) - value(before, name, model, **labels)


def statistics(server: ServerProcess, model: str) -> dict[str, Any]:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        rows = client.get_inference_statistics(model)["model_stats"]
    finally:
        client.close()
    assert len(rows) == 1
    return rows[0]  # type: ignore[no-any-return]


def fp32_input(array: np.ndarray, module: Any) -> Any:
    tensor = module.InferInput("INPUT0", list(array.shape), "FP32")
    tensor.set_data_from_numpy(array.astype(np.float32))
    return tensor


def wait_for(check: Callable[[], bool], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("metrics-repo")
    shutil.copytree(EXAMPLES / "identity_fp32", repo / "identity_fp32")
    (repo / "picky" / "1").mkdir(parents=True)
    (repo / "picky" / "config.pbtxt").write_text(PICKY_CONFIG)
    (repo / "picky" / "1" / "model.py").write_text(PICKY_MODEL)
    with running(repo, log_dir=logs_dir) as proc:
        yield proc
        assert proc.is_running(), proc.log()


# ------------------------------------------------------------------------------- the exact deltas


def send_known_requests(server: ServerProcess) -> None:
    """identity_fp32: 5 gRPC requests of batch 1 and 2 HTTP requests of batch 3 succeed, 3
    requests of the wrong shape fail validation; picky: 2 succeed, 2 fail in the model."""
    grpc = grpcclient.InferenceServerClient(server.url)
    http = httpclient.InferenceServerClient(server.http_url)
    try:
        for i in range(5):
            grpc.infer("identity_fp32", [fp32_input(np.full((1, 16), i), grpcclient)])
        for _ in range(2):
            http.infer("identity_fp32", [fp32_input(np.ones((3, 16)), httpclient)])
        for client, module in ((grpc, grpcclient), (http, httpclient), (grpc, grpcclient)):
            with pytest.raises(InferenceServerException, match="shape"):
                client.infer("identity_fp32", [fp32_input(np.ones((1, 15)), module)])
        for x in (1.0, 2.0):
            grpc.infer("picky", [fp32_input(np.full((1, 1), x), grpcclient)])
        for client, module in ((grpc, grpcclient), (http, httpclient)):
            with pytest.raises(InferenceServerException, match="negative input"):
                client.infer("picky", [fp32_input(np.full((1, 1), -1.0), module)])
    finally:
        grpc.close()
        http.close()


def test_counters_move_by_exactly_what_was_sent(server: ServerProcess) -> None:
    before = samples(server.metrics_url)
    stats_before = {m: statistics(server, m) for m in ("identity_fp32", "picky")}
    send_known_requests(server)
    after = samples(server.metrics_url)
    stats_after = {m: statistics(server, m) for m in ("identity_fp32", "picky")}

    expected = {  # model: (success, inferences, executions, {failure reason: count})
        "identity_fp32": (7, 11, 7, {"OTHER": 3}),
        "picky": (2, 2, 2, {"BACKEND": 2}),
    }
    for model, (success, inferences, executions, failures) in expected.items():
        assert delta(before, after, "nv_inference_request_success", model) == success
        assert delta(before, after, "nv_inference_count", model) == inferences
        assert delta(before, after, "nv_inference_exec_count", model) == executions
        for reason in FailureReason:
            moved = delta(before, after, "nv_inference_request_failure", model, reason=reason.value)
            assert moved == failures.get(reason.value, 0), (model, reason)
        assert delta(before, after, "clipperd_request_duration_seconds_count", model) == success
        assert delta(before, after, "clipperd_request_duration_seconds_bucket", model, le="+Inf") == success
        assert value(after, "clipperd_inflight_requests", model) == 0
        assert value(after, "nv_inference_pending_request_count", model) == 0

        # the same counters as the statistics endpoint, read at the same quiet points
        for stats, metrics in ((stats_before[model], before), (stats_after[model], after)):
            infer_stats = stats["inference_stats"]
            for name, field in DURATIONS.items():
                assert value(metrics, name, model) == infer_stats[field]["ns"] // 1000, name
            assert value(metrics, "nv_inference_request_success", model) == infer_stats["success"]["count"]
            failed = sum(value(metrics, "nv_inference_request_failure", model, reason=r.value) for r in FailureReason)
            assert failed == infer_stats["fail"]["count"]
            assert value(metrics, "nv_inference_count", model) == stats["inference_count"]
            assert value(metrics, "nv_inference_exec_count", model) == stats["execution_count"]
            seconds = value(metrics, "clipperd_request_duration_seconds_sum", model)
            assert seconds == pytest.approx(infer_stats["success"]["ns"] / 1e9, rel=1e-9)
        assert delta(before, after, "nv_inference_request_duration_us", model) > 0


def test_histogram_buckets_are_cumulative_and_complete(server: ServerProcess) -> None:
    metrics = samples(server.metrics_url)
    bounds = [*(repr(ns / 1e9) for ns in LATENCY_BUCKETS_NS), "+Inf"]
    counts = [value(metrics, "clipperd_request_duration_seconds_bucket", "identity_fp32", le=b) for b in bounds]
    assert counts == sorted(counts)
    assert counts[-1] == value(metrics, "clipperd_request_duration_seconds_count", "identity_fp32")


def test_cancelled_request_counts_as_canceled(server: ServerProcess) -> None:
    before = samples(server.metrics_url)
    grpc = grpcclient.InferenceServerClient(server.url)
    try:
        with pytest.raises(InferenceServerException, match="Deadline"):
            grpc.infer("picky", [fp32_input(np.full((1, 1), 999.0), grpcclient)], client_timeout=0.5)
        # the model still holds its thread: the request counts as canceled, and as in flight no more
        wait_for(
            lambda: (
                delta(before, samples(server.metrics_url), "nv_inference_request_failure", "picky", reason="CANCELED")
                == 1
            )
        )
        now = samples(server.metrics_url)
        assert value(now, "clipperd_inflight_requests", "picky") == 0
        assert delta(before, now, "nv_inference_exec_count", "picky") == 0
        (server.repository / "picky" / "1" / "release").touch()
        # the execution that was under way completes and is counted (the model did run)
        wait_for(lambda: delta(before, samples(server.metrics_url), "nv_inference_exec_count", "picky") == 1)
        grpc.infer("picky", [fp32_input(np.full((1, 1), 3.0), grpcclient)])
    finally:
        (server.repository / "picky" / "1" / "release").unlink(missing_ok=True)
        grpc.close()
    after = samples(server.metrics_url)
    assert delta(before, after, "nv_inference_request_success", "picky") == 1
    for reason in ("REJECTED", "BACKEND", "OTHER"):
        assert delta(before, after, "nv_inference_request_failure", "picky", reason=reason) == 0


def test_inflight_and_pending_while_the_instance_is_held(server: ServerProcess) -> None:
    release = server.repository / "picky" / "1" / "release"
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    grpc = grpcclient.InferenceServerClient(server.url)

    def gauges() -> tuple[float, float]:
        now = samples(server.metrics_url)
        return value(now, "clipperd_inflight_requests", "picky"), value(
            now, "nv_inference_pending_request_count", "picky"
        )

    try:
        grpc.async_infer(
            "picky",
            [fp32_input(np.full((1, 1), 999.0), grpcclient)],
            lambda result, error: results.put((result, error)),
        )
        wait_for(lambda: gauges() == (1, 0))  # executing, holding the only instance
        grpc.async_infer(
            "picky", [fp32_input(np.full((1, 1), 5.0), grpcclient)], lambda result, error: results.put((result, error))
        )
        wait_for(lambda: gauges() == (2, 1))  # the second one waits for it
        release.touch()
        for _ in range(2):
            result, error = results.get(timeout=30)
            assert error is None
            assert result.as_numpy("OUTPUT0").shape == (1, 1)
    finally:
        release.unlink(missing_ok=True)
        grpc.close()
    assert gauges() == (0, 0)


# ----------------------------------------------------------------------------- the other families


def test_load_duration_for_each_loaded_model(server: ServerProcess) -> None:
    metrics = samples(server.metrics_url)
    for model in ("identity_fp32", "picky"):
        assert 0 < value(metrics, "nv_model_load_duration_secs", model) < 60


def test_cpu_metrics_present_and_sane(server: ServerProcess) -> None:
    metrics = samples(server.metrics_url)
    total = metrics[("nv_cpu_memory_total_bytes", frozenset())]
    used = metrics[("nv_cpu_memory_used_bytes", frozenset())]
    assert 0 < used < total
    assert 0.0 <= metrics[("nv_cpu_utilization", frozenset())] <= 1.0


def test_triton_names_help_and_types(server: ServerProcess) -> None:
    text, content_type = scrape(server.metrics_url)
    assert content_type.startswith("text/plain; version=0.0.4")
    assert "# TYPE nv_inference_request_success counter\n" in text
    assert "# HELP nv_inference_request_success Number of successful inference requests, all batch sizes\n" in text
    assert "# TYPE nv_inference_pending_request_count gauge\n" in text
    assert "# TYPE clipperd_request_duration_seconds histogram\n" in text
    assert 'nv_inference_request_failure{model="picky",reason="BACKEND",version="1"} ' in text
    assert "_total{" not in text  # Triton's counters keep their bare names


def test_openmetrics_when_asked(server: ServerProcess) -> None:
    text, content_type = scrape(server.metrics_url, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert text.endswith("# EOF\n")
    assert 'nv_inference_count{model="identity_fp32",version="1"} ' in text
    assert "# TYPE clipperd_request_duration_seconds histogram\n" in text


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        return sock.recv(4096)


def test_bad_requests_get_4xx_and_the_server_stays_up(server: ServerProcess) -> None:
    for method, path, status in (("POST", "/metrics", 405), ("DELETE", "/metrics", 405), ("GET", "/nope", 404)):
        request = urllib.request.Request(f"http://127.0.0.1:{server.metrics_port}{path}", method=method, data=None)
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=10)
        assert caught.value.code == status
    for junk in (
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
        b"\x00\x01\x02 not http at all\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
    ):
        reply = raw_request(server.metrics_port, junk)
        assert reply.split(b" ", 2)[1] == b"400", reply[:80]
    assert "nv_inference_count" in scrape(server.metrics_url)[0]
    client = grpcclient.InferenceServerClient(server.url)
    try:
        assert client.is_server_ready()
    finally:
        client.close()


def test_metrics_off_binds_nothing(logs_dir: Path) -> None:
    with running(EXAMPLES, "--no-allow-metrics", log_dir=logs_dir) as server:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", server.metrics_port), timeout=5).close()
        assert "Prometheus metrics on" not in server.log()


# ------------------------------------------------------------------------------ without a server


def test_latency_buckets_hold_their_upper_bound() -> None:
    stats = ModelStats()
    first = LATENCY_BUCKETS_NS[0]
    for ns in (1, first, first + 1, LATENCY_BUCKETS_NS[-1], LATENCY_BUCKETS_NS[-1] + 1, 10**12):
        stats.record_success(ns)
    assert stats.latency_buckets[0] == 2  # le is inclusive
    assert stats.latency_buckets[1] == 1
    assert stats.latency_buckets[-2] == 1
    assert stats.latency_buckets[-1] == 2  # +Inf
    assert stats.success.count == sum(stats.latency_buckets) == 6


@pytest.mark.parametrize(
    ("error", "executing", "reason"),
    [
        (InvalidArgument("bad shape"), False, FailureReason.OTHER),
        (InvalidArgument("from the model"), True, FailureReason.BACKEND),
        (ModelExecutionError("boom"), True, FailureReason.BACKEND),
        (ValueError("boom"), True, FailureReason.BACKEND),
        (Unavailable("unloading"), True, FailureReason.REJECTED),
        (ResourceExhausted("queue full"), True, FailureReason.REJECTED),
        (DeadlineExceeded("queue timeout"), True, FailureReason.REJECTED),
        (asyncio.CancelledError(), True, FailureReason.CANCELED),
        (Cancelled("cancelled"), True, FailureReason.CANCELED),
        (ValueError("encoding"), False, FailureReason.OTHER),
    ],
)
def test_failure_reasons(error: BaseException, executing: bool, reason: FailureReason) -> None:
    assert failure_reason(error, executing) is reason


def write_proc(root: Path, busy: int, idle: int, total_kb: int = 1000, available_kb: int = 250) -> None:
    # user nice system idle iowait irq softirq steal guest guest_nice
    (root / "stat").write_text(f"cpu  {busy} 0 0 {idle} 0 0 0 0 7 7\ncpu0 1 2 3 4 5 6 7 8 9 10\n")
    (root / "meminfo").write_text(f"MemTotal: {total_kb} kB\nMemFree: 1 kB\nMemAvailable: {available_kb} kB\n")


def test_cpu_utilization_is_the_busy_share_between_scrapes(tmp_path: Path) -> None:
    write_proc(tmp_path, busy=100, idle=100)
    cpu = CpuMetrics(tmp_path)
    write_proc(tmp_path, busy=175, idle=125)  # 75 busy of 100
    assert cpu.utilization() == pytest.approx(0.75)
    assert cpu.utilization() == pytest.approx(0.75)  # no tick since: the last figure stays
    write_proc(tmp_path, busy=175, idle=225)
    assert cpu.utilization() == 0.0
    assert cpu.memory() == (1000 * 1024, 750 * 1024)


def test_cpu_metrics_absent_without_proc(tmp_path: Path) -> None:
    cpu = CpuMetrics(tmp_path / "missing")
    assert list(cpu.families()) == []
