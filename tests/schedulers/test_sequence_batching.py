"""The sequence batcher (schedulers/sequence.py) end to end: the Triton Python accumulators of
examples/triton (direct and oldest) on a real server, through tritonclient gRPC and HTTP with
sequence_id / sequence_start / sequence_end, and perf_analyzer's sequence mode."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.serverproc import ROOT, ServerProcess, model_metric, perf_analyzer, running, wait_until

pytestmark = pytest.mark.timeout(300)

EXAMPLES = ROOT / "examples" / "triton"
DIRECT, OLDEST = "seq_accumulate_direct", "seq_accumulate_oldest"
IDLE = "seq_accumulate_idle"  # the direct accumulator with a 200 ms idle limit
LONG = "seq_accumulate_long"  # and with a 10 min one: its sequences hold their slots


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("sequences")
    for name in (DIRECT, OLDEST):
        shutil.copytree(EXAMPLES / name, repo / name)
    for name, idle_us in ((IDLE, 200_000), (LONG, 600_000_000)):
        shutil.copytree(EXAMPLES / DIRECT, repo / name)
        config = (repo / name / "config.pbtxt").read_text().replace(DIRECT, name)
        config = config.replace("max_sequence_idle_microseconds: 5000000", f"max_sequence_idle_microseconds: {idle_us}")
        (repo / name / "config.pbtxt").write_text(config)
    shutil.copytree(ROOT / "model_repository" / "identity_fp32", repo / "identity_fp32")
    return repo


@pytest.fixture(scope="module")
def server(repo: Path, logs_dir: Path) -> Iterator[ServerProcess]:
    with running(repo, "--model-control-mode", "explicit", "--load-model", "*", log_dir=logs_dir) as started:
        yield started
        assert started.is_running(), started.log()


def _input(module: object, value: int) -> object:
    tensor = module.InferInput("INPUT", [1, 1], "INT32")  # type: ignore[attr-defined]
    tensor.set_data_from_numpy(np.array([[value]], dtype=np.int32))
    return tensor


def step(client: object, model: str, value: int, seq: int | str, start: bool = False, end: bool = False) -> int:
    """One request of a sequence, over whichever client; the accumulator's answer."""
    module = grpcclient if isinstance(client, grpcclient.InferenceServerClient) else httpclient
    result = client.infer(  # type: ignore[attr-defined]
        model, [_input(module, value)], sequence_id=seq, sequence_start=start, sequence_end=end
    )
    return int(result.as_numpy("OUTPUT").reshape(-1)[0])


def run_sequence(client: object, model: str, seq: int | str, values: list[int]) -> list[int]:
    last = len(values) - 1
    return [step(client, model, v, seq, start=i == 0, end=i == last) for i, v in enumerate(values)]


@pytest.mark.parametrize("model", [DIRECT, OLDEST])
@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_the_accumulator_answers_running_sums(server: ServerProcess, model: str, transport: str) -> None:
    values = [0, 11, 7, 5, 3, 2, 0, 1]  # Triton's simple_sequence client's values
    expected = list(np.cumsum(values))
    if transport == "grpc":
        with grpcclient.InferenceServerClient(server.url) as client:
            assert run_sequence(client, model, 1001, values) == expected
    else:
        http = httpclient.InferenceServerClient(server.http_url)
        assert run_sequence(http, model, 1002, values) == expected
        http.close()


def test_string_sequence_ids(server: ServerProcess) -> None:
    with grpcclient.InferenceServerClient(server.url) as client:
        assert run_sequence(client, OLDEST, "sequence-a", [3, 4, 5]) == [3, 7, 12]


def test_interleaved_sequences_on_many_connections_never_mix(server: ServerProcess) -> None:
    """Eight threads, each with its own connection, run sequences with distinct values at once,
    alternating the transports; every answer is its own sequence's running sum."""
    failures: list[str] = []

    def worker(index: int) -> None:
        grpc = index % 2 == 0
        client: object = (
            grpcclient.InferenceServerClient(server.url) if grpc else httpclient.InferenceServerClient(server.http_url)
        )
        for model in (DIRECT, OLDEST):
            for round_ in range(3):
                seq = 5000 + 100 * index + round_
                values = [index * 1000 + k for k in range(12)]
                got = run_sequence(client, model, seq, values)
                if got != list(np.cumsum(values)):
                    failures.append(f"{model} seq {seq}: {got}")
        client.close()  # type: ignore[attr-defined]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


