"""The load perf/soak.py drives: perf_analyzer rounds, and on the side, requests that must fail,
shared-memory regions registered, used and unregistered, and connections opened and closed.

Everything here is a real client of a real server: perf_analyzer, tritonclient, grpcio, the
standard library's HTTP client and raw sockets. Each side action records what it got, so the
soak can tell a server that answers wrongly from one that leaks."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere; the messages live at the root

from server.proto import grpc_service_pb2 as pb  # noqa: E402

MODEL = "identity_fp32"
ROW = 16  # identity_fp32: FP32 [-1, 16]
SHM_PREFIX = "clipperd_soak_"  # the soak's own /dev/shm objects (removed by the soak)
# perf_analyzer's own /dev/shm names with --shared-memory system: <input>_<stream>_<step>, <output>
PA_SHM_NAMES = ("INPUT0_", "OUTPUT0")
PA_KINDS = ("grpc", "http", "grpc-shm", "http-shm")
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
CLIENT_TIMEOUT_S = 20.0
# gRPC codes a refused request may get (anything else, or OK, is counted as unexpected)
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.FAILED_PRECONDITION,
}


@dataclass
class Endpoints:
    host: str
    grpc_port: int
    http_port: int
    metrics_port: int = 0

    @property
    def grpc(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http(self) -> str:
        return f"{self.host}:{self.http_port}"


@dataclass
class Tally:
    """What the side load got, by action and outcome (``ok``, ``refused`` or ``unexpected: ...``)."""

    counts: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, action: str, outcome: str) -> None:
        with self.lock:
            self.counts[f"{action}: {outcome.split(':')[0]}"] += 1
            if outcome.startswith("unexpected") and len(self.unexpected) < 50:
                self.unexpected.append(f"{action}: {outcome}")


# perf_analyzer


def pa_command(pa: Path, ends: Endpoints, kind: str, concurrency: int, window_ms: int) -> list[str]:
    """Three time windows of ``window_ms`` at ``concurrency``: the soak loads, it does not measure,
    so any three windows are "stable" (``-s 100000``: within 1000x of each other). Not
    ``--request-count``: perf_analyzer 2.48 hangs in that mode in about one run in 25 (every
    answer received, its workers gone, its main thread waiting for a count it never reaches;
    tests/perf/test_soak.py's CI failure, 2026-12-07)."""
    protocol = kind.split("-")[0]
    command = [str(pa), "-m", MODEL, "-i", protocol, "-u", ends.grpc if protocol == "grpc" else ends.http]
    if kind.endswith("-shm"):
        command += ["--shared-memory", "system"]
    command += ["--concurrency-range", f"{concurrency}:{concurrency}"]
    command += ["--measurement-interval", str(window_ms), "--stability-percentage", "100000"]
    return [*command, "--max-trials", "3"]


def run_pa(command: list[str], timeout_s: float, on_stuck: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One perf_analyzer run to its end: its status and, when it measured, its throughput. A run
    past ``timeout_s`` is looked at (``on_stuck``, while it still hangs) and killed."""
    started = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        diagnosis = on_stuck()
        with contextlib.suppress(OSError):  # 1: its workers have their answers and are gone
            diagnosis["pa_threads"] = len(os.listdir(f"/proc/{proc.pid}/task"))
        proc.kill()
        output, _ = proc.communicate()
        tail = output.splitlines()[-10:]
        return {"rc": None, "error": f"ran past {timeout_s:.0f} s", "diagnosis": diagnosis, "output_tail": tail}
    result: dict[str, Any] = {"rc": proc.returncode, "seconds": round(time.monotonic() - started, 2)}
    for line in output.splitlines():
        if "throughput:" in line:  # "Concurrency: 4, throughput: 1997.17 infer/sec, latency 744 usec"
            result["infer_per_s"] = float(line.split("throughput:")[1].split()[0])
    if proc.returncode != 0:
        result["error"] = " / ".join([line for line in output.splitlines() if line.strip()][-2:])
    return result


def unregister_all(ends: Endpoints) -> str:
    """What a killed perf_analyzer never did: unregister its regions (every region: the caller
    holds the side load's shared-memory lock, so the side load has none registered)."""
    with grpc.insecure_channel(ends.grpc) as channel:
        rpc = channel.unary_unary(
            "/inference.GRPCInferenceService/SystemSharedMemoryUnregister",
            request_serializer=pb.SystemSharedMemoryUnregisterRequest.SerializeToString,
            response_deserializer=pb.SystemSharedMemoryUnregisterResponse.FromString,
        )
        try:
            rpc(pb.SystemSharedMemoryUnregisterRequest(name=""), timeout=CLIENT_TIMEOUT_S)
        except grpc.RpcError as error:
            return f"unregistering its regions failed: {error.code()}"
    return "its regions unregistered"


# requests that must fail, over gRPC (the project's own messages, so every field is ours to break)


def infer_message(model: str = MODEL, datatype: str = "FP32", shape: tuple[int, ...] = (1, ROW)) -> Any:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="INPUT0", datatype=datatype, shape=list(shape))
    request.raw_input_contents.append(np.arange(ROW, dtype=np.float32).tobytes())
    return request


def bad_grpc_requests() -> dict[str, Any]:
    cases = {
        "unknown model": infer_message("no_such_model"),
        "path-like model name": infer_message("../identity_fp32"),
        "wrong datatype": infer_message(datatype="INT32"),
        "shape/bytes mismatch": infer_message(shape=(1, ROW + 1)),
        "wrong rank": infer_message(shape=(ROW,)),
        "batch over max": infer_message(shape=(65, ROW)),
        "no inputs": pb.ModelInferRequest(model_name=MODEL),
    }
    unknown_input = infer_message()
    unknown_input.inputs[0].name = "NOPE"
    cases["unknown input"] = unknown_input
    unregistered = infer_message()
    del unregistered.raw_input_contents[:]
    unregistered.inputs[0].parameters["shared_memory_region"].string_param = "no_such_region"
    unregistered.inputs[0].parameters["shared_memory_byte_size"].int64_param = 4 * ROW
    cases["unregistered shm region"] = unregistered
    return cases


def grpc_infer(channel: grpc.Channel) -> Any:
    return channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelInferResponse.FromString,
    )


def grpc_round(ends: Endpoints, tally: Tally) -> None:
    """The bad requests on one fresh channel, then a good one that must echo its input."""
    with grpc.insecure_channel(ends.grpc) as channel:
        infer = grpc_infer(channel)
        for name, request in bad_grpc_requests().items():
            try:
                infer(request, timeout=CLIENT_TIMEOUT_S)
                tally.record(f"grpc {name}", "unexpected: answered OK")
            except grpc.RpcError as error:
                code = error.code()
                tally.record(f"grpc {name}", "refused" if code in REFUSALS else f"unexpected: {code}")
        try:
            answer = infer(infer_message(), timeout=CLIENT_TIMEOUT_S)
            echoed = np.frombuffer(answer.raw_output_contents[0], dtype=np.float32)
            good = np.array_equal(echoed, np.arange(ROW, dtype=np.float32))
            tally.record("grpc good infer", "ok" if good else "unexpected: wrong output")
        except grpc.RpcError as error:
            tally.record("grpc good infer", f"unexpected: {error.code()}")


# requests that must fail, over HTTP/1.1


def json_infer(model: str = MODEL, shape: tuple[int, int] = (1, ROW)) -> bytes:
    data = list(range(ROW))
    inputs = [{"name": "INPUT0", "datatype": "FP32", "shape": list(shape), "data": data}]
    return json.dumps({"inputs": inputs}).encode()


def bad_http_requests() -> dict[str, tuple[str, bytes, dict[str, str]]]:
    infer = f"/v2/models/{MODEL}/infer"
    return {
        "malformed json": (infer, b'{"inputs": [', {}),
        "unknown model": ("/v2/models/no_such_model/infer", json_infer(), {}),
        "shape/data mismatch": (infer, json_infer(shape=(1, ROW + 1)), {}),
        "header length past body": (infer, json_infer(), {"Inference-Header-Content-Length": "99999"}),
        "header length not a number": (infer, json_infer(), {"Inference-Header-Content-Length": "x"}),
    }


def http_call(conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **headers})
    answer = conn.getresponse()
    return answer.status, answer.read()


