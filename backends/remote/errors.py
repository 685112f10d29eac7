"""What a remote call's failure means: the endpoint failed (another endpoint may answer the same
batch: inference is idempotent), or the remote model answered with an error of its own, which
passes through to the client with its status."""

from __future__ import annotations

from backends.common.errors import (
    ClipperdError,
    DeadlineExceeded,
    FailedPrecondition,
    InternalError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    StatusCode,
    Unavailable,
    Unimplemented,
)

_MAX_DETAIL = 512  # characters of a remote's message kept: it is shown to clients and logged


class EndpointFailure(Unavailable):
    """The endpoint did not answer: connection refused or lost, UNAVAILABLE, a timeout."""

    def __init__(self, endpoint: str, detail: str) -> None:
        super().__init__(f"remote endpoint {endpoint}: {detail[:_MAX_DETAIL]}")
        self.endpoint = endpoint
        self.detail = detail[:_MAX_DETAIL]

    def __reduce__(self) -> tuple[type[EndpointFailure], tuple[str, str]]:  # type: ignore[override]
        return (type(self), (self.endpoint, self.detail))


_BY_CODE: dict[str, type[ClipperdError]] = {
    StatusCode.INVALID_ARGUMENT.value: InvalidArgument,
    StatusCode.NOT_FOUND.value: NotFound,
    StatusCode.FAILED_PRECONDITION.value: FailedPrecondition,
    StatusCode.RESOURCE_EXHAUSTED.value: ResourceExhausted,
    StatusCode.UNIMPLEMENTED.value: Unimplemented,
    StatusCode.DEADLINE_EXCEEDED.value: DeadlineExceeded,
    StatusCode.INTERNAL.value: InternalError,
}
_BY_HTTP: dict[int, type[ClipperdError]] = {
    400: InvalidArgument,
    404: NotFound,
    409: FailedPrecondition,
    429: ResourceExhausted,
    501: Unimplemented,
    504: DeadlineExceeded,
}


def model_error(code: str, message: str) -> ClipperdError:
    """The remote model's own error, with its status (an unknown one is INTERNAL)."""
    return _BY_CODE.get(code, InternalError)(message[:_MAX_DETAIL])


def http_model_error(status: int, message: str) -> ClipperdError:
    return _BY_HTTP.get(status, InternalError)(message[:_MAX_DETAIL])
