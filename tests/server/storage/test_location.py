"""Bucket URLs in Triton's syntax, and how the command line tells them from folders (no server)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from server.cli import build_parser, main, settings_from_args
from server.storage.location import BucketLocation, parse_bucket_url


@pytest.mark.parametrize(
    ("url", "bucket", "prefix", "endpoint"),
    [
        ("s3://models/repo", "models", "repo/", None),
        ("s3://models", "models", "", None),
        ("s3://models/", "models", "", None),
        ("s3://models/a/b/", "models", "a/b/", None),
        ("s3://127.0.0.1:9000/models/repo", "models", "repo/", "http://127.0.0.1:9000"),
        ("s3://minio.local:9000/models", "models", "", "http://minio.local:9000"),
        ("s3://https://s3.example.com:443/my-bucket/x/y", "my-bucket", "x/y/", "https://s3.example.com:443"),
        ("s3://http://localhost:80/b.c-d/p", "b.c-d", "p/", "http://localhost:80"),
        ("s3://[::1]:9000/models/p", "models", "p/", "http://[::1]:9000"),
    ],
)
def test_triton_urls(url: str, bucket: str, prefix: str, endpoint: str | None) -> None:
    assert parse_bucket_url(url) == BucketLocation(url, bucket, prefix, endpoint)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("gs://bucket/repo", "gs:// repositories are not supported"),
        ("as://account/container/repo", "as:// repositories are not supported"),
        ("https://host/bucket", "https:// repositories are not supported"),
        ("s3://", "is not an S3 bucket name"),
        ("s3://Big_Bucket/repo", "is not an S3 bucket name"),
        ("s3://ab/repo", "is not an S3 bucket name"),
        ("s3://host:99999/bucket/repo", "host:port"),
        ("s3://https://host/bucket/repo", "host:port"),  # Triton's endpoint form has a port
        ("s3://host:/bucket", "host:port"),
        ("s3://bucket/a/../b", "'..'"),
        ("s3://bucket/a//b", "empty"),
        ("s3://bucket/" + "p" * 1000, "longer than"),
    ],
)
def test_refused_urls(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)) as caught:
        parse_bucket_url(url)
    assert "\n" not in str(caught.value)


def test_unsupported_schemes_name_what_is_supported() -> None:
    with pytest.raises(ValueError, match=r"local folders and s3:// buckets"):
        parse_bucket_url("gs://bucket/repo")


def test_cache_folders_differ_by_endpoint_bucket_and_prefix() -> None:
    names = {
        parse_bucket_url(u).folder_name()
        for u in ("s3://models/a", "s3://models/b", "s3://other/a", "s3://127.0.0.1:9000/models/a")
    }
    assert len(names) == 4
    assert parse_bucket_url("s3://models/a").folder_name() == parse_bucket_url("s3://models/a/").folder_name()
    assert all("/" not in n and n.startswith("s3-") for n in names)


def test_the_command_line_keeps_a_url_whole_and_a_folder_a_path(monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args(["serve", "--model-repository", "s3://127.0.0.1:9000/models/repo"])
    assert settings_from_args(args).model_repository == "s3://127.0.0.1:9000/models/repo"  # Path would fold '//'
    args = build_parser().parse_args(["serve", "--model-store", "/models"])
    assert settings_from_args(args).model_repository == Path("/models")
    monkeypatch.setenv("CLIPPERD_MODEL_REPOSITORY", "s3://models/repo")
    monkeypatch.setenv("CLIPPERD_REPOSITORY_CACHE_DIR", "/var/cache/clipperd")
    settings = settings_from_args(build_parser().parse_args(["serve"]))
    assert settings.model_repository == "s3://models/repo"
    assert settings.repository_cache_dir == "/var/cache/clipperd"


@pytest.mark.parametrize("url", ["gs://bucket/repo", "s3://Bad_Bucket/x"])
def test_a_refused_url_is_one_line_and_exit_2(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--model-repository", url])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("clipperd: error: --model-repository (or CLIPPERD_MODEL_REPOSITORY): ")
