"""Triton's generate extension over HTTP: ``/generate`` (one JSON answer) and
``/generate_stream`` (server-sent events), with curl (a real subprocess) and an HTTP client;
inputs mapped from JSON fields as Triton maps them; a client that disconnects mid-stream stops
the model; hostile bodies are 400 with a clear message and the server serves on."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serverproc import ServerProcess, running
from tests.streaming_models import build_repository, wait_for

pytestmark = pytest.mark.timeout(120)
REPEAT = ("repeat_int32", "repeat_generator")
MAX_BODY = 1024 * 1024  # the server's body limit here, so that "huge" is quick to send


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[tuple[ServerProcess, Path]]:
    repo, marker = build_repository(tmp_path_factory.mktemp("generate"))
    with running(repo, "--http-max-input-size", str(MAX_BODY), log_dir=logs_dir) as server:
        yield server, marker


@pytest.fixture
def server(served: tuple[ServerProcess, Path]) -> ServerProcess:
    return served[0]


def curl(url: str, body: str | bytes) -> tuple[int, dict[str, str], str]:
    """(status, headers, body) of a POST made by curl itself (-N: events as they come)."""
    done = subprocess.run(
        ["curl", "-sS", "-N", "-i", "-X", "POST", url, "-H", "Content-Type: application/json", "--data-binary", "@-"],
        input=body if isinstance(body, bytes) else body.encode(),
        capture_output=True,
        timeout=60,
        check=True,
    )
    head, _, text = done.stdout.decode().partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, text


def events(text: str) -> list[dict[str, Any]]:
    """The JSON of each server-sent event (``data: {...}`` and a blank line)."""
    chunks = [chunk for chunk in text.split("\n\n") if chunk]
    assert all(chunk.startswith("data: ") for chunk in chunks), text
    return [json.loads(chunk[len("data: ") :]) for chunk in chunks]


@pytest.mark.parametrize("model", REPEAT)
def test_generate_stream_with_curl(server: ServerProcess, model: str) -> None:
    body = json.dumps({"id": "42", "IN": [4, 5, 6], "DELAY": [1, 1, 1], "WAIT": 0})
    status, headers, text = curl(f"http://{server.http_url}/v2/models/{model}/generate_stream", body)
    assert status == 200
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    expected = [
        {"model_name": model, "model_version": "1", "id": "42", "OUT": value, "IDX": index}
        for index, value in enumerate([4, 5, 6])
    ]
    assert events(text) == expected


@pytest.mark.parametrize("model", REPEAT)
def test_generate_with_curl_one_answer(server: ServerProcess, model: str) -> None:
    url = f"http://{server.http_url}/v2/models/{model}/versions/1/generate"
    status, headers, text = curl(url, json.dumps({"IN": 7, "DELAY": 0, "WAIT": [0]}))
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert json.loads(text) == {"model_name": model, "model_version": "1", "OUT": 7, "IDX": 0}
    status, _, text = curl(url, json.dumps({"IN": [1, 2], "DELAY": [0, 0], "WAIT": 0}))
    assert status == 500
    assert "exactly 1 answer" in json.loads(text)["error"]


def test_generate_on_a_model_that_is_not_decoupled(server: ServerProcess) -> None:
    """identity_fp32 (max_batch_size 64, dims [16]): a flat list of 16 fills [1, 16]; the
    answer's 16 elements come back as a list; a parameter rides along."""
    body = json.dumps({"INPUT0": list(range(16)), "parameters": {"temperature": 0.5}})
    status, _, text = curl(f"http://{server.http_url}/v2/models/identity_fp32/generate", body)
    assert status == 200
    assert json.loads(text)["OUTPUT0"] == [float(v) for v in range(16)]
    status, _, text = curl(f"http://{server.http_url}/v2/models/identity_fp32/generate_stream", body)
    assert status == 200
    assert events(text)[0]["OUTPUT0"] == [float(v) for v in range(16)]


def test_generate_stream_with_an_http_client_reads_events_as_they_come(server: ServerProcess) -> None:
    connection = http.client.HTTPConnection(server.http_url, timeout=30)
    try:
        body = json.dumps({"IN": [1, 2, 3, 4], "DELAY": [0, 50, 50, 50], "WAIT": 0})
        connection.request("POST", "/v2/models/repeat_generator/generate_stream", body)
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Transfer-Encoding") == "chunked"
        got = events(response.read().decode())
        assert [(e["OUT"], e["IDX"]) for e in got] == [(1, 0), (2, 1), (3, 2), (4, 3)]
        connection.request("GET", "/v2/health/ready")  # the connection is kept alive after a stream
        assert connection.getresponse().status == 200
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("model", "prefix"),
    [("endless_triton", "cancelled-"), ("endless_generator", "closed-"), ("endless_async", "closed-")],
)
def test_disconnecting_stops_the_model(served: tuple[ServerProcess, Path], model: str, prefix: str) -> None:
    server, marker = served
    before = {p.name for p in marker.iterdir() if p.name.startswith(prefix)}
    connection = http.client.HTTPConnection(server.http_url, timeout=30)
    connection.request("POST", f"/v2/models/{model}/generate_stream", json.dumps({"N": 0}))
    response = connection.getresponse()
    assert response.status == 200
    assert response.fp is not None
    for _ in range(3):  # a few events: the model is answering
        assert response.fp.readline()  # the chunk size
        assert response.fp.readline().startswith(b"data: ")
        response.fp.readline()  # the event's blank line
        response.fp.readline()  # the chunk's end
    connection.close()  # the client goes away mid-stream
    wait_for(lambda: {p.name for p in marker.iterdir() if p.name.startswith(prefix)} - before, f"{model} stopped")
    status, _, text = curl(
        f"http://{server.http_url}/v2/models/repeat_int32/generate", json.dumps({"IN": 3, "DELAY": 0, "WAIT": 0})
    )
    assert (status, json.loads(text)["OUT"]) == (200, 3)


