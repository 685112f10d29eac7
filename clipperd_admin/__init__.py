"""clipperd_admin: the Python admin client of clipperd (Clipper's clipper_admin, for a Triton-style
model repository). A client library: it talks to the server over HTTP and writes repository files,
and imports nothing of the server."""

from clipperd_admin.applications import ApplicationAdmin
from clipperd_admin.client import ClipperdAdmin
from clipperd_admin.errors import (
    AdminError,
    ExportError,
    InvalidModelName,
    LoadFailed,
    ModelClash,
    ModelNotFound,
    ServerError,
)
from clipperd_admin.server_api import ModelStatus
from clipperd_admin.specs import TensorSpec

__all__ = [
    "AdminError",
    "ApplicationAdmin",
    "ClipperdAdmin",
    "ExportError",
    "InvalidModelName",
    "LoadFailed",
    "ModelClash",
    "ModelNotFound",
    "ModelStatus",
    "ServerError",
    "TensorSpec",
]
