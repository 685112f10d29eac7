"""Decoupled models over gRPC ModelStreamInfer, as tritonclient's ``start_stream`` /
``async_stream_infer`` and perf_analyzer ``--streaming`` use it: zero to many answers per
request in Triton's order, ``triton_final_response`` on each, empty final answers when asked;
a cancelled stream stops its model; a reader that does not read holds the model back (bounded
memory); ModelInfer on a decoupled model is UNIMPLEMENTED and the server serves on."""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.serverproc import ServerProcess, perf_analyzer, running
from tests.streaming_models import build_repository, wait_for

pytestmark = pytest.mark.timeout(180)
WAIT_S = 30.0
REPEAT = ("repeat_int32", "repeat_generator")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[tuple[ServerProcess, Path]]:
    repo, marker = build_repository(tmp_path_factory.mktemp("decoupled"))
    with running(repo, log_dir=logs_dir) as server:
        yield server, marker


@pytest.fixture
def server(served: tuple[ServerProcess, Path]) -> ServerProcess:
    return served[0]


class Stream:
    """tritonclient's stream, each callback's (result, error) put in a queue."""

    def __init__(self, url: str) -> None:
        self.client = grpcclient.InferenceServerClient(url)
        self.answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self.client.start_stream(callback=self._callback)

    def _callback(self, result: Any, error: Any) -> None:
        self.answers.put((result, error))

    def next(self) -> tuple[Any, Any]:
        return self.answers.get(timeout=WAIT_S)

    def close(self, cancel: bool = False) -> None:
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


def repeat_inputs(values: list[int], delays: list[int] | None = None, wait: int = 0) -> list[grpcclient.InferInput]:
    delays = delays if delays is not None else [0] * len(values)
    tensors = [
        grpcclient.InferInput("IN", [len(values)], "INT32"),
        grpcclient.InferInput("DELAY", [len(delays)], "UINT32"),
        grpcclient.InferInput("WAIT", [1], "UINT32"),
    ]
    tensors[0].set_data_from_numpy(np.array(values, np.int32))
    tensors[1].set_data_from_numpy(np.array(delays, np.uint32))
    tensors[2].set_data_from_numpy(np.array([wait], np.uint32))
    return tensors


def final_flag(result: Any) -> bool:
    return bool(result.get_response().parameters["triton_final_response"].bool_param)


def collect(stream: Stream, count: int) -> list[Any]:
    """``count`` answers (errors fail the test)."""
    got = []
    for _ in range(count):
        result, error = stream.next()
        assert error is None, error
        got.append(result)
    return got


@pytest.mark.parametrize("model", REPEAT)
def test_repeat_answers_as_triton_defines_them(server: ServerProcess, model: str) -> None:
    stream = Stream(server.url)
    try:
        stream.client.async_stream_infer(model, repeat_inputs([4, 5, 6], [5, 5, 5]), request_id="a")
        stream.client.async_stream_infer(model, repeat_inputs([7, 8]), request_id="b")
        stream.client.async_stream_infer(
            model, repeat_inputs([9], [1]), request_id="c", enable_empty_final_response=True
        )
        answers = collect(stream, 3 + 2 + 2)
    finally:
        stream.close()
    by_id: dict[str, list[Any]] = {}
    for result in answers:
        by_id.setdefault(result.get_response().id, []).append(result)
    outs = {key: [(r.as_numpy("OUT"), r.as_numpy("IDX")) for r in rs] for key, rs in by_id.items()}
    # without the empty final response: the last answer with outputs carries no final flag, and
    # the final flag itself is not sent, so "a" and "b" end when their last answer is there
    assert [(o.tolist(), i.tolist()) for o, i in outs["a"]] == [([4], [0]), ([5], [1]), ([6], [2])]
    assert [(o.tolist(), i.tolist()) for o, i in outs["b"]] == [([7], [0]), ([8], [1])]
    assert outs["c"][0][0].tolist() == [9]
    assert outs["c"][0][1].tolist() == [0]
    assert outs["c"][1] == (None, None)  # the empty final response, asked for
    assert [final_flag(r) for r in by_id["c"]] == [False, True]
    assert not any(final_flag(r) for r in by_id["a"] + by_id["b"])


