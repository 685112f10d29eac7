"""A version's drift monitor at run time. The request path calls ``offer``: a random draw, and
for the sampled requests a copy of the monitored tensors into a bounded buffer, or a drop
counted when the buffer is full (it never waits). A task on the event loop wakes every
``drift_interval_ms`` and hands the buffer to a thread that adds the rows to the detector and,
once ``drift_check_rows`` new rows are in, runs the tests; their results are what the metrics and
the JSON status read. Each change of the version's alarm logs one line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Mapping

import numpy as np

from server.monitoring.drift.config import DriftConfig, Kind
from server.monitoring.drift.detector import CheckResult, DriftDetector, as_rows

log = logging.getLogger(__name__)

Sample = dict[str, np.ndarray]  # one request's monitored tensors, copied
CATEGORY_BYTES = 64  # a BYTES category is kept to this many bytes: a client sizes none of the buffer


class DriftMonitor:
    def __init__(self, model: str, version: int, config: DriftConfig, reference: Mapping[str, np.ndarray] | None):
        self.model, self.version, self.config = model, version, config
        self.rate = config.sample_rate
        self.capacity = config.buffer
        self.sampled = 0  # requests copied into the buffer
        self.dropped = 0  # requests drawn for the sample but dropped: the buffer was full
        self.checks = 0
        self.results: list[CheckResult] = []
        self.alarm = False
        self.reference_source = "file" if reference is not None else "requests"
        self.detector = DriftDetector(config, reference)
        self._buffer: deque[Sample] = deque()
        self._inputs = [t.name for t in config.tensors if not t.output]
        self._outputs = [t.name for t in config.tensors if t.output]
        self._texts = [t.name for t in config.tensors if t.kind is Kind.CATEGORICAL]
        self._random = random.Random(config.seed).random
        self._task: asyncio.Task[None] | None = None

    # -- the request path ------------------------------------------------------------------

    def offer(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        """One answered request: sampled at ``drift_sample_rate``, copied (the arrays may be
        views of wire bytes that go back to the transport) or dropped when the buffer is full."""
        if self._random() >= self.rate:
            return
        if len(self._buffer) >= self.capacity:
            self.dropped += 1
            return
        try:
            sample = {n: np.array(inputs[n]) for n in self._inputs}
            sample.update((n, np.array(outputs[n])) for n in self._outputs)
        except KeyError:  # an optional input the request left out: nothing to compare
            return
        for name in self._texts:
            sample[name] = _clipped(sample[name])
        self._buffer.append(sample)
        self.sampled += 1

    # -- off the request path --------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"drift {self.model}")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.config.interval_ms / 1000)
            try:
                results = await asyncio.to_thread(self.analyse)
            except Exception:  # a failed check must not end the monitor: log it, try the next
                log.exception("drift check of model '%s' version %d failed", self.model, self.version)
                continue
            if results is not None:
                self.publish(results)

    def analyse(self) -> list[CheckResult] | None:
        """Moves the buffer into the detector; the tests' results when a check is due (on a
        thread: the event loop only ever appends to the buffer, which a deque allows)."""
        detector, batched = self.detector, self.config.batched
        buffer = self._buffer
        for _ in range(len(buffer)):
            sample = buffer.popleft()
            detector.add({t.name: as_rows(t, sample[t.name], batched) for t in self.config.tensors})
        return detector.check() if detector.due else None

    def publish(self, results: list[CheckResult]) -> None:
        """The results of a check become the ones exported; a change of alarm logs one line."""
        self.results = results
        self.checks += 1
        alarm = any(r.alarm for r in results)
        if alarm != self.alarm:
            self.alarm = alarm
            if alarm:
                fired = ", ".join(f"{r.feature} ({r.test} {_shown(r)})" for r in results if r.alarm)
                log.warning("drift alarm ON for model '%s' version %d: %s", self.model, self.version, fired[:500])
            else:
                log.info("drift alarm OFF for model '%s' version %d", self.model, self.version)

    def status(self) -> dict[str, object]:
        """The JSON status' ``drift`` part."""
        detector = self.detector
        return {
            "alarm": self.alarm,
            "sample_rate": self.rate,
            "samples": self.sampled,
            "dropped": self.dropped,
            "buffered": len(self._buffer),
            "reference": {"source": self.reference_source, "ready": detector.reference_ready},
            "rows": detector.rows_seen,  # rows compared so far (not counting a reference taken from traffic)
            "rows_checked": detector.rows_at_check,  # the rows seen at the latest check
            "window_rows": detector.window_rows,
            "checks": self.checks,
            "alpha": self.config.alpha,
            "psi_threshold": self.config.psi_threshold,
            "tests": [r.to_json() for r in self.results],
        }


def _clipped(values: np.ndarray) -> np.ndarray:
    """BYTES categories cut to CATEGORY_BYTES (a new array: the request's own objects are let go)."""
    if values.dtype != object:
        return values
    flat = [v[:CATEGORY_BYTES] if isinstance(v, bytes | str) else v for v in values.ravel().tolist()]
    return np.array(flat, dtype=object).reshape(values.shape)


def _shown(result: CheckResult) -> str:
    if result.p_value is None:
        return f"{result.statistic:.3g}"
    return f"p={result.p_value:.2g}"