@pytest.mark.parametrize("model", [DIRECT, OLDEST])
def test_a_thousand_concurrent_sequences(server: ServerProcess, model: str) -> None:
    """1,000 sequences at once over asyncio gRPC (many more than the slots: most wait in the
    backlog); each gets its own sums."""

    async def one(client: grpcaio.InferenceServerClient, seq: int) -> list[int]:
        sums = []
        for k in range(5):
            tensor = grpcaio.InferInput("INPUT", [1, 1], "INT32")
            tensor.set_data_from_numpy(np.array([[seq + k]], dtype=np.int32))
            result = await client.infer(model, [tensor], sequence_id=seq, sequence_start=k == 0, sequence_end=k == 4)
            sums.append(int(result.as_numpy("OUTPUT")[0, 0]))
        return sums

    async def main() -> list[list[int]]:
        clients = [grpcaio.InferenceServerClient(server.url) for _ in range(8)]
        try:
            return await asyncio.gather(*(one(clients[s % 8], s) for s in range(10_000, 11_000)))
        finally:
            await asyncio.gather(*(c.close() for c in clients))

    with grpcclient.InferenceServerClient(server.url) as client:
        before = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
        results = asyncio.run(main())
        after = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    for seq, sums in zip(range(10_000, 11_000), results, strict=True):
        assert sums == list(np.cumsum([seq + k for k in range(5)])), seq
    inferences = int(after["inference_count"]) - int(before.get("inference_count", 0))
    executions = int(after["execution_count"]) - int(before.get("execution_count", 0))
    assert inferences == 5000
    assert executions < inferences  # sequences shared batches (of 5,000 requests, surely some)


def _error(call: object) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as error:
        call()  # type: ignore[operator]
    return error.value


def test_an_idle_sequence_expires_with_a_clear_error(server: ServerProcess) -> None:
    with grpcclient.InferenceServerClient(server.url) as client:
        expired_before = model_metric(server, "clipperd_sequences_expired", IDLE)
        assert step(client, IDLE, 5, 77, start=True) == 5
        wait_until(
            lambda: model_metric(server, "clipperd_sequences_expired", IDLE) > expired_before,
            "the idle sequence expires",
        )
        error = _error(lambda: step(client, IDLE, 1, 77))
        assert str(error.status()) == "StatusCode.INVALID_ARGUMENT"
        assert "expired" in str(error.message())
        assert "max_sequence_idle_microseconds" in str(error.message())
        assert step(client, IDLE, 2, 77, start=True, end=True) == 2  # a new start is accepted


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"sequence_id": 424242}, "START"),  # unknown sequence without start
        ({"sequence_id": -5, "sequence_start": True}, "unsigned 64-bit"),
        ({"sequence_id": 2**64, "sequence_start": True}, "unsigned 64-bit"),
        ({"sequence_id": 1.5, "sequence_start": True}, "sequence_id"),
        ({"sequence_id": 9, "sequence_start": "yes"}, "sequence_start"),
        ({"sequence_id": 9, "sequence_end": 1}, "sequence_end"),
        ({"sequence_id": "x" * 300, "sequence_start": True}, "at most"),
        ({"sequence_id": 0, "sequence_start": True}, "correlation ID"),
        ({"sequence_id": "text", "sequence_start": True}, "integer correlation IDs"),  # CORRID is UINT64
        ({}, "correlation ID"),  # no sequence at all on a sequence model
    ],
)
def test_bad_sequence_parameters_are_invalid_argument(
    server: ServerProcess, params: dict[str, object], needle: str
) -> None:
    """Over HTTP JSON, where any JSON value can be sent: 400 with a clear message, then the
    server still serves the sequence model."""
    body = {"inputs": [{"name": "INPUT", "shape": [1, 1], "datatype": "INT32", "data": [1]}], "parameters": params}
    request = urllib.request.Request(
        f"http://{server.http_url}/v2/models/{DIRECT}/infer", json.dumps(body).encode(), method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=10)
    assert error.value.code == 400
    assert needle in json.loads(error.value.read())["error"]
    with grpcclient.InferenceServerClient(server.url) as client:
        assert run_sequence(client, DIRECT, 31337, [1, 2]) == [1, 3]


def test_start_and_end_in_one_request_and_requests_after_end(server: ServerProcess) -> None:
    with grpcclient.InferenceServerClient(server.url) as client:
        assert step(client, DIRECT, 9, 606, start=True, end=True) == 9
        error = _error(lambda: step(client, DIRECT, 1, 606))
        assert str(error.status()) == "StatusCode.INVALID_ARGUMENT"
        assert "has ended" in str(error.message())
        error = _error(lambda: step(client, DIRECT, 1, 607, end=True))  # unknown, end without start
        assert str(error.status()) == "StatusCode.INVALID_ARGUMENT"


