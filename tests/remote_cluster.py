"""Model containers and a clipperd front end that serves them as remote models (backends/remote),
all real processes on 127.0.0.1: for the remote backend's tests, and for tests of other KServe v2
servers behind a front end (they pass their own containers' endpoints to ``remote_config``).

    cluster = RemoteCluster(tmp_path, logs_dir, models=["simple"], containers=2)
    cluster.start_containers()
    cluster.start_front({"simple": remote_config("simple", cluster.endpoints("grpc"))})
    ...
    cluster.stop()
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from tests.serverproc import EXAMPLES, ServerProcess

CONTAINER_MODELS = ("identity_fp32", "simple", "simple_string", "mlp_onnx")


def remote_config(
    name: str,
    endpoints: str,
    *,
    protocol: str = "grpc",
    remote_model: str = "",
    batching: bool = True,
    declare: str = "",
    count: int = 1,
    **parameters: str,
) -> str:
    """A front end's config.pbtxt for remote model ``name``: inputs and outputs completed from the
    remote model unless ``declare`` (pbtxt of max_batch_size, input, output) gives them;
    ``parameters`` are more config parameters (timeout_ms="1000")."""
    params = {"endpoints": endpoints, "protocol": protocol, **parameters}
    if remote_model:
        params["remote_model"] = remote_model
    lines = [f'name: "{name}"', 'backend: "remote"', declare]
    if batching:
        lines.append("dynamic_batching { }")
    lines.append(f"instance_group [ {{ kind: KIND_CPU, count: {count} }} ]")
    lines += [f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}' for k, v in params.items()]
    return "\n".join(lines) + "\n"


def write_repository(root: Path, configs: Mapping[str, str]) -> Path:
    """A model repository of the given configs (name -> config.pbtxt), each with an empty version 1."""
    root.mkdir(parents=True, exist_ok=True)
    for name, text in configs.items():
        (root / name / "1").mkdir(parents=True, exist_ok=True)
        (root / name / "config.pbtxt").write_text(text)
    return root


class RemoteCluster:
    """``containers`` clipperd model containers serving ``models`` from model_repository/, and
    (once started) a front end."""

    def __init__(
        self, workdir: Path, log_dir: Path, models: Sequence[str] = CONTAINER_MODELS, containers: int = 2
    ) -> None:
        self.workdir = workdir
        self.log_dir = log_dir
        repository = workdir / "container_repository"
        repository.mkdir(parents=True, exist_ok=True)
        for model in models:
            shutil.copytree(EXAMPLES / model, repository / model, dirs_exist_ok=True)
        self.containers = [ServerProcess(repository, log_dir=log_dir) for _ in range(containers)]
        self.front: ServerProcess | None = None

    def start_containers(self) -> None:
        for container in self.containers:
            container.start(wait_ready=False)
        for container in self.containers:
            container.wait_ready(60)

    def endpoints(self, protocol: str = "grpc", which: Sequence[int] | None = None) -> str:
        """The containers' ``host:port`` list, for the ``endpoints`` parameter."""
        chosen = [self.containers[i] for i in which] if which is not None else self.containers
        return ",".join(c.url if protocol == "grpc" else c.http_url for c in chosen)

    def start_front(self, configs: Mapping[str, str], *args: str, wait_ready: bool = True) -> ServerProcess:
        repository = write_repository(self.workdir / "front_repository", configs)
        self.front = ServerProcess(repository, *args, log_dir=self.log_dir).start(wait_ready=wait_ready)
        return self.front

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Signals container ``index`` (SIGKILL: and waits for it to be gone)."""
        container = self.containers[index]
        container.signal(sig)
        if sig == signal.SIGKILL:
            assert container.proc is not None
            container.proc.wait(10)

    def restart(self, index: int) -> None:
        """Starts container ``index`` again on its own ports."""
        self.containers[index].start(wait_ready=True)

    def stop(self) -> None:
        for server in [self.front, *self.containers]:
            if server is None or not server.is_running():
                continue
            assert server.proc is not None
            server.proc.send_signal(signal.SIGCONT)  # one left stopped would never drain
            server.stop()


def received(url: str, model: str) -> tuple[int, int]:
    """(requests, inferences) that ``model`` answered at the server at ``url`` (its statistics):
    more inferences than requests means requests carried batches of several rows."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"]
    requests = sum(int(s["inference_stats"]["success"].get("count", 0)) for s in stats)
    inferences = sum(int(s.get("inference_count", 0)) for s in stats)
    return requests, inferences


def sample_inputs(model: str, rows: int, seed: int) -> dict[str, np.ndarray]:
    """Inputs for one request to one of CONTAINER_MODELS (``rows`` rows)."""
    rng = np.random.default_rng(seed)
    if model == "identity_fp32":
        return {"INPUT0": rng.standard_normal((rows, 16)).astype(np.float32)}
    if model == "mlp_onnx":
        return {"INPUT0": rng.standard_normal((rows, 64)).astype(np.float32)}
    ints = [rng.integers(-1000, 1000, (rows, 16)).astype(np.int32) for _ in range(2)]
    if model == "simple":
        return {"INPUT0": ints[0], "INPUT1": ints[1]}
    return {
        name: np.array([str(v).encode() for v in a.reshape(-1)], dtype=object).reshape(a.shape)
        for name, a in zip(("INPUT0", "INPUT1"), ints, strict=True)
    }


def wait_for(check: object, timeout_s: float, what: str) -> float:
    """Polls ``check()`` until true; the seconds it took, or AssertionError naming ``what``."""
    start = time.monotonic()
    while not check():  # type: ignore[operator]
        assert time.monotonic() - start < timeout_s, f"{what}: not within {timeout_s} s"
        time.sleep(0.05)
    return time.monotonic() - start


class Load:
    """A closed loop of ``concurrency`` tritonclient gRPC clients that counts every answer
    (perf_analyzer stops at the first failure): successes, failures by status, and the slowest
    answer, so a test can say that nothing hung and how many failed."""

    def __init__(self, url: str, model: str, inputs: Mapping[str, np.ndarray], concurrency: int = 16) -> None:
        import threading

        self.url, self.model, self.inputs = url, model, dict(inputs)
        self.concurrency = concurrency
        self.successes = 0
        self.failures: dict[str, int] = {}
        self.messages: list[str] = []
        self.slowest_s = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(concurrency)]

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stops the clients; AssertionError if one does not come back (a request hung)."""
        self._stop.set()
        end = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, end - time.monotonic()))
        assert not any(t.is_alive() for t in self._threads), "a client never got its answer"

    @property
    def answered(self) -> int:
        return self.successes + sum(self.failures.values())

    def _run(self) -> None:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype

        tensors = []
        for name, array in self.inputs.items():
            tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        with grpcclient.InferenceServerClient(self.url) as client:
            while not self._stop.is_set():
                start = time.monotonic()
                try:
                    client.infer(self.model, tensors, client_timeout=60)
                    status = ""
                except InferenceServerException as error:
                    status, message = str(error.status()), str(error.message())
                elapsed = time.monotonic() - start
                with self._lock:
                    self.slowest_s = max(self.slowest_s, elapsed)
                    if status:
                        self.failures[status] = self.failures.get(status, 0) + 1
                        if len(self.messages) < 20:
                            self.messages.append(message)
                    else:
                        self.successes += 1
