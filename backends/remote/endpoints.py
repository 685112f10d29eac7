"""The endpoints of one remote model: which there are (the listed ones, or a DNS name's
addresses, resolved again every ``resolve_interval_s`` off the event loop), which are healthy
(ServerReady and ModelReady every ``health_interval_ms``), and what each has done (its metrics).

An endpoint that fails a call or a check is ejected at once; while out it is checked again after
a backoff that doubles from the health interval up to 8 times it, and it returns to rotation
the first time a check passes. The pool tells its listener (the scheduler, which keeps one
queue per endpoint) when endpoints appear, disappear or are ejected."""

from __future__ import annotations

import asyncio
import bisect
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from backends.common.errors import ClipperdError, Unavailable
from backends.common.tensors import Tensors
from backends.remote.client import CallSpec, RemoteClient, make_client
from backends.remote.errors import EndpointFailure
from backends.remote.settings import MAX_ENDPOINTS, Address, RemoteSettings

log = logging.getLogger(__name__)

MAX_BACKOFF_INTERVALS = 8  # an ejected endpoint is checked at least every 8 health intervals
# upper bounds (seconds) of the remote-call latency histogram's buckets
LATENCY_BOUNDS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class EndpointStatistics:
    """One endpoint's counters, as the metrics endpoint exports them."""

    endpoint: str
    healthy: bool = False
    requests: int = 0  # remote calls that carried a batch
    failures: int = 0  # of which the endpoint failed (connection, UNAVAILABLE, timeout)
    ejections: int = 0  # times it was taken out of rotation
    in_flight: int = 0  # batches sent and not answered yet
    latency_s: float = 0.0  # answered calls' round trips, summed
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_S) + 1))

    def observe(self, seconds: float) -> None:
        self.latency_s += seconds
        self.latency_buckets[bisect.bisect_left(LATENCY_BOUNDS_S, seconds)] += 1


class Endpoint:
    """One remote server: its client, its health, its counters."""

    def __init__(self, address: str, client: RemoteClient) -> None:
        self.address = address
        self.client = client
        self.stats = EndpointStatistics(address)
        self.reason = "not checked yet"  # why it is out of rotation
        self.strikes = 0  # failures in a row: the backoff's exponent
        self.check_at = 0.0  # monotonic time of its next check while ejected
        self.watch: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        return self.stats.healthy

    async def infer(self, inputs: Tensors) -> Tensors:
        """One batch through the client, counted."""
        stats = self.stats
        stats.requests += 1
        stats.in_flight += 1
        start = time.perf_counter()
        try:
            outputs = await self.client.infer(inputs)
        except EndpointFailure:
            stats.failures += 1
            raise
        finally:
            stats.in_flight -= 1
        stats.observe(time.perf_counter() - start)
        return outputs


class PoolListener(Protocol):
    async def endpoint_added(self, endpoint: Endpoint) -> None: ...

    async def endpoint_removed(self, endpoint: Endpoint) -> None: ...

    def endpoint_ejected(self, endpoint: Endpoint) -> None: ...


