"""A client of several replicas as a Kubernetes Service gives it: each request goes to the next
endpoint in turn, and a request answered UNAVAILABLE (a refused connection is UNAVAILABLE too)
is sent once more, to the next endpoint. Anything else, a second UNAVAILABLE or a wrong answer,
is a failed request, counted and kept."""

from __future__ import annotations

import collections
import functools
import itertools
import re
import threading
from collections.abc import Callable

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

CALL_TIMEOUT_S = 30.0  # a request that hangs fails the test instead of blocking it


def add_one(client: grpcclient.InferenceServerClient, model: str, value: int) -> str:
    """An infer of ``model`` (IN + 1 = OUT, INT32 [1, 1]); '' when right, else what was wrong."""
    tensor = grpcclient.InferInput("IN", [1, 1], "INT32")
    tensor.set_data_from_numpy(np.array([[value]], dtype=np.int32))
    result = client.infer(model, [tensor], client_timeout=CALL_TIMEOUT_S)
    answer = int(result.as_numpy("OUT")[0, 0])
    return "" if answer == value + 1 else f"{model}: {value} + 1 answered {answer}"


def unavailable(error: InferenceServerException) -> bool:
    return str(error.status()) == "StatusCode.UNAVAILABLE"


def _cause(error: InferenceServerException) -> str:
    """The message without the addresses and ports that change from run to run."""
    return re.sub(r"127\.0\.0\.1:\d+", "ADDRESS", error.message() or "")[:160]


class RoundRobin:
    def __init__(self, urls: list[str]) -> None:
        self._urls = list(urls)
        self._lock = threading.Lock()
        self._turn = itertools.count()
        self._local = threading.local()
        self.ok = 0
        self.retried = 0
        self.failed: list[str] = []
        self.answered_by: collections.Counter[str] = collections.Counter()
        self.retry_causes: collections.Counter[str] = collections.Counter()

    def set_endpoints(self, urls: list[str]) -> None:
        """What the Service's endpoints are now (as Kubernetes updates them, some time after a
        pod stops being ready)."""
        with self._lock:
            self._urls = list(urls)

    def _next(self, avoid: str = "") -> str:
        with self._lock:
            urls = [u for u in self._urls if u != avoid] or self._urls
            return urls[next(self._turn) % len(urls)]

    def _client(self, url: str) -> grpcclient.InferenceServerClient:
        clients: dict[str, grpcclient.InferenceServerClient] = self._local.__dict__.setdefault("clients", {})
        if url not in clients:
            clients[url] = grpcclient.InferenceServerClient(url)
        return clients[url]

    def request(self, call: Callable[[grpcclient.InferenceServerClient], str]) -> None:
        url = self._next()
        try:
            self._done(url, call(self._client(url)))
        except InferenceServerException as error:
            if not unavailable(error):
                self._done(url, f"{url}: {error}")
                return
            with self._lock:
                self.retried += 1
                self.retry_causes[_cause(error)] += 1
            other = self._next(avoid=url)
            try:
                self._done(other, call(self._client(other)))
            except InferenceServerException as again:
                self._done(other, f"{other} after UNAVAILABLE from {url}: {again}")

    def _done(self, url: str, wrong: str) -> None:
        with self._lock:
            if wrong:
                self.failed.append(wrong)
            else:
                self.ok += 1
                self.answered_by[url] += 1

    def close(self) -> None:
        for client in self._local.__dict__.get("clients", {}).values():
            client.close()


class Load:
    """``threads`` closed-loop clients, each a request after the other through one RoundRobin,
    alternating between ``models`` (a model, an application: both answer IN + 1)."""

    def __init__(self, balancer: RoundRobin, models: tuple[str, ...], threads: int = 4) -> None:
        self.balancer = balancer
        self.models = models
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(CALL_TIMEOUT_S * 2 + 5)

    def _run(self, number: int) -> None:
        try:
            for i in itertools.count():
                if self._stop.is_set():
                    return
                model, value = self.models[i % len(self.models)], number * 1_000_000 + i
                self.balancer.request(functools.partial(add_one, model=model, value=value))
        finally:
            self.balancer.close()
