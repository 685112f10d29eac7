"""The bucket, through boto3: list a prefix (bounded) and download an object to a file.

Credentials, region and a default endpoint come from where the AWS SDKs read them (botocore):
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, ``AWS_PROFILE``,
``AWS_SHARED_CREDENTIALS_FILE`` and ``AWS_CONFIG_FILE``, ``AWS_REGION``/``AWS_DEFAULT_REGION``,
``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``, instance and container roles. Every call is
blocking: the mirror runs them on worker threads, never on the event loop."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

from server.storage.listing import ObjectInfo, key_problem
from server.storage.location import BucketLocation

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

CONNECT_TIMEOUT_S = 5.0  # to open a connection to the endpoint
READ_TIMEOUT_S = 30.0  # between two reads of one answer
MAX_ATTEMPTS = 3  # each call, in all, with botocore's "standard" retries (throttling, 5xx, broken connections)
CONNECTIONS = 8  # the connection pool, and the downloads that run at once
CHUNK_BYTES = 1 << 20  # a download is written in chunks of this size
PAGE_SIZE = 1000  # keys per ListObjectsV2 page (S3's largest)

_CREDENTIALS = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), or AWS_PROFILE, "
    "or a credentials file (AWS_SHARED_CREDENTIALS_FILE, ~/.aws/credentials)"
)
_REFUSED = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AllAccessDisabled",
    "403",
}


class StorageError(Exception):
    """The bucket cannot be read: a one-line reason, for the log and for a load call's answer."""


class S3Bucket:
    def __init__(self, location: BucketLocation) -> None:
        self.location = location
        config = Config(
            connect_timeout=CONNECT_TIMEOUT_S,
            read_timeout=READ_TIMEOUT_S,
            retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
            max_pool_connections=CONNECTIONS,
            # S3 API servers other than AWS (MinIO, Ceph, moto) are reached by path, not by host name
            s3={"addressing_style": "path" if self._custom_endpoint() else "auto"},
        )
        session = boto3.session.Session()
        self.client: S3Client = session.client("s3", endpoint_url=location.endpoint_url, config=config)

    def _custom_endpoint(self) -> bool:
        return bool(
            self.location.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        )

    @property
    def endpoint(self) -> str:
        return str(self.client.meta.endpoint_url)

    def list(self, under: str, max_objects: int, skipped: Callable[[str, str], None]) -> dict[str, ObjectInfo]:
        """Every object under the repository's prefix + ``under``, keyed relative to the prefix;
        folder markers left out, unusable keys reported to ``skipped``. StorageError past
        ``max_objects`` objects."""
        prefix = self.location.prefix + under
        found: dict[str, ObjectInfo] = {}
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.location.bucket, Prefix=prefix, PaginationConfig={"PageSize": PAGE_SIZE}
        )
        with self._errors():
            for page in pages:
                for item in page.get("Contents", []):
                    key = item["Key"][len(self.location.prefix) :]
                    if key.endswith("/"):
                        continue  # a "folder" made by a console: no file
                    found[key] = ObjectInfo(int(item["Size"]), str(item.get("ETag", "")))
                    if len(found) > max_objects:
                        raise StorageError(
                            f"more than {max_objects} objects under {self._where()} "
                            "(--repository-max-objects): refusing to copy it"
                        )
        return {k: v for k, v in found.items() if _usable(k, skipped)}

    def download(self, key: str, info: ObjectInfo, dest: Path, cancelled: Callable[[], bool]) -> None:
        """The object at ``key`` into ``dest``, only as listed (its ETag): StorageError when it
        changed since, or when it does not come whole."""
        with self._errors():
            answer = self.client.get_object(
                Bucket=self.location.bucket, Key=self.location.prefix + key, IfMatch=info.etag
            )
            body = answer["Body"]
            written = 0
            with dest.open("wb") as file:
                for chunk in body.iter_chunks(CHUNK_BYTES):
                    if cancelled():
                        raise StorageError("stopping")
                    written += len(chunk)
                    if written > info.size:
                        break
                    file.write(chunk)
            body.close()
        if written != info.size:
            raise StorageError(f"{key}: {written} bytes came, {info.size} were listed (changed while copied?)")

    def _where(self) -> str:
        return f"s3://{self.location.bucket}/{self.location.prefix}"

    def _errors(self) -> _Translate:
        return _Translate(self)

    def describe(self, error: Exception) -> str:
        """One line saying what went wrong, naming the bucket and the endpoint, never a secret."""
        bucket, endpoint = self.location.bucket, self.endpoint
        if isinstance(error, NoCredentialsError | PartialCredentialsError):
            return f"no usable AWS credentials for bucket '{bucket}': {_CREDENTIALS}"
        if isinstance(error, ClientError):
            details = error.response.get("Error", {})
            code = str(details.get("Code", ""))
            message = " ".join(str(details.get("Message", "")).split())[:200]
            if code == "NoSuchBucket" or (code == "404" and "bucket" in message.lower()):
                return f"bucket '{bucket}' does not exist at {endpoint}"
            if code in _REFUSED:
                return f"access to bucket '{bucket}' at {endpoint} refused ({code}): {_CREDENTIALS}"
            if code == "PreconditionFailed":
                return "an object changed while it was copied"
            return f"bucket '{bucket}' at {endpoint}: {code or 'error'}: {message}"
        if isinstance(error, BotoCoreError):
            text = " ".join(str(error).split())[:300]
            return f"cannot reach the S3 endpoint {endpoint} for bucket '{bucket}': {text}"
        return f"bucket '{bucket}' at {endpoint}: {type(error).__name__}: {error}"


class _Translate:
    """Turns boto3's errors into a StorageError with one line (see S3Bucket.describe)."""

    def __init__(self, bucket: S3Bucket) -> None:
        self.bucket = bucket

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        if isinstance(error, BotoCoreError | ClientError):
            raise StorageError(self.bucket.describe(error)) from None


def _usable(key: str, skipped: Callable[[str, str], None]) -> bool:
    problem = key_problem(key)
    if problem is not None:
        skipped(key, problem)
    return problem is None
