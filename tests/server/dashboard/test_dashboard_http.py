"""The dashboard's routes over HTTP on a real server: the page and its assets with their
security headers, the feed's figures against the requests sent, and the statistics access
class (a restricted statistics API closes the dashboard too)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.server.dashboard.repo import HOSTILE, IDENTITY, dashboard_repository
from tests.serverproc import ServerProcess, running, wait_until

pytestmark = pytest.mark.timeout(120)

KEY = {"dash-key": "s3cret-value"}  # the statistics restriction's header


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repository = dashboard_repository(tmp_path_factory.mktemp("dashboard") / "models")
    restricted = "statistics:dash-key=s3cret-value"
    with running(repository, "--http-restricted-api", restricted, log_dir=tmp_path_factory.mktemp("logs")) as s:
        yield s


def get(server: ServerProcess, path: str, headers: dict[str, str] | None = None, method: str = "GET"):  # type: ignore[no-untyped-def]
    request = urllib.request.Request(f"http://{server.http_url}{path}", headers=headers or {}, method=method)
    try:
        return urllib.request.urlopen(request, timeout=10)
    except urllib.error.HTTPError as error:
        return error


def feed(server: ServerProcess) -> dict:  # type: ignore[type-arg]
    with get(server, "/v2/dashboard", KEY) as response:
        assert response.status == 200
        return json.loads(response.read())  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/dashboard", "text/html"),
        ("/dashboard/dashboard.js", "text/javascript"),
        ("/dashboard/dashboard.css", "text/css"),
        ("/dashboard/icon.svg", "image/svg+xml"),
        ("/v2/dashboard", "application/json"),
    ],
)
def test_each_part_is_served_with_its_type_and_the_security_headers(
    server: ServerProcess, path: str, content_type: str
) -> None:
    with get(server, path, KEY) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith(content_type)
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        policy = response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy
        assert "script-src 'self'" in policy
        assert "unsafe" not in policy
        assert response.headers["X-Frame-Options"] == "DENY"


def test_the_page_loads_nothing_from_elsewhere(server: ServerProcess) -> None:
    with get(server, "/dashboard", KEY) as response:
        page = response.read().decode()
    assert "http://" not in page
    assert "https://" not in page
    assert "//" not in page.replace("<!doctype", "")
    assert "<script>" not in page
    assert "style=" not in page


def test_the_dashboard_is_in_the_statistics_access_class(server: ServerProcess) -> None:
    for path in ("/dashboard", "/v2/dashboard", "/dashboard/dashboard.js"):
        with get(server, path) as refused:
            assert refused.status == 403, path
            assert "dash-key" in json.loads(refused.read())["error"]
    with get(server, "/v2/dashboard", {"dash-key": "wrong"}) as refused:
        assert refused.status == 403


def test_it_is_read_only(server: ServerProcess) -> None:
    for path in ("/dashboard", "/v2/dashboard"):
        with get(server, path, KEY, method="POST") as response:
            assert response.status == 405
            assert response.headers["Allow"] == "GET"


def test_the_feed_counts_the_requests_sent_and_measures_their_latency(server: ServerProcess) -> None:
    rows = {m["name"]: m for m in feed(server)["models"]}
    assert set(rows) >= {IDENTITY, HOSTILE}
    assert rows[HOSTILE]["state"] == "READY"  # the name as it is: escaping is the page's business
    before = rows[IDENTITY]["requests"]
    data = np.ones((1, 16), np.float32)
    with httpclient.InferenceServerClient(server.http_url) as client:
        tensor = httpclient.InferInput("INPUT0", [1, 16], "FP32")
        tensor.set_data_from_numpy(data)
        for _ in range(40):
            client.infer(IDENTITY, [tensor])
    wait_until(lambda: next(m for m in feed(server)["models"] if m["name"] == IDENTITY)["rate"] is not None, "a rate")
    row = next(m for m in feed(server)["models"] if m["name"] == IDENTITY)
    assert row["requests"] == before + 40
    assert row["failures"] == 0
    assert 0 < row["p50_ms"] <= row["p99_ms"] < 10_000
    assert row["devices"][0]["device"] == "cpu"
    assert row["devices"][0]["batch_size_cap"] == 64
    assert row["drift"] is None
    assert row["feedback"] is None
    assert feed(server)["gpus"] == [] or Path("/dev/nvidia0").exists()