class EndpointPool:
    """The endpoints of one model version and the tasks that resolve and check them."""

    def __init__(
        self, settings: RemoteSettings, spec: CallSpec, client: Callable[[str, CallSpec], RemoteClient] = make_client
    ) -> None:
        self.settings = settings
        self.endpoints: dict[str, Endpoint] = {}
        self._spec = spec
        self._make_client = client
        self._listener: PoolListener | None = None
        self._resolver: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def ready(self) -> bool:
        """At least one endpoint is in rotation."""
        return any(e.healthy for e in self.endpoints.values())

    def unavailable(self) -> Unavailable:
        """The error of a request that finds no endpoint in rotation, with each one's reason."""
        reasons = "; ".join(f"{e.address}: {e.reason}" for e in list(self.endpoints.values())[:4])
        more = f" (and {len(self.endpoints) - 4} more)" if len(self.endpoints) > 4 else ""
        what = reasons + more if reasons else f"'{self.settings.source}' resolves to no address"
        return Unavailable(f"model '{self.settings.model}': no remote endpoint is healthy ({what})")

    async def start(self, listener: PoolListener) -> None:
        """Resolves the endpoints (a name that does not resolve fails the load), checks each
        once, then keeps resolving and checking them."""
        self._listener = listener
        addresses = await self._resolve()
        await asyncio.gather(*(self._add(a, check_first=True) for a in addresses))
        for endpoint in self.endpoints.values():
            endpoint.watch = asyncio.get_running_loop().create_task(self._watch(endpoint, check_first=False))
        if self.settings.resolve:
            self._resolver = asyncio.get_running_loop().create_task(self._resolve_loop())

    def eject(self, endpoint: Endpoint, reason: str) -> None:
        """Out of rotation at once (a failed call or check); checked again after the backoff."""
        endpoint.reason = reason
        endpoint.strikes += 1
        interval = self.settings.health_interval_s
        backoff = min(interval * 2 ** (endpoint.strikes - 1), interval * MAX_BACKOFF_INTERVALS)
        endpoint.check_at = time.monotonic() + backoff
        if not endpoint.healthy:
            return
        endpoint.stats.healthy = False
        endpoint.stats.ejections += 1
        log.warning("model '%s': remote endpoint %s ejected: %s", self.settings.model, endpoint.address, reason)
        if self._listener is not None:
            self._listener.endpoint_ejected(endpoint)

    def _restore(self, endpoint: Endpoint) -> None:
        endpoint.strikes = 0
        endpoint.reason = ""
        if not endpoint.healthy:
            endpoint.stats.healthy = True
            log.info("model '%s': remote endpoint %s is healthy", self.settings.model, endpoint.address)

    async def close(self) -> None:
        self._closed = True
        tasks = [t for t in (self._resolver, *(e.watch for e in self.endpoints.values())) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(e.client.close() for e in self.endpoints.values()), return_exceptions=True)

    # -- health ---------------------------------------------------------------------------------

    async def _check(self, endpoint: Endpoint) -> None:
        try:
            await endpoint.client.check_ready()
        except ClipperdError as error:
            detail = error.detail if isinstance(error, EndpointFailure) else error.message
            self.eject(endpoint, detail)
            return
        except Exception as error:  # a client bug must not end the watch: the endpoint is out
            self.eject(endpoint, f"{type(error).__name__}: {error}")
            return
        self._restore(endpoint)

    async def _watch(self, endpoint: Endpoint, check_first: bool) -> None:
        if check_first:
            await self._check(endpoint)
        while True:
            await asyncio.sleep(self.settings.health_interval_s)
            if endpoint.healthy or time.monotonic() >= endpoint.check_at:
                await self._check(endpoint)

    # -- the set of endpoints -------------------------------------------------------------------

    async def _add(self, address: str, check_first: bool) -> None:
        endpoint = Endpoint(address, self._make_client(address, self._spec))
        self.endpoints[address] = endpoint
        if check_first:
            await self._check(endpoint)
        assert self._listener is not None
        await self._listener.endpoint_added(endpoint)

    async def _remove(self, address: str) -> None:
        endpoint = self.endpoints.pop(address)
        if endpoint.watch is not None:
            endpoint.watch.cancel()
        endpoint.stats.healthy = False
        assert self._listener is not None
        await self._listener.endpoint_removed(endpoint)  # its queued requests go elsewhere
        await endpoint.client.close()

    async def _resolve_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.settings.resolve_interval_s)
            try:
                addresses = await self._resolve()
            except ClipperdError as error:  # keep serving the endpoints known
                log.warning("%s", error.message)
                continue
            await self._update(addresses)

    async def _update(self, addresses: list[str]) -> None:
        for gone in [a for a in self.endpoints if a not in addresses]:
            await self._remove(gone)
        for address in addresses:
            if address not in self.endpoints:
                await self._add(address, check_first=True)
                self.endpoints[address].watch = asyncio.get_running_loop().create_task(
                    self._watch(self.endpoints[address], check_first=False)
                )

    async def _resolve(self) -> list[str]:
        """The endpoints' addresses now: the listed ones, or the name's (sorted, at most
        MAX_ENDPOINTS), resolved on the loop's executor within the call timeout."""
        if not self.settings.resolve:
            return [str(a) for a in self.settings.addresses]
        name = self.settings.addresses[0]
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(name.host, name.port, type=socket.SOCK_STREAM), self.settings.timeout_s
            )
        except (OSError, TimeoutError) as error:
            what = f"model '{self.settings.model}': remote endpoints '{name}'"
            raise Unavailable(f"{what} do not resolve: {error or 'timed out'}") from None
        found = sorted({str(Address(str(info[4][0]), name.port)) for info in infos})
        if len(found) > MAX_ENDPOINTS:
            log.warning("'%s' resolves to %d addresses: the first %d are used", name, len(found), MAX_ENDPOINTS)
        return found[:MAX_ENDPOINTS]
