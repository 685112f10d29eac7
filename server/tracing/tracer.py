"""The server's tracing: its settings (server/tracing/settings.py), the sampling of requests
and, for the sampled ones, the spans (server/tracing/export.py).

Off costs one check per request: a transport asks ``tracing.on`` and, when it is False, serves
the request as it would without tracing. When on, ``sampled`` counts the request in its model's
scope and an unsampled one is served as without tracing; a sampled one goes through ``traced``,
carries a ``Timeline`` (schedulers/timeline.py) through the scheduler, and its spans are built
after its answer is encoded."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from backends.common.errors import FailedPrecondition
from schedulers.timeline import CURRENT, Timeline
from server.tracing.config import TraceConfig, parse_trace_config
from server.tracing.settings import FILE, LEVEL, TraceSettings, Update, as_strings, parse_update

if TYPE_CHECKING:
    from server.tracing.export import SpanExport

log = logging.getLogger(__name__)
R = TypeVar("R")
T = TypeVar("T")
MODE = "opentelemetry"
OFFSET_REFRESH_NS = 10 * 10**9  # how long one wall-clock offset is used (the wall clock may be stepped)
_MISSING = (
    "tracing needs the OpenTelemetry SDK and its OTLP/HTTP exporter: pip install 'clipperd[tracing]' "
    "(opentelemetry-sdk, opentelemetry-exporter-otlp-proto-http)"
)


class Tracing:
    """Trace settings, sampling and export for one server."""

    def __init__(self, config: TraceConfig | None = None) -> None:
        self.config = config or TraceConfig()
        self.config.check()
        self.settings = TraceSettings()
        if self.config.settings:
            self.settings.update("", self.config.settings)
        self._export: SpanExport | None = None
        self._offset = self._offset_at = 0  # wall clock minus perf_counter, and when it was taken
        self._offset_at = -OFFSET_REFRESH_NS
        self.on = self.settings.on  # THE check: False, and requests pay nothing else
        if self.on:
            self._start_export()

    def _start_export(self) -> None:
        """The exporter, made when tracing first turns on; FailedPrecondition without the SDK."""
        if self._export is not None:
            return
        try:
            from server.tracing.export import SpanExport
        except ImportError:
            raise FailedPrecondition(_MISSING) from None
        self._export = SpanExport(self.config)
        log.info("tracing: OTLP/HTTP export to %s", self.config.url)

    # ---- the TraceSetting API

    def update(self, model: str, update: Update) -> None:
        """Checks every change, then applies them all (an InvalidArgument changes nothing)."""
        changes = parse_update(update)
        if changes.get(LEVEL):  # turning a level on needs the exporter: refused, not half-applied
            self._start_export()
        self.settings.update(model, changes)
        self.on = self.settings.on

    def answer(self, model: str = "") -> dict[str, list[str]]:
        """The settings of ``model`` (the global ones when empty), every value a list of strings,
        as Triton's gRPC TraceSetting answers."""
        values, remaining = self.settings.current(model)
        answer = as_strings(values, remaining)
        answer[FILE] = [self.settings.file]
        answer["trace_mode"] = [MODE]
        answer["url"] = [self.config.url]
        return answer

    # ---- requests

    def sampled(self, model: str) -> bool:
        """Whether this request of ``model`` is traced (Triton's every N-th, while the count
        lasts). Asked once per request while tracing is on, before anything else is done for
        tracing: an unsampled request then goes the untraced way."""
        return self._export is not None and self.settings.scope(model).sample()

    async def traced(
        self,
        model: str,
        traceparent: str | None,
        transport: str,
        run: Callable[[], Awaitable[R]],
        encode: Callable[[R], T],
        describe: Callable[[R], tuple[str, str]],
    ) -> T:
        """``encode(await run())`` for a request ``sampled`` chose, traced. ``describe`` gives
        the answer's model version and request id."""
        received = time.perf_counter_ns()
        line = Timeline()
        token = CURRENT.set(line)
        try:
            answer = await run()
        except BaseException as error:
            self._finish(model, ("", ""), transport, traceparent, received, line, str(error) or type(error).__name__)
            raise
        finally:
            CURRENT.reset(token)
        answered = time.perf_counter_ns()
        encoded = encode(answer)
        self._finish(model, describe(answer), transport, traceparent, received, line, None, answered)
        return encoded

    def _finish(
        self,
        model: str,
        described: tuple[str, str],
        transport: str,
        traceparent: str | None,
        received: int,
        line: Timeline,
        error: str | None,
        answered: int = 0,
    ) -> None:
        from server.tracing.export import Finished

        sent = time.perf_counter_ns()
        if sent - self._offset_at > OFFSET_REFRESH_NS:  # one offset for a while: spans of a batch line up
            self._offset, self._offset_at = time.time_ns() - sent, sent
        offset = self._offset
        done = Finished(
            model, described[0], described[1], transport, traceparent, received, answered or sent, sent, offset, line
        )
        done.error = error
        assert self._export is not None
        try:
            self._export.emit(done)
        except Exception:  # tracing must never fail a request
            log.exception("tracing: could not record a span")

    def shutdown(self) -> None:
        """The spans still queued exported, within a bound; never an error at exit."""
        if self._export is None:
            return
        try:
            self._export.shutdown()
        except Exception:
            log.exception("tracing: the exporter did not shut down cleanly")


def check_trace_config(values: list[str]) -> None:
    """``--trace-config`` checked at start: ValueError for a bad piece, or for tracing turned on
    without the OpenTelemetry packages."""
    config = parse_trace_config(values)
    if config.settings.get(LEVEL):
        try:
            import server.tracing.export  # noqa: F401
        except ImportError:
            raise ValueError(f"--trace-config: {_MISSING}") from None
