"""The admin client's exceptions: each says what was wrong and what to do, and every one that is
raised before a deploy writes anything leaves the repository as it was."""

from __future__ import annotations


class AdminError(Exception):
    """Base class of every error the admin client raises."""


class InvalidModelName(AdminError, ValueError):
    """A model name the repository cannot hold (empty, '/', '..', a leading '.', odd characters)."""


class ModelNotFound(AdminError, LookupError):
    """No such model (or version) in the repository."""


class ModelClash(AdminError, ValueError):
    """The deploy collides with what the repository holds: a version that exists, another
    backend under the same name, or other inputs/outputs than the served versions have."""


class ExportError(AdminError, ValueError):
    """The model cannot be written as a file the server can load: a function that does not
    pickle, a module that does not trace or script, an estimator without the method asked for."""


class ServerError(AdminError):
    """The server could not be reached, or refused a call. ``status`` is the HTTP status (0 when
    there was no answer), ``message`` the server's own words."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class LoadFailed(AdminError):
    """The server did not serve a deployed or re-selected version. ``reason`` is the server's
    reason from its repository index (or its load answer)."""

    def __init__(self, model: str, version: int | None, reason: str) -> None:
        which = f"model '{model}'" + (f" version {version}" if version is not None else "")
        super().__init__(f"{which} did not load: {reason}")
        self.model = model
        self.version = version
        self.reason = reason
