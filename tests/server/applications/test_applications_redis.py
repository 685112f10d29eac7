"""Two server processes share applications through a real Redis (Debian's redis-server, which
`make test` installs): a change on one replica is seen by the other."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from clipperd_admin import ApplicationAdmin, ServerError
from tests.appmodels import X, add_model, call, predict
from tests.redisproc import REDIS_SERVER, redis_running, start_redis
from tests.serverproc import running, wait_until

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (scripts/install-redis.sh)")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:

    assert REDIS_SERVER is not None
    with redis_running(tmp_path) as started:
        yield started


@pytest.fixture
def redis_url(redis_server: tuple[str, subprocess.Popen[bytes]]) -> str:
    return redis_server[0]


def _status(admin: ApplicationAdmin, name: str) -> int:
    try:
        admin.get_application(name)
    except ServerError as error:
        return error.status
    return 200


def test_two_replicas_share_applications_and_learnt_state(tmp_path: Path, redis_url: str) -> None:
    repository = tmp_path / "models"
    add_model(repository, "one_a", value=1)
    add_model(repository, "two", value=2)
    state = ("--app-state", redis_url)
    with running(repository, *state, log_dir=tmp_path) as a, running(repository, *state, log_dir=tmp_path) as b:
        admin_a, admin_b = ApplicationAdmin(a.http_url), ApplicationAdmin(b.http_url)
        admin_a.register_application("shared", ["one_a", "two"], policy="exp4", default_output=-1, slo_micros=5_000_000)
        wait_until(lambda: _status(admin_b, "shared") == 200, "the application on replica b")
        assert predict(b, "shared", {"input": X})["default"] is False

        with pytest.raises(ServerError) as error:  # the name is taken on the other replica too
            admin_b.register_application("shared", ["two"], default_output=0, slo_micros=1000)
        assert error.value.status == 409

        for i in range(6):
            assert call(a, "POST", "/shared/update", {"input": [float(i), 0, 0, 0], "label": 2})[0] == 200
        learnt = admin_a.get_application("shared")["state"]["weights"]
        assert learnt["two"] > 0.6
        wait_until(lambda: admin_b.get_application("shared")["state"]["weights"] == learnt, "the weights on b")
        assert predict(b, "shared", {"input": X})["output"] == 2.0

        admin_b.update_application("shared", confidence_threshold=0.75)
        wait_until(lambda: admin_a.get_application("shared")["confidence_threshold"] == 0.75, "the threshold on a")

        with running(repository, *state, log_dir=tmp_path) as c:  # a replica that starts later loads it all
            assert ApplicationAdmin(c.http_url).get_application("shared")["state"]["weights"] == learnt

        admin_b.delete_application("shared")
        wait_until(lambda: _status(admin_a, "shared") == 404, "the deletion on a")


def test_a_lost_redis_is_a_503_and_predictions_go_on(
    tmp_path: Path, redis_server: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url, redis_proc = redis_server
    repository = tmp_path / "models"
    add_model(repository, "one_a", value=1)
    with running(repository, "--app-state", url, log_dir=tmp_path) as server:
        admin = ApplicationAdmin(server.http_url)
        admin.register_application("fragile", ["one_a"], default_output=-1, slo_micros=5_000_000)
        redis_proc.terminate()
        redis_proc.wait(10)
        status, answer = call(server, "POST", "/fragile/update", {"input": X, "label": 1})
        assert (status, answer["cause"]) == (503, "the application state store is unavailable")
        with pytest.raises(ServerError) as error:
            admin.register_application("another", ["one_a"], default_output=-1, slo_micros=1000)
        assert error.value.status == 503
        assert predict(server, "fragile", {"input": X})["output"] == 1.0  # predictions need no store
        assert server.is_running()

        # Redis back, empty (it kept nothing): the replica follows it again and reloads from it
        back = start_redis(int(url.rsplit(":", 1)[1].split("/")[0]), tmp_path)
        try:
            wait_until(lambda: _status(admin, "fragile") == 404, "the reload from the new, empty Redis")
            admin.register_application("again", ["one_a"], default_output=-1, slo_micros=5_000_000)
            assert [a["name"] for a in admin.list_applications()] == ["again"]
        finally:
            back.terminate()
            back.wait(10)
