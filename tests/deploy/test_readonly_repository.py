"""A read-only model repository: the server writes nothing into it. Application state (the
default SQLite store) goes to $XDG_STATE_HOME/clipperd instead, survives a restart there, and
the log says where. The folder is really read-only: a read-only bind mount as root (root's
writes ignore mode bits), the mode bits otherwise."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from clipperd_admin import ApplicationAdmin
from server.applications.state import _without_password
from tests.appmodels import X, add_model, call, predict
from tests.serverproc import running

pytestmark = pytest.mark.timeout(180)


@contextlib.contextmanager
def read_only(folder: Path, view: Path) -> Iterator[Path]:
    """``folder`` seen read-only (at ``view`` when root mounts it there)."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")] if p.is_dir()}
        for path in modes:
            path.chmod(modes[path] & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        try:
            yield folder
        finally:
            for path, mode in modes.items():
                path.chmod(mode)
        return
    view.mkdir()
    run = subprocess.run(["mount", "--bind", str(folder), str(view)], capture_output=True, text=True, check=False)
    if run.returncode != 0:
        pytest.skip(f"root without mount rights here: {run.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], check=True, capture_output=True)
        yield view
    finally:
        subprocess.run(["umount", str(view)], check=True, capture_output=True)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every entry under ``folder`` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*")}


def test_a_read_only_repository_is_left_untouched_and_state_goes_to_xdg_state_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repository, state_home = tmp_path / "models", tmp_path / "state"
    add_model(repository, "one_a", value=1)
    add_model(repository, "two", value=2)
    before = snapshot(repository)
    monkeypatch.setenv("XDG_STATE_HOME", str(state_home))
    with read_only(repository, tmp_path / "ro") as view:
        # the test means something only if the folder is really read-only
        with pytest.raises(OSError, match=r"Read-only file system|Permission denied"):
            (view / "probe").touch()
        with running(view, log_dir=tmp_path) as server:
            admin = ApplicationAdmin(server.http_url)
            admin.register_application("kept", ["one_a", "two"], policy="exp4", default_output=-1, slo_micros=5_000_000)
            for i in range(4):
                assert call(server, "POST", "/kept/update", {"input": [float(i), 0, 0, 0], "label": 2})[0] == 200
            learnt = admin.get_application("kept")["state"]["weights"]
            assert predict(server, "kept", {"input": X})["default"] is False
        log = server.log()
        with running(view, log_dir=tmp_path) as again:  # the state outlives the process
            assert ApplicationAdmin(again.http_url).get_application("kept")["state"]["weights"] == learnt
    assert snapshot(repository) == before  # no .clipperd, no __pycache__, nothing
    files = sorted(p.name for p in (state_home / "clipperd").iterdir())
    assert len(files) >= 1
    assert files[0].startswith("applications-")
    assert files[0].endswith(".sqlite")
    line = next(line for line in log.splitlines() if "application state:" in line)
    assert f"the model repository {view} is not writable here, so nothing is written there" in line
    assert f"SQLite at {state_home / 'clipperd' / files[0]} (per replica" in line


def test_a_writable_repository_keeps_its_state_inside(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    add_model(repository, "one_a", value=1)
    with running(repository, log_dir=tmp_path) as server:
        ApplicationAdmin(server.http_url).register_application("inside", ["one_a"], default_output=-1, slo_micros=1000)
    assert (repository / ".clipperd" / "applications.sqlite").is_file()
    assert f"application state: SQLite at {repository}/.clipperd/applications.sqlite (per replica" in server.log()


def test_the_log_never_shows_a_redis_password() -> None:
    assert _without_password("redis://:s3cret@redis:6379/0") == "redis://:***@redis:6379/0"
    assert _without_password("rediss://user:s3cret@h:1/2") == "rediss://user:***@h:1/2"
    assert _without_password("redis://h:6379/0") == "redis://h:6379/0"