def http_round(ends: Endpoints, tally: Tally) -> None:
    """The bad requests on one keep-alive connection, then a good one that must echo its input."""
    conn = http.client.HTTPConnection(ends.host, ends.http_port, timeout=CLIENT_TIMEOUT_S)
    try:
        for name, (path, body, headers) in bad_http_requests().items():
            status, _ = http_call(conn, path, body, headers)
            tally.record(f"http {name}", "refused" if 400 <= status < 500 else f"unexpected: HTTP {status}")
        status, raw = http_call(conn, f"/v2/models/{MODEL}/infer", json_infer(), {})
        good = status == 200 and json.loads(raw)["outputs"][0]["data"] == list(range(ROW))
        tally.record("http good infer", "ok" if good else f"unexpected: HTTP {status}")
    except (OSError, http.client.HTTPException, ValueError, KeyError) as error:
        tally.record("http round", f"unexpected: {type(error).__name__}: {error}")
    finally:
        conn.close()


# system shared memory through tritonclient, region made, registered, used, unregistered, removed


def shm_round(ends: Endpoints, protocol: str, serial: int, tally: Tally) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    import tritonclient.utils.shared_memory as shm
    from tritonclient.utils import InferenceServerException

    module: Any = grpcclient if protocol == "grpc" else httpclient
    name = f"{SHM_PREFIX}{os.getpid()}_{serial}"
    size = 4 * ROW
    data = np.arange(ROW, dtype=np.float32).reshape(1, ROW) * serial
    handle = shm.create_shared_memory_region(name, "/" + name, 2 * size)
    client = module.InferenceServerClient(ends.grpc if protocol == "grpc" else ends.http)
    try:
        shm.set_shared_memory_region(handle, [data])
        with refused_or_unexpected(tally, f"shm {protocol} register past the object", InferenceServerException):
            client.register_system_shared_memory(name + "_bad", "/" + name, size, offset=4 * size)
        client.register_system_shared_memory(name, "/" + name, 2 * size)
        answer = shm_infer(module, client, name, size)
        out = shm.get_contents_as_numpy(handle, np.float32, [1, ROW], offset=size)
        good = answer is not None and np.array_equal(out, data)
        tally.record(f"shm {protocol} infer", "ok" if good else "unexpected: wrong output")
    except InferenceServerException as error:
        tally.record(f"shm {protocol} round", f"unexpected: {error}")
    finally:
        for registered in (name, name + "_bad"):
            with contextlib.suppress(InferenceServerException):
                client.unregister_system_shared_memory(registered)
        client.close()
        shm.destroy_shared_memory_region(handle)


