"""Where one traced request's time went inside a scheduler, passed up to whoever traces it.

The server's tracing (server/tracing/) sets ``CURRENT`` to a ``Timeline`` around a sampled
request; the dynamic scheduler picks it up when it queues the request and stamps it with the
times it measures anyway for Triton's statistics (queue wait, compute input / infer / output)
and with the batch the request rode in. Requests that are not traced carry None. The
schedulers never import the server: this module is all they share with it."""

from __future__ import annotations

import itertools
from contextvars import ContextVar
from dataclasses import dataclass

from schedulers.stats import ExecutionTimes

# a batch's id, shared by the traced requests that rode in it (unique within the process)
next_batch_id = itertools.count(1).__next__


@dataclass(slots=True)
class Timeline:
    """perf_counter_ns instants of one request in a scheduler; 0: not reached (a cache hit, a
    scheduler that does not stamp)."""

    enqueued_ns: int = 0
    dequeued_ns: int = 0  # its batch was formed
    compute_start_ns: int = 0
    compute_input_end_ns: int = 0
    compute_output_start_ns: int = 0
    compute_end_ns: int = 0  # the event loop saw the batch done
    batch_id: int = 0
    batch_rows: int = 0  # the batch's size (rows of all its requests)
    batch_requests: int = 0

    def stamp(self, times: ExecutionTimes, finished_ns: int, batch_id: int, rows: int, requests: int) -> None:
        """The execution's phases, laid back from when the loop saw it finish."""
        start = finished_ns - sum(times)
        self.compute_start_ns = start
        self.compute_input_end_ns = start + times.compute_input_ns
        self.compute_output_start_ns = self.compute_input_end_ns + times.compute_infer_ns
        self.compute_end_ns = finished_ns
        self.batch_id, self.batch_rows, self.batch_requests = batch_id, rows, requests


CURRENT: ContextVar[Timeline | None] = ContextVar("clipperd_timeline", default=None)