def test_without_empty_final_only_answers_with_outputs_arrive(server: ServerProcess) -> None:
    """Request "z" asks for empty finals and sends no values: exactly one (empty, final) answer;
    request "y" sends none and does not ask: nothing at all (its end is not reported)."""
    stream = Stream(server.url)
    try:
        stream.client.async_stream_infer("repeat_int32", repeat_inputs([]), request_id="y")
        stream.client.async_stream_infer(
            "repeat_int32", repeat_inputs([]), request_id="z", enable_empty_final_response=True
        )
        stream.client.async_stream_infer("repeat_int32", repeat_inputs([3]), request_id="x")
        first, second = stream.next(), stream.next()
    finally:
        stream.close()
    results = sorted([first, second], key=lambda pair: pair[0].get_response().id)
    assert [r.get_response().id for r, _ in results] == ["x", "z"]
    assert results[0][0].as_numpy("OUT").tolist() == [3]
    assert results[1][0].as_numpy("OUT") is None
    assert final_flag(results[1][0])
    assert stream.answers.empty()


def test_a_model_error_travels_in_the_stream_which_stays_open(server: ServerProcess) -> None:
    stream = Stream(server.url)
    try:
        stream.client.async_stream_infer("repeat_int32", repeat_inputs([1, 2], [0]), request_id="bad")
        _, error = stream.next()
        assert isinstance(error, InferenceServerException)
        assert "IN and DELAY must have the same shape" in error.message()
        stream.client.async_stream_infer("repeat_int32", repeat_inputs([5]), request_id="good")
        result, error = stream.next()
        assert error is None
        assert result.as_numpy("OUT").tolist() == [5]
    finally:
        stream.close()


def test_send_after_final_raises_in_the_model(served: tuple[ServerProcess, Path]) -> None:
    server, marker = served
    stream = Stream(server.url)
    try:
        n = grpcclient.InferInput("N", [1], "INT32")
        n.set_data_from_numpy(np.array([1], np.int32))
        stream.client.async_stream_infer("send_after_final", [n], enable_empty_final_response=True)
        result, error = stream.next()
        assert error is None
        assert result.as_numpy("OUT").tolist() == [1]
        assert final_flag(result)
    finally:
        stream.close()
    wait_for(lambda: (marker / "after-final").exists(), "the model recorded its second send")
    assert "Response sender has been closed" in (marker / "after-final").read_text()


def test_execute_returning_responses_is_an_error_of_its_requests(server: ServerProcess) -> None:
    stream = Stream(server.url)
    try:
        n = grpcclient.InferInput("N", [1], "INT32")
        n.set_data_from_numpy(np.array([1], np.int32))
        stream.client.async_stream_infer("returns_list", [n])
        _, error = stream.next()
        assert isinstance(error, InferenceServerException)
        assert "must return None" in error.message()
    finally:
        stream.close()


@pytest.mark.parametrize("model", REPEAT)
def test_model_infer_on_a_decoupled_model_is_unimplemented(server: ServerProcess, model: str) -> None:
    with grpcclient.InferenceServerClient(server.url) as client:
        with pytest.raises(InferenceServerException) as caught:
            client.infer(model, repeat_inputs([1]))
        assert caught.value.status() == "StatusCode.UNIMPLEMENTED"
        assert "decoupled" in caught.value.message()
        data = np.ones((1, 16), np.float32)
        tensor = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
        tensor.set_data_from_numpy(data)
        np.testing.assert_array_equal(client.infer("identity_fp32", [tensor]).as_numpy("OUTPUT0"), data)


def _markers(marker: Path, prefix: str) -> set[str]:
    return {p.name for p in marker.iterdir() if p.name.startswith(prefix)}


