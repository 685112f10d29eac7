"""Whether a name is a model or an application, answered once for every caller.

The rule: models come first. A name the model repository knows (loaded, loading, or failed to
load) is a model; otherwise it is an application when one of that name is registered; otherwise
it is not found. Registering an application under a model's name is refused, so a name is both
only when a model folder of an application's name appears later: from then on it is the model."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from backends.proto import model_config_pb2 as mc
from schedulers.applications.application import Application
from schedulers.stats import ModelStats
from server.core.messages import InferRequest, InferResponse, ModelMetadata
from server.core.model_version import ModelVersion
from server.core.repository import ModelRepository


class Applications(Protocol):
    """Clipper applications as the core sees them: models of their own (server/applications/
    implements it; the core never imports it)."""

    def lookup(self, name: str) -> Application | None: ...

    def registered(self) -> Iterable[Application]: ...

    def versioned(self, app: Application, version: str) -> Application: ...

    def ready(self, name: str, version: str = "") -> bool: ...

    def metadata(self, name: str, version: str = "") -> ModelMetadata: ...

    def model_config(self, name: str, version: str = "") -> mc.ModelConfig: ...

    def statistics(self, name: str, version: str = "") -> ModelStats: ...

    async def infer(self, app: Application, request: InferRequest) -> InferResponse: ...


class Resolver:
    def __init__(self, repository: ModelRepository, applications: Applications | None = None) -> None:
        self.repository = repository
        self.applications = applications

    def application(self, name: str) -> Application | None:
        """The application ``name`` names, or None when it names a model or nothing."""
        apps = self.applications
        if apps is None or name in self.repository:
            return None
        return apps.lookup(name)

    def resolve(self, name: str, version: str = "") -> ModelVersion | Application:
        """What serves ``name``/``version`` now, or the error a client should see (an unknown
        name is the repository's NotFound)."""
        app = self.application(name)
        if app is None or self.applications is None:
            return self.repository.get(name, version)
        return self.applications.versioned(app, version)
