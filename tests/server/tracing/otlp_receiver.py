"""A real OTLP/HTTP trace receiver on 127.0.0.1: it decodes each export (an
ExportTraceServiceRequest, with OpenTelemetry's own protobuf classes) and keeps its spans.
``hold`` makes it stall every export until ``release`` (a collector that hangs)."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

PATH = "/v1/traces"


@dataclass
class Span:
    name: str
    trace_id: str  # hex
    span_id: str
    parent_id: str  # "" for a root
    start_ns: int
    end_ns: int
    attributes: dict[str, object]
    events: list[str]


def _value(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@dataclass
class Receiver:
    spans: list[Span] = field(default_factory=list)
    exports: int = 0
    changed: threading.Condition = field(default_factory=threading.Condition)
    released: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.released.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.released.wait()
                status = 404 if self.path != PATH else 200
                if status == 200:
                    receiver.take(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(status)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{PATH}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()

    def take(self, request: ExportTraceServiceRequest) -> None:
        spans = [
            Span(
                span.name,
                span.trace_id.hex(),
                span.span_id.hex(),
                span.parent_span_id.hex(),
                span.start_time_unix_nano,
                span.end_time_unix_nano,
                {kv.key: _value(kv.value) for kv in span.attributes},
                [event.name for event in span.events],
            )
            for resource in request.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        ]
        with self.changed:
            self.spans.extend(spans)
            self.exports += 1
            self.changed.notify_all()

    def hold(self) -> None:
        self.released.clear()

    def release(self) -> None:
        self.released.set()

    def wait_for(self, check: Callable[[list[Span]], bool], what: str, timeout_s: float = 60.0) -> list[Span]:
        """The spans once ``check`` holds for them; AssertionError naming ``what`` otherwise."""
        end = time.monotonic() + timeout_s
        with self.changed:
            while not check(self.spans):
                left = end - time.monotonic()
                assert left > 0, f"{what}: not within {timeout_s} s; received {[s.name for s in self.spans]}"
                self.changed.wait(left)
            return list(self.spans)

    def roots(self, model: str = "") -> list[Span]:
        with self.changed:
            found = [s for s in self.spans if s.name == "InferRequest"]
        return [s for s in found if not model or s.attributes.get("triton.model_name") == model]
