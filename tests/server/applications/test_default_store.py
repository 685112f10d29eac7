"""Where the default application store lives: never inside a bucket's local cache copy."""

from pathlib import Path

import pytest

from server.applications.state import default_sqlite


def test_a_writable_folder_keeps_its_state_inside(tmp_path: Path) -> None:
    assert default_sqlite(tmp_path).path == tmp_path / ".clipperd" / "applications.sqlite"


def test_a_bucket_keeps_its_state_in_the_state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    one = default_sqlite("s3://bucket/models")
    other = default_sqlite("s3://bucket/other")
    assert one.path.parent == tmp_path / "clipperd"
    assert one.path != other.path  # two repositories never share a file
    assert "is a bucket, read only" in one.why
