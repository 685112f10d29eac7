"""Traces end to end: a real server started with --trace-config exports OTLP/HTTP to a real
receiver this test runs (tests/server/tracing/otlp_receiver.py); requests come from tritonclient
(gRPC and HTTP) carrying a W3C traceparent; the settings change through Triton's TraceSetting
API (both transports)."""

from __future__ import annotations

import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.server.tracing.otlp_receiver import Receiver, Span
from tests.serverproc import EXAMPLES, ServerProcess, running

pytestmark = pytest.mark.e2e

PAIR_CONFIG = """
name: "pair"
backend: "python"
max_batch_size: 2
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]
dynamic_batching { max_queue_delay_microseconds: 30000000 }
instance_group [ { kind: KIND_CPU count: 1 } ]
"""  # a batch goes when two requests are in it (or after 30 s): two concurrent requests share one
CHILDREN = {"queue", "compute", "send"}
COMPUTE_EVENTS = ["COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END"]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(EXAMPLES / "identity_fp32", root / "identity_fp32")
    shutil.copytree(EXAMPLES / "identity_fp32", root / "other")
    config = root / "other" / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "identity_fp32"', 'name: "other"'))
    (root / "pair" / "1").mkdir(parents=True)
    shutil.copy(EXAMPLES / "identity_fp32" / "1" / "model.py", root / "pair" / "1" / "model.py")
    (root / "pair" / "config.pbtxt").write_text(PAIR_CONFIG)
    return root


def _trace_flags(url: str, *extra: str) -> list[str]:
    pieces = ["mode=opentelemetry", f"opentelemetry,url={url}", "rate=1", "level=TIMESTAMPS"]
    pieces += ["opentelemetry,bsp_schedule_delay=20", *extra]
    return [arg for piece in pieces for arg in ("--trace-config", piece)]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as receiving:
        yield receiving


@pytest.fixture(scope="module")
def server(repository: Path, receiver: Receiver, logs_dir: Path) -> Iterator[ServerProcess]:
    with running(repository, *_trace_flags(receiver.url), log_dir=logs_dir) as started:
        yield started


def _traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def _grpc_infer(server: ServerProcess, model: str, headers: dict[str, str] | None = None) -> None:
    data = np.arange(16, dtype=np.float32).reshape(1, 16)
    with grpcclient.InferenceServerClient(server.url) as client:
        tensor = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
        tensor.set_data_from_numpy(data)
        answer = client.infer(model, [tensor], headers=headers, request_id="rid-grpc")
    assert np.array_equal(answer.as_numpy("OUTPUT0"), data)


def _http_infer(server: ServerProcess, model: str, headers: dict[str, str] | None = None) -> None:
    data = np.arange(16, dtype=np.float32).reshape(1, 16)
    with httpclient.InferenceServerClient(server.http_url) as client:
        tensor = httpclient.InferInput("INPUT0", [1, 16], "FP32")
        tensor.set_data_from_numpy(data)
        answer = client.infer(model, [tensor], headers=headers, request_id="rid-http")
    assert np.array_equal(answer.as_numpy("OUTPUT0"), data)


def _tree(spans: list[Span], trace_id: str) -> tuple[Span, list[Span]]:
    """The root of one trace and its children."""
    mine = [s for s in spans if s.trace_id == trace_id]
    roots = [s for s in mine if s.name == "InferRequest"]
    assert len(roots) == 1, [s.name for s in mine]
    return roots[0], [s for s in mine if s.parent_id == roots[0].span_id]


def _has_trace(trace_id: str, names: set[str]) -> Callable[[list[Span]], bool]:
    return lambda spans: names <= {s.name for s in spans if s.trace_id == trace_id}


