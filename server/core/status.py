"""The one mapping from canonical error codes to transport statuses."""

from __future__ import annotations

import grpc

from backends.common.errors import StatusCode

GRPC_STATUS: dict[StatusCode, grpc.StatusCode] = {code: getattr(grpc.StatusCode, code.value) for code in StatusCode}

HTTP_STATUS: dict[StatusCode, int] = {
    StatusCode.INVALID_ARGUMENT: 400,
    StatusCode.NOT_FOUND: 404,
    StatusCode.ALREADY_EXISTS: 409,
    StatusCode.FAILED_PRECONDITION: 400,
    StatusCode.PERMISSION_DENIED: 403,
    StatusCode.RESOURCE_EXHAUSTED: 413,
    StatusCode.UNAVAILABLE: 503,
    StatusCode.UNIMPLEMENTED: 501,
    StatusCode.CANCELLED: 499,
    StatusCode.DEADLINE_EXCEEDED: 504,
    StatusCode.INTERNAL: 500,
}