def shm_infer(module: Any, client: Any, region: str, size: int) -> Any:
    given = module.InferInput("INPUT0", [1, ROW], "FP32")
    given.set_shared_memory(region, size)
    wanted = module.InferRequestedOutput("OUTPUT0")
    wanted.set_shared_memory(region, size, offset=size)
    return client.infer(MODEL, [given], outputs=[wanted])


@contextlib.contextmanager
def refused_or_unexpected(tally: Tally, action: str, refusal: type[Exception]) -> Iterator[None]:
    """Records ``refused`` when the block raises ``refusal``, ``unexpected`` when it does not."""
    try:
        yield
    except refusal:
        tally.record(action, "refused")
    else:
        tally.record(action, "unexpected: accepted")


# connections opened and closed without a call, or after one


def churn(ends: Endpoints, tally: Tally) -> None:
    address = (ends.host, ends.grpc_port)
    with socket.create_connection(address, timeout=CLIENT_TIMEOUT_S):
        pass  # connected, closed at once
    with socket.create_connection(address, timeout=CLIENT_TIMEOUT_S) as s:
        s.sendall(H2_PREFACE + H2_EMPTY_SETTINGS)
        s.recv(4096)  # the server's SETTINGS
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    with socket.create_connection((ends.host, ends.http_port), timeout=CLIENT_TIMEOUT_S) as s:
        s.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: soak\r\n\r\n")
        head = s.recv(4096)
        tally.record(
            "http ready on a raw socket", "ok" if head.startswith(b"HTTP/1.1 200") else "unexpected: " + repr(head[:40])
        )
    with grpc.insecure_channel(ends.grpc) as channel:
        live = channel.unary_unary(
            "/inference.GRPCInferenceService/ServerLive",
            request_serializer=pb.ServerLiveRequest.SerializeToString,
            response_deserializer=pb.ServerLiveResponse.FromString,
        )
        ok = live(pb.ServerLiveRequest(), timeout=CLIENT_TIMEOUT_S).live
        tally.record("grpc live on a new channel", "ok" if ok else "unexpected: not live")


class SideLoad(threading.Thread):
    """Runs the side actions in turn, ``interval_s`` apart, until stopped; ``quiet()`` holds it
    between two turns so that the soak can sample a server with no client connected."""

    def __init__(self, ends: Endpoints, interval_s: float) -> None:
        super().__init__(name="side-load", daemon=True)
        self.ends = ends
        self.interval_s = interval_s
        self.tally = Tally()
        self.turns = 0
        self._stop_event = threading.Event()
        self._gate = threading.Lock()  # held for a turn, and by quiet()
        # perf_analyzer unregisters every region when it starts with --shared-memory system, the
        # side load's too: shared-memory turns and such runs take this lock, one at a time
        self.shm_lock = threading.Lock()

    def run(self) -> None:
        while not self._stop_event.is_set():
            with self._gate:
                self.turn()
            self._stop_event.wait(self.interval_s)

    def turn(self) -> None:
        self.turns += 1
        actions: list[tuple[str, Callable[[], None]]] = [
            ("grpc round", lambda: grpc_round(self.ends, self.tally)),
            ("http round", lambda: http_round(self.ends, self.tally)),
            ("shm round", self.shm_turn),
            ("churn", lambda: churn(self.ends, self.tally)),
        ]
        for action, do in actions:
            try:
                do()
            except (OSError, grpc.RpcError) as error:
                self.tally.record(action, f"unexpected: {type(error).__name__}: {error}")

    def shm_turn(self) -> None:
        with self.shm_lock:
            shm_round(self.ends, ("grpc", "http")[self.turns % 2], self.turns, self.tally)

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        with self._gate:
            yield

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=2 * CLIENT_TIMEOUT_S)