# ---- the spans


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_spans_nest_under_the_clients_traceparent(server: ServerProcess, receiver: Receiver, transport: str) -> None:
    traceparent, trace_id, client_span = _traceparent()
    infer = _grpc_infer if transport == "grpc" else _http_infer
    infer(server, "identity_fp32", {"traceparent": traceparent})
    spans = receiver.wait_for(_has_trace(trace_id, {"InferRequest", *CHILDREN}), f"{transport} spans")
    root, children = _tree(spans, trace_id)
    assert root.parent_id == client_span  # the server's span is the client's child
    assert {c.name for c in children} == CHILDREN
    assert root.attributes["triton.model_name"] == "identity_fp32"
    assert root.attributes["triton.model_version"] == "1"
    assert root.attributes["triton.request_id"] == f"rid-{transport}"
    assert root.attributes["clipperd.transport"] == transport
    assert root.attributes["clipperd.batch.size"] == 1
    compute = next(c for c in children if c.name == "compute")
    assert compute.events == COMPUTE_EVENTS
    for child in children:  # inside the request's span, in order
        assert root.start_ns <= child.start_ns <= child.end_ns <= root.end_ns, child
    queue, send = (next(c for c in children if c.name == n) for n in ("queue", "send"))
    assert queue.end_ns <= compute.start_ns
    assert compute.end_ns <= send.start_ns


def test_a_request_without_traceparent_starts_its_own_trace(server: ServerProcess, receiver: Receiver) -> None:
    before = {s.span_id for s in receiver.roots("other")}
    _grpc_infer(server, "other")
    receiver.wait_for(lambda _: len(receiver.roots("other")) > len(before), "a root span")
    root = next(s for s in receiver.roots("other") if s.span_id not in before)
    assert root.parent_id == ""


