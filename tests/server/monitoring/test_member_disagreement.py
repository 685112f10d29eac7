"""Member disagreement of applications (a drift signal that needs no label), through a real
server: Clipper's REST predict, the admin API's application metrics and /metrics."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest

from clipperd_admin import ApplicationAdmin
from tests.appmodels import X, add_model, predict
from tests.serverproc import ServerProcess, running

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("disagree")
    repository = root / "models"
    add_model(repository, "one_a", value=1)
    add_model(repository, "one_b", value=1)
    add_model(repository, "two", value=2)
    with running(repository, "--app-state", "memory://", log_dir=root) as proc:
        yield proc


def scrape(server: ServerProcess) -> str:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        return str(response.read().decode())


def test_disagreement_is_counted_per_application(server: ServerProcess) -> None:
    admin = ApplicationAdmin(server.http_url)
    admin.register_application("agree", ["one_a", "one_b"], policy="vote", default_output=-1, slo_micros=5_000_000)
    admin.register_application("split", ["one_a", "two"], policy="average", default_output=-1, slo_micros=5_000_000)
    for _ in range(3):
        predict(server, "agree", {"input": X})
        predict(server, "split", {"input": X})
    assert admin.get_application("agree")["metrics"]["member_disagreement_rate"] == 0.0
    assert admin.get_application("split")["metrics"]["member_disagreement_rate"] == 1.0
    text = scrape(server)
    assert 'clipperd_application_member_comparisons{application="agree"} 3' in text
    assert 'clipperd_application_member_disagreements{application="agree"} 0' in text
    assert 'clipperd_application_member_disagreements{application="split"} 3' in text
