"""Where a bucket repository is, from Triton's URLs:

- ``s3://bucket/prefix``: Amazon S3, or the endpoint ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``
  names (botocore reads them);
- ``s3://host:port/bucket/prefix``: an S3 API server at ``host:port`` over HTTP (Triton's default
  for this form), ``s3://https://host:port/bucket/prefix`` over HTTPS (``s3://http://...`` too).

The first path segment is a host only when it carries a port (``:``), which a bucket name cannot."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_HOST_PORT = re.compile(r"^([A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]):([0-9]{1,5})$")
# S3's rules for bucket names: 3 to 63 lowercase letters, digits, dots and hyphens
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
MAX_PREFIX_LENGTH = 900  # S3 keys are at most 1,024 bytes; the models' own paths need the rest
SUPPORTED = "local folders and s3:// buckets (Amazon S3, or any S3 API server such as MinIO or Ceph)"


@dataclass(frozen=True)
class BucketLocation:
    url: str  # as given, for messages
    bucket: str
    prefix: str  # "" (the bucket's root) or "a/b/": always ends with "/"
    endpoint_url: str | None  # from the URL; None: botocore's own choice (environment, config, AWS)

    def folder_name(self) -> str:
        """The cache sub-folder of this URL: readable, and unique by a hash of the URL."""
        readable = re.sub(r"[^A-Za-z0-9.-]+", "-", f"{self.bucket}-{self.prefix}").strip("-")[:60]
        digest = hashlib.sha256(f"{self.endpoint_url or ''}|{self.bucket}|{self.prefix}".encode()).hexdigest()
        return f"s3-{readable}-{digest[:12]}"


def is_url(text: str) -> bool:
    """Whether ``--model-repository`` names a URL (``scheme://...``) rather than a folder."""
    return _SCHEME.match(text) is not None


def parse_bucket_url(text: str) -> BucketLocation:
    """The location ``text`` names; ValueError (one line) when it is not a repository clipperd reads."""
    shown = text[:256]
    match = _SCHEME.match(text)
    if match is None:
        raise ValueError(f"{shown!r} is not a URL")
    scheme = match.group(1).lower()
    if scheme != "s3":
        raise ValueError(f"{scheme}:// repositories are not supported: clipperd reads {SUPPORTED}")
    rest = text[match.end() :]
    endpoint, rest = _endpoint(rest, shown)
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.match(bucket):
        raise ValueError(f"{shown!r}: {bucket[:64]!r} is not an S3 bucket name (3-63 of a-z 0-9 . -)")
    return BucketLocation(text, bucket, _prefix(prefix, shown), endpoint)


def _endpoint(rest: str, shown: str) -> tuple[str | None, str]:
    """Triton's custom endpoint: ``[http(s)://]host:port/`` before the bucket; HTTP unless said."""
    protocol = "http"
    for given in ("http", "https"):
        if rest.lower().startswith(f"{given}://"):
            protocol, rest = given, rest[len(given) + 3 :]
            break
    else:
        first = rest.partition("/")[0]
        if ":" not in first:
            return None, rest  # s3://bucket/prefix
    host_port, _, rest = rest.partition("/")
    match = _HOST_PORT.match(host_port)
    if match is None or not 1 <= int(match.group(2)) <= 65535:
        raise ValueError(f"{shown!r}: expected s3://[http(s)://]host:port/bucket/prefix, got host {host_port[:64]!r}")
    return f"{protocol}://{host_port}", rest


def _prefix(prefix: str, shown: str) -> str:
    prefix = prefix.strip("/")
    if not prefix:
        return ""
    parts = prefix.split("/")
    if any(p in ("", ".", "..") for p in parts) or "\\" in prefix or "\x00" in prefix:
        raise ValueError(f"{shown!r}: the path in the bucket has an empty, '.' or '..' segment")
    if len(prefix) > MAX_PREFIX_LENGTH:
        raise ValueError(f"{shown!r}: the path in the bucket is longer than {MAX_PREFIX_LENGTH} characters")
    return prefix + "/"
