"""What every adversarial test asserts about the server it attacks: still alive, memory bounded,
its event loop never stalled, other clients served meanwhile.

The stall is read from the server's own ``clipperd_event_loop_lag_seconds`` histogram (a timer on
its loop, see server/metrics/loop_lag.py), not from a wall clock on this side: a busy 2-core machine
delays the test's own threads too, so only the server can say how late its loop ran. The probe
(a small gRPC infer and an HTTP ready check every 250 ms) shows that other clients were served."""

from __future__ import annotations

import os
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from types import TracebackType

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from tests.serverproc import ServerProcess

MAX_RSS_GROWTH = 100 * 1024 * 1024  # the bound for one attack
MAX_STALL_S = 0.25  # the event loop is never late by more than this (a bucket bound of the histogram)
PROBE_EVERY_S = 0.25


def _proc_status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{key} not in /proc/{pid}/status")


def rss_bytes(pid: int) -> int:
    return _proc_status(pid, "VmRSS") * 1024


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def threads(pid: int) -> int:
    return _proc_status(pid, "Threads")


def loop_lag_histogram(server: ServerProcess) -> dict[float, int]:
    """The server's loop-lag histogram now: cumulative sample counts by upper bound (inf last)."""
    with urllib.request.urlopen(server.metrics_url, timeout=30) as response:
        text = response.read().decode()
    for metric in text_string_to_metric_families(text):
        if metric.name == "clipperd_event_loop_lag_seconds":
            return {float(s.labels["le"]): int(s.value) for s in metric.samples if s.name.endswith("_bucket")}
    raise AssertionError("clipperd_event_loop_lag_seconds is not in the metrics")


def stalls_over(before: dict[float, int], after: dict[float, int], bound_s: float = MAX_STALL_S) -> int:
    """Samples between two readings whose lag exceeded ``bound_s`` (a bucket bound)."""
    total = after[float("inf")] - before[float("inf")]
    return total - (after[bound_s] - before[bound_s])


class Probe:
    """A small gRPC infer and an HTTP ready check every 250 ms in a thread, as an ordinary client
    would send them during an attack; ``longest_s`` is the longest either took, ``failures`` what
    went wrong."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.longest_s = 0.0
        self.calls = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        import tritonclient.grpc as grpcclient

        with grpcclient.InferenceServerClient(self.server.url) as client:
            data = np.ones((1, 16), dtype=np.float32)
            while not self._stop.is_set():
                self._timed(lambda: _infer(client, data))
                self._timed(lambda: _ready(self.server.http_url))
                self._stop.wait(PROBE_EVERY_S)

    def _timed(self, call: object) -> None:
        start = time.perf_counter()
        try:
            call()  # type: ignore[operator]
        except Exception as error:  # recorded: the test asserts there are none
            self.failures.append(f"{type(error).__name__}: {str(error)[:200]}")
        self.longest_s = max(self.longest_s, time.perf_counter() - start)
        self.calls += 1


def _infer(client: object, data: np.ndarray) -> None:
    import tritonclient.grpc as grpcclient

    tensor = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    result = client.infer("identity_fp32", [tensor], client_timeout=30)  # type: ignore[attr-defined]
    assert np.array_equal(result.as_numpy("OUTPUT0"), data)


def _ready(http_url: str) -> None:
    with urllib.request.urlopen(f"http://{http_url}/v2/health/ready", timeout=30) as response:
        assert response.status == 200


@dataclass
class Watch:
    """Readings of the server before and after an attack; ``check`` asserts the issue's bounds:
    alive, RSS grown by at most 100 MB, no loop stall over 250 ms, the probe served throughout."""

    server: ServerProcess
    probe: bool = True
    rss_before: int = 0
    rss_after: int = 0
    stalls: int = 0
    max_lag_bucket_s: float = 0.0  # the bucket bound of the longest lag seen during the watch
    notes: list[str] = field(default_factory=list)
    _lag_before: dict[float, int] = field(default_factory=dict)
    _probe: Probe | None = None

    @property
    def pid(self) -> int:
        assert self.server.proc is not None
        return self.server.proc.pid

    def __enter__(self) -> Watch:
        self.rss_before = rss_bytes(self.pid)
        self._lag_before = loop_lag_histogram(self.server)
        if self.probe:
            self._probe = Probe(self.server).__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._probe is not None:
            self._probe.__exit__()
        assert self.server.is_running(), f"the server died:\n{self.server.log()[-3000:]}"
        self.rss_after = rss_bytes(self.pid)
        after = loop_lag_histogram(self.server)
        self.stalls = stalls_over(self._lag_before, after)
        total = after[float("inf")] - self._lag_before[float("inf")]
        # the smallest bound under which every new sample lies: the longest lag, to a bucket
        self.max_lag_bucket_s = min(b for b, n in after.items() if n - self._lag_before[b] == total)

    @property
    def rss_growth(self) -> int:
        return self.rss_after - self.rss_before

    @property
    def probe_longest_s(self) -> float:
        return self._probe.longest_s if self._probe is not None else 0.0

    def check(self) -> None:
        assert self.rss_growth <= MAX_RSS_GROWTH, f"RSS grew by {self.rss_growth / 2**20:.0f} MB"
        assert self.stalls == 0, f"{self.stalls} event-loop lag sample(s) over {MAX_STALL_S} s"
        if self._probe is not None:
            assert not self._probe.failures, f"an ordinary client failed meanwhile: {self._probe.failures[:3]}"
            assert self._probe.calls > 0, "the probe never completed a call"