def test_a_sequence_id_on_a_model_without_sequence_batching_is_ignored(server: ServerProcess) -> None:
    """As in Triton: the dynamic batcher does not look at correlation ids."""
    data = np.ones((1, 16), dtype=np.float32)
    tensor = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    tensor.set_data_from_numpy(data)
    with grpcclient.InferenceServerClient(server.url) as client:
        result = client.infer("identity_fp32", [tensor], sequence_id=5, sequence_start=True)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)


def test_metrics_count_sequences(server: ServerProcess) -> None:
    with grpcclient.InferenceServerClient(server.url) as client:
        started = model_metric(server, "clipperd_sequences_started", OLDEST)
        ended = model_metric(server, "clipperd_sequences_ended", OLDEST)
        step(client, OLDEST, 1, "metered", start=True)
        assert model_metric(server, "clipperd_sequences_active", OLDEST) >= 1
        step(client, OLDEST, 1, "metered", end=True)
        assert model_metric(server, "clipperd_sequences_started", OLDEST) == started + 1
        assert model_metric(server, "clipperd_sequences_ended", OLDEST) == ended + 1


@pytest.mark.parametrize(("model", "protocol"), [(DIRECT, "grpc"), (OLDEST, "http")])
def test_perf_analyzer_sequences(server: ServerProcess, model: str, protocol: str) -> None:
    """perf_analyzer's sequence mode: its own START/END flags and ids; exit 0 and no errors
    (stability is not what is tested on a shared machine: any window passes). Over HTTP it runs
    --sync: at the end of an asynchronous run perf_analyzer sends each open sequence's END at
    once, while that sequence's previous request may still be in flight on another connection,
    so the END can overtake it and the late request be refused as one of an ended sequence."""
    command = [
        str(perf_analyzer()),
        "-m",
        model,
        "-u",
        server.url if protocol == "grpc" else server.http_url,
        "-i",
        protocol,
        *(["--sync"] if protocol == "http" else []),
        "--sequence-length",
        "10",
        "--sequence-id-range",
        "100000:100200",
        "--concurrency-range",
        "8",
        "--measurement-interval",
        "1000",
        "--stability-percentage",
        "100",
        "--max-trials",
        "10",
        "--input-data",
        "random",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "error" not in output.lower().replace("errors: 0", ""), output


def test_unload_ends_sequences_with_unavailable(server: ServerProcess) -> None:
    with grpcclient.InferenceServerClient(server.url) as client:
        assert step(client, IDLE, 4, 888, start=True) == 4
        client.unload_model(IDLE)
        wait_until(lambda: not client.is_model_ready(IDLE), "the model unloads")
        error = _error(lambda: step(client, IDLE, 1, 888))
        assert str(error.status()) == "StatusCode.UNAVAILABLE"
        client.load_model(IDLE)
        error = _error(lambda: step(client, IDLE, 1, 888))  # the new version does not know it
        assert str(error.status()) == "StatusCode.INVALID_ARGUMENT"
        assert step(client, IDLE, 3, 888, start=True, end=True) == 3


def test_unload_fails_the_requests_waiting_for_a_slot(server: ServerProcess) -> None:
    """LONG has 8 slots (2 instances x 4): 8 open sequences hold them, a 9th waits in the backlog
    until the model is unloaded, which answers it UNAVAILABLE."""
    with grpcclient.InferenceServerClient(server.url) as client:
        for seq in range(1, 9):
            assert step(client, LONG, seq, seq, start=True) == seq
        assert model_metric(server, "clipperd_sequences_active", LONG) == 8
        outcome: list[InferenceServerException] = []

        def ninth() -> None:
            with grpcclient.InferenceServerClient(server.url) as own:
                outcome.append(_error(lambda: step(own, LONG, 9, 9, start=True)))

        waiter = threading.Thread(target=ninth)
        waiter.start()
        wait_until(lambda: model_metric(server, "clipperd_sequence_backlog", LONG) == 1, "the 9th sequence waits")
        client.unload_model(LONG)
        waiter.join(timeout=60)
        assert outcome, "the waiting request was not answered"
        assert str(outcome[0].status()) == "StatusCode.UNAVAILABLE"
        assert "unloading" in str(outcome[0].message())
        client.load_model(LONG)
        assert run_sequence(client, LONG, 1, [5, 6]) == [5, 11]  # the new version starts afresh
