"""The server's lifecycle: bind, load the repository, serve, and on SIGTERM/SIGINT stop taking
new requests, let in-flight ones finish, unload the models, exit 0."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import signal
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client.metrics_core import Metric

from schedulers.cache import ResponseCache
from schedulers.rate_limiter import RateLimiter
from server.access import AccessPolicy
from server.applications.manager import ApplicationManager
from server.applications.state import open_store
from server.core.dataplane import DataPlane
from server.core.repository import ControlMode, ModelRepository
from server.dashboard.feed import Dashboard, Sources
from server.gpu import GpuSampler, start_gpu_sampler
from server.grpc.http2.limits import Http2Limits
from server.grpc.service import GrpcOptions, start_grpc_server
from server.metrics.applications import application_families
from server.metrics.exporter import MetricsOptions, start_metrics_server
from server.metrics.gpu import gpu_families
from server.metrics.loop_lag import LoopLagMonitor
from server.rest.body import BodyLimits
from server.rest.limits import HttpLimits
from server.rest.routes import HttpOptions, start_http_server
from server.settings import Settings
from server.tls import ALPN_GRPC, ALPN_HTTP, ReloadingTls, TlsReloader, tls_files
from server.tracing.config import parse_trace_config
from server.tracing.tracer import Tracing

if TYPE_CHECKING:
    from server.storage.mirror import BucketMirror

log = logging.getLogger("clipperd")


class Server:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        mode = ControlMode(settings.model_control_mode)
        size = settings.cache_bytes()
        self.cache = ResponseCache(size) if size else None
        self.mirror = _bucket_mirror(settings)  # None: the repository is a local folder
        root = self.mirror.root if self.mirror is not None else Path(settings.model_repository)
        limiter = RateLimiter(settings.rate_limits()) if settings.rate_limit == "execution_count" else None
        self.repository = ModelRepository(root, mode, list(settings.load_model), self.cache, self.mirror, limiter)
        store = open_store(settings.app_state, settings.model_repository)
        self.applications = ApplicationManager(self.repository, store)
        self.plane = DataPlane(self.repository, settings.strict_readiness, self.applications)
        self.plane.name = settings.server_id  # ServerMetadata's name, as Triton's --id sets it
        self.plane.tracing = Tracing(parse_trace_config(list(settings.trace_config)))  # before the transports
        self.grpc_port = 0
        self.http_port = 0
        self.metrics_port = 0  # stays 0 with --no-allow-metrics
        self.clean_exit = True  # False when the exit timeout cut in-flight work short
        self.loop_lag = LoopLagMonitor()
        self.grpc_tls = _reloading_tls(settings, "grpc", ALPN_GRPC)
        self.http_tls = _reloading_tls(settings, "http", ALPN_HTTP)
        used = [t for t in (self.grpc_tls, self.http_tls) if t is not None]
        self.tls = TlsReloader(used, settings.tls_reload_poll_secs)
        self._stop = asyncio.Event()
        self.gpu: GpuSampler | None = None  # started in run() when a GPU is there

    def request_stop(self) -> None:
        self._stop.set()

    def reload_tls(self) -> None:
        """SIGHUP: certificates, keys and roots read again for new connections."""
        self.tls.reload_all("SIGHUP")

    async def run(self) -> None:
        settings = self.settings
        await self._copy_bucket()
        self.loop_lag.start()
        self.gpu = start_gpu_sampler(settings.metrics_interval_ms)
        access = AccessPolicy.from_settings(settings)
        options = GrpcOptions(
            settings.grpc_max_message_bytes,
            settings.grpc_http2_bdp_probe,
            settings.grpc_http2_lookahead_bytes,
            settings.grpc_frontend,
            access,
            tls=self.grpc_tls,
            handshake_timeout_s=settings.tls_handshake_timeout_secs,
            max_calls=settings.grpc_max_inflight_calls,
            max_inflight_bytes=settings.grpc_max_inflight_bytes,
            max_connection_bytes=settings.grpc_max_connection_inflight_bytes,
            http2=Http2Limits.from_settings(settings),
        )
        servers: list[Any] = []  # what a stop must stop: the gRPC and HTTP servers Triton's --allow-* flags left on
        if settings.allow_grpc:
            grpc_host = settings.grpc_address or settings.host
            grpc_server, self.grpc_port = await _listening(
                "gRPC",
                grpc_host,
                settings.grpc_port,
                start_grpc_server(self.plane, grpc_host, settings.grpc_port, options),
            )
            servers.append(grpc_server)
            tls = " over TLS" if self.grpc_tls is not None else ""
            log.info("KServe v2 gRPC%s on %s:%d (%s front end)", tls, grpc_host, self.grpc_port, settings.grpc_frontend)
        try:
            await self.applications.start()
        except Exception as error:  # a store that cannot be reached: say so, not a traceback
            log.error("application state (--app-state) unavailable: %s: %s", type(error).__name__, error)
            raise SystemExit(2) from None
        limits = BodyLimits(settings.http_max_input_size, settings.http_max_decompressed_size)
        http_options = HttpOptions(
            settings.http_address or settings.host,
            settings.http_port,
            limits,
            settings.exit_timeout_secs,
            access,
            tls=self.http_tls,
            applications=self.applications,
            handshake_timeout_s=settings.tls_handshake_timeout_secs,
            connection_limits=HttpLimits.from_settings(settings),
            dashboard=Dashboard(self._dashboard_sources()),
        )
        if settings.allow_http:
            http_server, self.http_port = await _listening(
                "HTTP", http_options.host, settings.http_port, start_http_server(self.plane, http_options)
            )
            servers.append(http_server)
            tls = " over TLS" if self.http_tls is not None else ""
            log.info("KServe v2 HTTP%s on %s:%d", tls, http_options.host, self.http_port)
        log.info("access: %s", access.summary())
        self.tls.start()
        if self.cache is not None:
            log.info("response cache: local, %d bytes", self.cache.capacity)
        runners = []
        if settings.allow_metrics:
            metrics_host = settings.metrics_host or settings.http_address or settings.host  # as Triton
            app_families = application_families(lambda: list(self.applications.apps.values()))
            metrics_runner, self.metrics_port = await _listening(
                "metrics",
                metrics_host,
                settings.metrics_port,
                start_metrics_server(
                    self.repository.loaded,
                    MetricsOptions(metrics_host, settings.metrics_port),
                    self.cache,
                    lambda: itertools.chain(app_families(), self.loop_lag.families(), self._gpu_families()),
                ),
            )
            runners.append(metrics_runner)
            log.info("Prometheus metrics on %s:%d/metrics", metrics_host, self.metrics_port)
        await self.repository.start()
        if settings.gc_freeze:
            _settle_garbage_collector()
        self.plane.accepting = True
        ready = sum(1 for r in self.repository.index() if r.state == "READY")
        log.info("serving %d model version(s) from %s", ready, settings.model_repository)
        poller = self._start_polling()
        await self._stop.wait()
        log.info("stopping: no new requests; waiting up to %.0fs for in-flight ones", settings.exit_timeout_secs)
        self.plane.accepting = False
        self.tls.stop()
        if poller is not None:
            poller.cancel()
        if self.mirror is not None:
            self.mirror.close()
        deadline = asyncio.get_running_loop().time() + settings.exit_timeout_secs
        await asyncio.gather(
            *(server.stop(settings.exit_timeout_secs) for server in servers), *(r.cleanup() for r in runners)
        )
        await self.applications.stop()
        remaining = max(0.0, deadline - asyncio.get_running_loop().time())
        try:
            await asyncio.wait_for(self.repository.stop(), remaining)
        except TimeoutError:
            busy = sorted({mv.name for mv in self.repository.loaded()})
            log.error("exit timeout expired with work still running (%s): exiting now", ", ".join(busy) or "unloading")
            self.clean_exit = False
            return
        finally:
            self.plane.shared_memory.close()
        await self._stop_samplers()
        await asyncio.to_thread(self.plane.tracing.shutdown)  # the spans still queued, bounded by the exporter
        log.info("stopped")

    async def _stop_samplers(self) -> None:
        self.loop_lag.stop()
        if self.gpu is not None:
            await self.gpu.stop()

    def _gpu_families(self) -> Iterator[Metric]:
        return gpu_families(self.gpu) if self.gpu is not None else iter(())

    def _dashboard_sources(self) -> Sources:
        return Sources(
            index=self.repository.index,
            loaded=self.repository.loaded,
            applications=lambda: list(self.applications.apps.values()),
            gpus=lambda: self.gpu.readings if self.gpu is not None else [],
            server={"name": self.plane.name, "version": self.plane.version},
        )

    async def _copy_bucket(self) -> None:
        """A bucket repository is copied before anything binds; one that cannot be read ends the
        start with one line (missing bucket, endpoint out of reach, credentials refused)."""
        if self.mirror is None:
            return
        from server.storage.s3 import StorageError

        try:
            await self.mirror.start()
        except StorageError as error:
            log.error("model repository %s: %s", self.mirror.location.url[:256], error)
            self.mirror.close()
            raise SystemExit(2) from None

    def _start_polling(self) -> asyncio.Task[None] | None:
        if self.repository.mode is not ControlMode.POLL:
            return None
        return asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.repository_poll_secs)
            try:
                if self.mirror is not None:
                    await _sync_bucket(self.mirror)
                await self.repository.poll()
            except Exception:
                log.exception("repository poll failed")


Listener = TypeVar("Listener")


async def _listening(service: str, host: str, port: int, start: Awaitable[Listener]) -> Listener:
    """``start``'s listener; an address that cannot be taken (in use, not this machine's) ends
    the start with one line naming it, as a bad flag does, not a traceback."""
    try:
        return await start
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)  # uvloop leaves strerror unset
        log.error("cannot listen for %s on %s:%d: %s", service, host, port, reason)
        raise SystemExit(2) from None


async def _sync_bucket(mirror: BucketMirror) -> None:
    """One poll of a bucket: a bucket out of reach keeps what is served, said once a poll."""
    from server.storage.s3 import StorageError

    try:
        await mirror.sync()
    except StorageError as error:
        log.error("model repository %s: %s (serving what was copied)", mirror.location.url[:256], error)


def _bucket_mirror(settings: Settings) -> BucketMirror | None:
    """The cache folder of a bucket repository (nothing read yet), or None for a folder. The
    storage modules (and boto3) are imported only for a bucket: a folder's start does not pay."""
    if not isinstance(settings.model_repository, str):
        return None
    from server.storage.location import parse_bucket_url
    from server.storage.mirror import BucketMirror, default_cache_dir

    location = parse_bucket_url(settings.model_repository)
    cache_dir = Path(settings.repository_cache_dir) if settings.repository_cache_dir else default_cache_dir()
    return BucketMirror(
        location,
        cache_dir,
        settle_s=settings.repository_settle_secs,
        max_objects=settings.repository_max_objects,
        max_bytes=settings.repository_max_bytes,
    )


def _reloading_tls(settings: Settings, listener: str, alpn: tuple[str, ...]) -> ReloadingTls | None:
    files = tls_files(settings, listener)
    return ReloadingTls(files, alpn) if files is not None else None


def _settle_garbage_collector() -> None:
    """Moves what start-up allocated (modules, models, protobuf descriptors) out of the
    collector's sight: the many short-lived objects of each request are then collected without
    walking it all again (the collections stay; only their cost shrinks)."""
    gc.collect()
    gc.freeze()


async def serve(settings: Settings) -> bool:
    """Runs until SIGTERM/SIGINT; False when the exit timeout cut in-flight work short."""
    server = Server(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, server.request_stop)
    if server.tls.listeners:  # otherwise SIGHUP keeps its default (the process ends), as before
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGHUP, server.reload_tls)
    await server.run()
    return server.clean_exit