HOSTILE = [
    (b"not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"IN": "seven", "DELAY": [0], "WAIT": 0}', "input 'IN' (INT32) takes integers"),
    (b'{"IN": [1.5], "DELAY": [0], "WAIT": 0}', "takes integers"),
    (b'{"IN": [true], "DELAY": [0], "WAIT": 0}', "takes integers"),
    (b'{"IN": [[1]], "DELAY": [0], "WAIT": 0}', "flat list of scalars"),
    (b'{"IN": [1], "DELAY": [-1], "WAIT": 0}', "integers from 0 to"),
    (b'{"IN": [1], "DELAY": [0], "WAIT": [0, 0]}', "do not fill its shape"),
    (b'{"IN": [1], "DELAY": [0], "WAIT": 0, "unknown": {"a": 1}}', "'unknown' is not an input"),
    (b'{"IN": [1], "DELAY": [0], "WAIT": 0, "id": 5}', "'id' must be a string"),
    (b'{"IN": [1], "DELAY": [0], "WAIT": 0, "parameters": []}', "'parameters' must be a JSON object"),
    (b'{"IN": [1], "DELAY": [0], "WAIT": 0, "parameters": {"IN": [2]}}', "given twice"),
    (b'{"IN": [1], "DELAY": [0]}', "WAIT"),
]


@pytest.mark.parametrize(("body", "message"), HOSTILE)
@pytest.mark.parametrize("endpoint", ["generate", "generate_stream"])
def test_hostile_bodies_are_400(server: ServerProcess, endpoint: str, body: bytes, message: str) -> None:
    status, headers, text = curl(f"http://{server.http_url}/v2/models/repeat_int32/{endpoint}", body)
    assert status == 400, text
    assert headers["content-type"] == "application/json"
    assert message in json.loads(text)["error"]


def test_a_huge_body_is_refused_and_the_server_serves_on(server: ServerProcess) -> None:
    huge = b'{"IN": [' + b"1," * MAX_BODY + b'1], "DELAY": [0], "WAIT": 0}'
    status, _, text = curl(f"http://{server.http_url}/v2/models/repeat_int32/generate_stream", huge)
    assert status == 413, text
    status, _, text = curl(
        f"http://{server.http_url}/v2/models/repeat_int32/generate", json.dumps({"IN": 2, "DELAY": 0, "WAIT": 0})
    )
    assert (status, json.loads(text)["OUT"]) == (200, 2)


def test_a_slow_sse_reader_holds_the_model_back(served: tuple[ServerProcess, Path]) -> None:
    """200 answers of 1 MiB (about 2 MB of JSON each) to a client that reads nothing: the model
    is held back after a few (the request's bound, the socket buffers), the server's memory does
    not grow by the 400 MB; when the client leaves, the model stops there."""
    server, marker = served
    assert server.proc is not None
    count = marker / "big-count"
    count.unlink(missing_ok=True)
    rss_before = _rss_mib(server.proc.pid)
    body = json.dumps({"N": 200}).encode()
    head = b"POST /v2/models/big_answers/generate_stream HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    client = socket.create_connection(("127.0.0.1", server.http_port))
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    try:
        client.sendall(head + body)
        wait_for(lambda: count.exists() and int(count.read_text() or 0) > 0, "the model started")
        held = []
        for _ in range(30):  # three seconds of watching: the count must stay far below 200
            held.append(int(count.read_text() or 0))
            time.sleep(0.1)
        assert max(held) < 40, f"the model was not held back: it produced {max(held)} answers"
        assert _rss_mib(server.proc.pid) - rss_before < 150
    finally:
        client.close()
    stopped = int(count.read_text() or 0)
    assert stopped < 200
    wait_for(lambda: server.proc is not None and server.proc.poll() is None, "the server serves on")
    status, _, text = curl(
        f"http://{server.http_url}/v2/models/repeat_int32/generate", json.dumps({"IN": 4, "DELAY": 0, "WAIT": 0})
    )
    assert (status, json.loads(text)["OUT"]) == (200, 4)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")
