"""One error hierarchy for the whole server. Each class carries a canonical status code; the
transports map that code once to a gRPC status and once to an HTTP status."""

from __future__ import annotations

import enum


class StatusCode(enum.Enum):
    """Canonical codes (the gRPC names); transports translate them, nothing else does."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAVAILABLE = "UNAVAILABLE"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    CANCELLED = "CANCELLED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    INTERNAL = "INTERNAL"


class ClipperdError(Exception):
    """Base of every error a client may see. The message is shown to clients: name the problem,
    never paths, keys or stack traces."""

    code: StatusCode = StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[type[ClipperdError], tuple[str]]:
        # keeps the class (and so the code) when the error crosses a process boundary
        return (type(self), (self.message,))


class InvalidArgument(ClipperdError):
    code = StatusCode.INVALID_ARGUMENT


class NotFound(ClipperdError):
    code = StatusCode.NOT_FOUND


class AlreadyExists(ClipperdError):
    code = StatusCode.ALREADY_EXISTS


class FailedPrecondition(ClipperdError):
    code = StatusCode.FAILED_PRECONDITION


class PermissionDenied(ClipperdError):
    """The caller may not use this API (server/access.py): a credential is missing, or it is off."""

    code = StatusCode.PERMISSION_DENIED


class ResourceExhausted(ClipperdError):
    code = StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ClipperdError):
    """Not ready, not loaded, queue full: the client may retry later."""

    code = StatusCode.UNAVAILABLE


class Unimplemented(ClipperdError):
    code = StatusCode.UNIMPLEMENTED


class Cancelled(ClipperdError):
    code = StatusCode.CANCELLED


class DeadlineExceeded(ClipperdError):
    code = StatusCode.DEADLINE_EXCEEDED


class InternalError(ClipperdError):
    code = StatusCode.INTERNAL


class ModelExecutionError(InternalError):
    """The model's own code failed or returned something its config does not allow."""


class ConfigError(InvalidArgument):
    """A model configuration that cannot be served; the message names the file and the field."""

    def __init__(self, source: str, field: str, problem: str) -> None:
        where = f"{source}: field '{field}'" if field else source
        super().__init__(f"{where}: {problem}")
        self.source, self.field, self.problem = source, field, problem

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, str, str]]:  # type: ignore[override]
        return (type(self), (self.source, self.field, self.problem))