def test_two_concurrent_requests_batched_together_share_a_batch_id(server: ServerProcess, receiver: Receiver) -> None:
    parents = [_traceparent() for _ in range(2)]
    threads = [threading.Thread(target=_grpc_infer, args=(server, "pair", {"traceparent": p[0]})) for p in parents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    spans = receiver.wait_for(
        lambda spans: all(_has_trace(p[1], {"InferRequest", "compute"})(spans) for p in parents), "batched spans"
    )
    roots = [_tree(spans, p[1])[0] for p in parents]
    ids = {r.attributes["clipperd.batch.id"] for r in roots}
    assert len(ids) == 1, ids
    for root in roots:
        assert root.attributes["clipperd.batch.size"] == 2
        assert root.attributes["clipperd.batch.requests"] == 2
    computes = [c for p in parents for c in _tree(spans, p[1])[1] if c.name == "compute"]
    assert computes[0].start_ns == computes[1].start_ns  # one execution


# ---- the settings API


def _post(server: ServerProcess, body: Any, model: str = "") -> requests.Response:
    where = f"/v2/models/{model}" if model else "/v2"
    return requests.post(f"http://{server.http_url}{where}/trace/setting", json=body, timeout=30)


def _marker(server: ServerProcess, receiver: Receiver) -> None:
    """A traced request of another model, waited for: spans of requests before it have arrived."""
    traceparent, trace_id, _ = _traceparent()
    _http_infer(server, "other", {"traceparent": traceparent})
    receiver.wait_for(_has_trace(trace_id, {"InferRequest"}), "the marker's span")


def _traced(receiver: Receiver, trace_ids: list[str]) -> list[str]:
    return [t for t in trace_ids if any(s.trace_id == t for s in receiver.roots())]


def test_rate_and_count_set_through_http_take_effect(server: ServerProcess, receiver: Receiver) -> None:
    answer = _post(server, {"trace_rate": "3"}, "identity_fp32")
    assert answer.status_code == 200, answer.text
    settings = answer.json()
    assert settings["trace_rate"] == "3"
    assert settings["trace_level"] == ["TIMESTAMPS"]  # the global one, followed
    sent = [_traceparent() for _ in range(9)]
    for traceparent, _, _ in sent:
        _http_infer(server, "identity_fp32", {"traceparent": traceparent})
    _marker(server, receiver)
    ids = [t for _, t, _ in sent]
    assert _traced(receiver, ids) == [ids[2], ids[5], ids[8]]  # Triton's rule: every third

    assert _post(server, {"trace_rate": "1", "trace_count": "2"}, "identity_fp32").json()["trace_count"] == "2"
    sent = [_traceparent() for _ in range(4)]
    for traceparent, _, _ in sent:
        _grpc_infer(server, "identity_fp32", {"traceparent": traceparent})
    _marker(server, receiver)
    assert _traced(receiver, [t for _, t, _ in sent]) == [sent[0][1], sent[1][1]]
    got = requests.get(f"http://{server.http_url}/v2/models/identity_fp32/trace/setting", timeout=30).json()
    assert got["trace_count"] == "0"
    cleared = _post(server, {"trace_rate": None, "trace_count": None}, "identity_fp32").json()
    assert (cleared["trace_rate"], cleared["trace_count"]) == ("1", "-1")  # the global ones again


def test_settings_through_grpc_trace_setting(server: ServerProcess, receiver: Receiver) -> None:
    with grpcclient.InferenceServerClient(server.url) as client:
        settings = client.get_trace_settings(as_json=True)["settings"]
        assert settings["trace_level"]["value"] == ["TIMESTAMPS"]
        assert settings["trace_rate"]["value"] == ["1"]
        assert settings["trace_mode"]["value"] == ["opentelemetry"]
        off = client.update_trace_settings("other", {"trace_level": ["OFF"]}, as_json=True)["settings"]
        assert off["trace_level"]["value"] == ["OFF"]
        sent = _traceparent()
        _grpc_infer(server, "other", {"traceparent": sent[0]})
        marker, marker_id, _ = _traceparent()
        _grpc_infer(server, "identity_fp32", {"traceparent": marker})
        receiver.wait_for(_has_trace(marker_id, {"InferRequest"}), "the marker's span")
        assert _traced(receiver, [sent[1]]) == []  # OFF for this model
        back = client.update_trace_settings("other", {"trace_level": None}, as_json=True)["settings"]
        assert back["trace_level"]["value"] == ["TIMESTAMPS"]


@pytest.mark.parametrize(
    ("body", "model", "reason"),
    [
        ({"trace_rate": "0"}, "", "trace_rate"),
        ({"trace_rate": "-5"}, "", "trace_rate"),
        ({"trace_rate": "often"}, "", "whole number"),
        ({"trace_rate": 5}, "", "expected a string"),
        ({"trace_count": "-2"}, "", "trace_count"),
        ({"trace_level": ["LOUD"]}, "", "unknown level 'LOUD'"),
        ({"trace_level": ["TENSORS"]}, "", "TENSORS is not supported"),
        ({"trace_level": ["OFF", "TIMESTAMPS"]}, "", "OFF must be the only level"),
        ({"trace_level": "TIMESTAMPS"}, "", "expected a list of strings"),
        ({"trace_file": "/tmp/x"}, "", "trace_file can not be updated"),
        ({"sample_everything": "1"}, "", "unknown trace setting"),
        ({"trace_rate": "2"}, "no_such_model", "unknown model"),
        ({"trace_rate": None}, "", "can not be cleared"),
    ],
)
def test_bad_settings_are_refused_over_http(server: ServerProcess, body: Any, model: str, reason: str) -> None:
    answer = _post(server, body, model)
    assert answer.status_code == 400, answer.text
    assert reason in answer.json()["error"]
    assert _post(server, {}).json()["trace_rate"] == "1"  # nothing changed, still serving


@pytest.mark.parametrize(
    ("settings", "model", "reason"),
    [
        ({"trace_rate": "0"}, "", "trace_rate"),
        ({"trace_rate": ["1", "2"]}, "", "expected one value"),
        ({"trace_level": ["LOUD"]}, "", "unknown level"),
        ({"trace_count": "x"}, "", "whole number"),
        ({"trace_level": ["TIMESTAMPS"]}, "no_such_model", "unknown model"),
    ],
)
def test_bad_settings_are_refused_over_grpc(
    server: ServerProcess, settings: dict[str, object], model: str, reason: str
) -> None:
    with grpcclient.InferenceServerClient(server.url) as client:
        with pytest.raises(InferenceServerException) as error:
            client.update_trace_settings(model, settings)
        assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert reason in str(error.value.message())
        assert client.get_trace_settings(as_json=True)["settings"]["trace_rate"]["value"] == ["1"]


# ---- a collector that is down or hangs


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_collector_that_is_down_does_not_break_serving(repository: Path, logs_dir: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1/traces"
    down = ServerProcess(repository, *_trace_flags(url), log_dir=logs_dir).start()
    try:
        for _ in range(20):
            _grpc_infer(down, "identity_fp32", {"traceparent": _traceparent()[0]})
            _http_infer(down, "identity_fp32")
        assert down.is_running()
    finally:
        started = time.monotonic()
        assert down.stop() == 0, down.log()  # a clean exit: the spans it could not send do not hold it
    assert time.monotonic() - started < 20, "the exit waited for the collector"
    assert "stopped" in down.log()


def test_a_hung_collector_holds_no_request_and_the_export_queue_is_bounded(
    repository: Path, logs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "120")  # the exporter waits; requests must not
    queue, batch = 8, 4
    flags = [f"opentelemetry,bsp_max_queue_size={queue}", f"opentelemetry,bsp_max_export_batch_size={batch}"]
    with Receiver() as hung:
        hung.hold()
        with running(repository, *_trace_flags(hung.url, *flags), log_dir=logs_dir) as server:
            requests_sent = 100
            for _ in range(requests_sent):
                started = time.monotonic()
                _grpc_infer(server, "identity_fp32")
                assert time.monotonic() - started < 10, "a request waited for the exporter"
            hung.release()
            spans = hung.wait_for(lambda spans: len(spans) > 0, "the held export")
            later, later_id, _ = _traceparent()
            _http_infer(server, "other", {"traceparent": later})  # its spans come after what the queue kept
            spans = hung.wait_for(_has_trace(later_id, {"InferRequest", *CHILDREN}), "later spans")
    held = [s for s in spans if s.trace_id != later_id]
    assert len(held) <= queue + batch < 4 * requests_sent  # the rest was dropped, not kept


def test_tracing_off_at_start_turns_on_through_the_api(repository: Path, logs_dir: Path) -> None:
    with Receiver() as receiving:
        flags = [
            "--trace-config",
            f"opentelemetry,url={receiving.url}",
            "--trace-config",
            "opentelemetry,bsp_schedule_delay=20",
        ]
        with running(repository, *flags, log_dir=logs_dir) as server:
            assert requests.get(f"http://{server.http_url}/v2/trace/setting", timeout=30).json()["trace_level"] == [
                "OFF"
            ]
            _grpc_infer(server, "identity_fp32", {"traceparent": _traceparent()[0]})  # not traced
            on = _post(server, {"trace_level": ["TIMESTAMPS"], "trace_rate": "1"})
            assert on.status_code == 200, on.text
            traceparent, trace_id, _ = _traceparent()
            _grpc_infer(server, "identity_fp32", {"traceparent": traceparent})
            spans = receiving.wait_for(_has_trace(trace_id, {"InferRequest", *CHILDREN}), "spans once turned on")
            assert len(receiving.roots()) == 1  # the request before was not traced
            assert {s.trace_id for s in spans} == {trace_id}


def test_the_grpcio_front_end_traces_alike(repository: Path, receiver: Receiver, logs_dir: Path) -> None:
    with running(repository, "--grpc-frontend", "grpcio", *_trace_flags(receiver.url), log_dir=logs_dir) as server:
        traceparent, trace_id, client_span = _traceparent()
        _grpc_infer(server, "identity_fp32", {"traceparent": traceparent})
        spans = receiver.wait_for(_has_trace(trace_id, {"InferRequest", *CHILDREN}), "grpcio spans")
    root, children = _tree(spans, trace_id)
    assert root.parent_id == client_span
    assert {c.name for c in children} == CHILDREN
