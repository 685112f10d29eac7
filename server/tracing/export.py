"""Spans of traced requests, exported over OTLP/HTTP by the OpenTelemetry SDK.

Spans are built once the answer is sent, from the instants measured on the way (the
transport's receive and send, the scheduler's Timeline), and handed to a BatchSpanProcessor:
its bounded queue takes them and its own thread exports them, so a collector that is down or
slow never holds a request (past the queue's bound spans are dropped, never waited for).

The tree of one request (names as Triton's where Triton has them)::

    InferRequest            receive -> send; model, version, request id, the batch it rode in
    ├── queue               queued -> its batch formed
    ├── compute             the batch's execution; events COMPUTE_START, COMPUTE_INPUT_END,
    │                       COMPUTE_OUTPUT_START, COMPUTE_END (Triton's timestamps)
    └── send                outputs ready -> the answer encoded for the wire
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from schedulers.timeline import Timeline
from server.tracing.config import TraceConfig

SERVICE_NAME = "clipperd"
SHUTDOWN_S = 5.0  # on exit, how long the spans still queued may take to export
_PROPAGATOR = TraceContextTextMapPropagator()


@dataclass(slots=True)
class Finished:
    """One traced request once answered: perf_counter_ns instants and what it was."""

    model: str
    version: str
    request_id: str
    transport: str  # "grpc" or "http"
    traceparent: str | None
    received_ns: int
    answered_ns: int  # outputs ready (or the failure known)
    sent_ns: int  # the answer encoded
    offset_ns: int  # add to a perf_counter_ns instant for nanoseconds since the epoch
    timeline: Timeline
    error: str | None = None


class SpanExport:
    """The SDK's provider, tracer and batch processor for one server."""

    def __init__(self, config: TraceConfig) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        resource = Resource.create({"service.name": SERVICE_NAME, **config.resource})
        self.provider = TracerProvider(resource=resource, sampler=ALWAYS_ON)  # the 1-of-N rate already chose
        self.processor = BatchSpanProcessor(
            OTLPSpanExporter(endpoint=config.url),
            max_queue_size=config.max_queue_size,
            schedule_delay_millis=config.schedule_delay_ms,
            max_export_batch_size=config.max_export_batch_size,
        )
        self.provider.add_span_processor(self.processor)
        self.tracer = self.provider.get_tracer("clipperd")

    def emit(self, done: Finished) -> None:
        """The request's spans, into the processor's queue."""
        at = done.offset_ns
        parent = _PROPAGATOR.extract({"traceparent": done.traceparent}) if done.traceparent else None
        line = done.timeline
        attributes: dict[str, str | int] = {
            "triton.model_name": done.model,
            "triton.model_version": done.version,
            "clipperd.transport": done.transport,
        }
        if done.request_id:
            attributes["triton.request_id"] = done.request_id
        if line.batch_id:
            attributes.update(_batch(line))
        root = self.tracer.start_span(
            "InferRequest", parent, SpanKind.SERVER, attributes, start_time=done.received_ns + at
        )
        inside = trace.set_span_in_context(root)
        if line.dequeued_ns:
            self._span("queue", inside, line.enqueued_ns + at, line.dequeued_ns + at)
        if line.compute_end_ns:
            self._compute(inside, line, at)
        self._span("send", inside, done.answered_ns + at, done.sent_ns + at)
        if done.error is not None:
            root.set_status(Status(StatusCode.ERROR, done.error[:256]))
        root.end(end_time=done.sent_ns + at)

    def _span(self, name: str, parent: Context, start: int, end: int) -> None:
        span = self.tracer.start_span(name, parent, start_time=start)
        span.end(end_time=max(start, end))

    def _compute(self, parent: Context, line: Timeline, at: int) -> None:
        span = self.tracer.start_span("compute", parent, attributes=_batch(line), start_time=line.compute_start_ns + at)
        span.add_event("COMPUTE_START", timestamp=line.compute_start_ns + at)
        span.add_event("COMPUTE_INPUT_END", timestamp=line.compute_input_end_ns + at)
        span.add_event("COMPUTE_OUTPUT_START", timestamp=line.compute_output_start_ns + at)
        span.add_event("COMPUTE_END", timestamp=line.compute_end_ns + at)
        span.end(end_time=line.compute_end_ns + at)

    def shutdown(self) -> None:
        """Exports what is queued, for SHUTDOWN_S at most: a collector that is down does not
        hold the exit (the SDK's own shutdown may wait for its exporter's retries: it is left
        behind on a daemon thread)."""
        stopping = threading.Thread(target=self.provider.shutdown, name="clipperd-trace-shutdown", daemon=True)
        stopping.start()
        stopping.join(SHUTDOWN_S)


def _batch(line: Timeline) -> dict[str, str | int]:
    return {
        "clipperd.batch.id": line.batch_id,
        "clipperd.batch.size": line.batch_rows,
        "clipperd.batch.requests": line.batch_requests,
    }