@pytest.mark.parametrize(
    ("model", "prefix"),
    [("endless_triton", "cancelled-"), ("endless_generator", "closed-"), ("endless_async", "closed-")],
)
def test_cancelling_the_stream_stops_the_model(served: tuple[ServerProcess, Path], model: str, prefix: str) -> None:
    """The model answers until it is told: is_cancelled() (Triton), its generator closed (clipperd)."""
    server, marker = served
    before = _markers(marker, prefix)
    stream = Stream(server.url)
    n = grpcclient.InferInput("N", [1], "INT32")
    n.set_data_from_numpy(np.array([0], np.int32))
    stream.client.async_stream_infer(model, [n])
    for _ in range(3):  # it is running
        result, error = stream.next()
        assert error is None, error
    stream.close(cancel=True)
    wait_for(lambda: _markers(marker, prefix) - before, f"{model} saw the cancellation")
    # and the model's instance serves the next stream
    again = Stream(server.url)
    try:
        again.client.async_stream_infer("repeat_int32", repeat_inputs([2]))
        result, error = again.next()
        assert error is None
        assert result.as_numpy("OUT").tolist() == [2]
    finally:
        again.close()


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_slow_reader_holds_the_model_back(served: tuple[ServerProcess, Path]) -> None:
    """200 answers of 1 MiB to a reader that takes none: the model is held back after a few
    dozen (the per-request and per-stream bounds, the HTTP/2 windows, the socket buffers), the
    server's memory does not grow by the 200 MiB; once read, all 200 arrive in order."""
    server, marker = served
    assert server.proc is not None
    count = marker / "big-count"
    rss_before = _rss_mib(server.proc.pid)
    gate = threading.Event()
    received: list[int] = []

    errors: list[str] = []

    def slow(result: Any, error: Any) -> None:
        gate.wait(WAIT_S * 4)  # the client's reader thread stops here: nothing more is read
        if error is not None:
            errors.append(str(error))
        received.append(-1 if error is not None else int(result.as_numpy("OUT")[0]))

    client = grpcclient.InferenceServerClient(server.url)
    client.start_stream(callback=slow)
    try:
        n = grpcclient.InferInput("N", [1], "INT32")
        n.set_data_from_numpy(np.array([200], np.int32))
        client.async_stream_infer("big_answers", [n])
        wait_for(lambda: count.exists() and int(count.read_text() or 0) > 0, "the model started")
        held: list[int] = []
        for _ in range(30):  # three seconds of watching: the count must stay far below 200
            held.append(int(count.read_text() or 0))
            time.sleep(0.1)
        # the client's windows grow with grpc's bandwidth estimate: 90 were out once on a busy machine
        assert max(held) < 120, f"the model was not held back: it produced {max(held)} answers"
        assert _rss_mib(server.proc.pid) - rss_before < 120
        gate.set()
        try:
            wait_for(lambda: len(received) == 200, "every answer arrived once read", timeout=60)
        except AssertionError as missing:  # what a failure needs to be understood
            got = f"{len(received)} answers (last {received[-3:]}), errors {errors[:3]}"
            got += f", the model at answer {count.read_text()}"
            raise AssertionError(f"{missing}: {got}; server log:\n{server.log()[-3000:]}") from None
        assert received == list(range(200))
    finally:
        gate.set()
        client.stop_stream()
        client.close()


@pytest.mark.parametrize("model", REPEAT)
def test_perf_analyzer_streaming(server: ServerProcess, tmp_path: Path, model: str) -> None:
    """100 answers per request: the client acknowledges each with WINDOW_UPDATEs, which the
    native front end must not take for a control-frame flood (it once closed the connection)."""
    command = [
        str(perf_analyzer()),
        "-m", model, "-u", server.url, "-i", "grpc", "--streaming",
        "--shape", "IN:100", "--shape", "DELAY:100", "--input-data", "zero",
        "--concurrency-range", "2", "--measurement-interval", "1000",
        "--stability-percentage", "100", "--max-trials", "10", "-f", str(tmp_path / "pa.csv"),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Response Throughput" in done.stdout
