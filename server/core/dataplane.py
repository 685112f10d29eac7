"""The one core every transport calls: health, metadata, config, statistics, repository
management and ``infer``. Nothing here knows about gRPC or HTTP."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable
from dataclasses import dataclass

from backends.base import Tensors
from backends.proto import model_config_pb2 as mc
from schedulers.applications.application import Application
from schedulers.stats import ModelStats
from server import __version__
from server.core import inference
from server.core.messages import InferRequest, InferResponse, ModelMetadata, OutputTensor, TensorMetadata
from server.core.model_version import ModelVersion
from server.core.repository import IndexEntry, ModelRepository
from server.core.resolver import Applications, Resolver
from server.core.shared_memory import SharedMemoryRegistry

# What this server really implements, as ServerMetadata reports it.
EXTENSIONS = [
    "model_repository",
    "model_configuration",
    "statistics",
    "parameters",
    "binary_tensor_data",
    "system_shared_memory",
]


@dataclass(frozen=True)
class VersionStatistics:
    name: str
    version: str
    stats: ModelStats


class DataPlane:
    """Adapts the transports' requests to the server's one entry point (server/core/inference.py) and
    answers what a name is through one resolver (models first, then applications)."""

    def __init__(
        self,
        repository: ModelRepository,
        strict_readiness: bool = True,
        applications: Applications | None = None,
    ) -> None:
        self.repository = repository
        self.strict_readiness = strict_readiness
        self.accepting = False  # set once the models of the start are loaded, cleared on shutdown
        self.name = "clipperd"
        self.version = __version__
        self.extensions = EXTENSIONS
        self.shared_memory = SharedMemoryRegistry()
        self.applications = applications  # Clipper applications, as models of their own
        self.resolver = Resolver(repository, applications)

    def _application(self, name: str) -> Applications | None:
        """The manager when ``name`` is an application's (the resolver's rule: models first)."""
        return self.applications if self.resolver.application(name) is not None else None

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.accepting and (not self.strict_readiness or self.repository.all_ready())

    def model_ready(self, name: str, version: str = "") -> bool:
        if (apps := self._application(name)) is not None:
            return apps.ready(name, version)
        return self.repository.is_ready(name, version)

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        if (apps := self._application(name)) is not None:
            return apps.metadata(name, version)
        model = self.repository.get(name, version)
        signature = model.signature
        batch = [-1] if model.config.max_batch_size > 0 else []
        inputs = [TensorMetadata(n, s.datatype, batch + list(s.dims)) for n, s in signature.inputs.items()]
        outputs = [TensorMetadata(o.name, signature.outputs[o.name], batch + list(o.dims)) for o in model.config.output]
        versions = [str(v.version) for v in self.repository.versions(name)]
        return ModelMetadata(name, versions, model.platform, inputs, outputs)

    def model_config(self, name: str, version: str = "") -> mc.ModelConfig:
        if (apps := self._application(name)) is not None:
            return apps.model_config(name, version)
        return self.repository.get(name, version).config

    def statistics(self, name: str = "", version: str = "") -> list[VersionStatistics]:
        if name and (apps := self._application(name)) is not None:
            return [VersionStatistics(name, "1", apps.statistics(name, version))]
        if name:
            models = [self.repository.get(name, version)] if version else self._versions_of(name)
        else:
            models = self.repository.loaded()
        rows = [VersionStatistics(m.name, str(m.version), m.stats) for m in models]
        if not name and self.applications is not None:
            registered = self.applications.registered()
            rows += [VersionStatistics(a.name, "1", a.stats) for a in registered if a.name not in self.repository]
        return rows

    def _versions_of(self, name: str) -> list[ModelVersion]:
        versions = self.repository.versions(name)
        return versions or [self.repository.get(name)]  # raises the right error

    def repository_index(self, ready_only: bool = False) -> list[IndexEntry]:
        return self.repository.index(ready_only)

    async def load_model(self, name: str) -> None:
        await self.repository.load(name)

    async def unload_model(self, name: str) -> None:
        await self.repository.unload(name)

    def infer(self, request: InferRequest) -> Awaitable[InferResponse]:
        """The entry point's answer to ``request`` (a plain function returning the coroutine: no
        extra coroutine layer per request)."""
        target = self.resolver.resolve(request.model_name, request.model_version)
        if isinstance(target, ModelVersion):
            if target.feedback is not None and not request.id:
                return self._infer_identified(target, request, target.feedback.new_id())
            return inference.infer(target, _WireCall(request, self.shared_memory))
        return self._infer_application(target, request)

    async def _infer_identified(self, model: ModelVersion, request: InferRequest, request_id: str) -> InferResponse:
        """A request without an id to a model with feedback on: the server names it, and the
        answer carries the name (its ``id``, and the ``feedback_id`` parameter) for the label."""
        request.id = request_id
        response = await inference.infer(model, _WireCall(request, self.shared_memory))
        response.parameters["feedback_id"] = request_id
        return response

    def infer_stream(self, request: InferRequest) -> AsyncGenerator[inference.Streamed[InferResponse], None]:
        """The answers to ``request`` as they come (server/core/inference.py ``infer_stream``):
        many for a decoupled model, one for any other model or an application."""
        target = self.resolver.resolve(request.model_name, request.model_version)
        if isinstance(target, ModelVersion):
            return inference.infer_stream(target, _StreamCall(request, self.shared_memory))
        return self._one_answer(self._infer_application(target, request))

    @staticmethod
    async def _one_answer(answer: Awaitable[InferResponse]) -> AsyncGenerator[inference.Streamed[InferResponse], None]:
        yield inference.Streamed(await answer, final=True)

    def is_decoupled(self, name: str, version: str = "") -> bool:
        """Whether ``name`` (a model; an application never is) streams its answers."""
        target = self.resolver.resolve(name, version)
        return isinstance(target, ModelVersion) and target.signature.decoupled

    async def _infer_application(self, app: Application, request: InferRequest) -> InferResponse:
        assert self.applications is not None  # the resolver answers applications only when there are some
        with self.shared_memory.use(request) as shared_memory:
            response = await self.applications.infer(app, request)
            shared_memory.write_outputs(response)
        return response


class _WireCall:
    """A transport's request as the entry point takes it: its shared-memory regions are read
    when it opens and held until it closes; the answer is an InferResponse."""

    __slots__ = ("inputs", "outputs", "parameters", "registry", "request", "shared_memory")

    def __init__(self, request: InferRequest, registry: SharedMemoryRegistry) -> None:
        self.request = request
        self.registry = registry
        self.inputs = request.inputs
        self.outputs = request.outputs
        self.parameters = request.parameters

    @property
    def request_id(self) -> str:
        return self.request.id

    def open(self) -> None:
        self.shared_memory = self.registry.use(self.request)  # reads shared-memory inputs into the tensors

    def close(self) -> None:  # called only after open succeeded
        self.shared_memory.release()

    def respond(self, model: ModelVersion, outputs: Tensors) -> InferResponse:
        request = self.request
        types = model.signature.outputs
        names = [o.name for o in request.outputs] or [o.name for o in model.config.output]
        tensors = []
        for name in names:
            array = outputs[name]
            tensors.append(OutputTensor(name, types[name], list(array.shape), array))
        response = InferResponse(model.name, str(model.version), request.id, tensors)
        self.shared_memory.write_outputs(response)
        return response


class _StreamCall(_WireCall):
    """A request whose answers stream: an answer may carry some of the outputs only."""

    __slots__ = ()

    def respond(self, model: ModelVersion, outputs: Tensors) -> InferResponse:
        request = self.request
        types = model.signature.outputs
        names = [o.name for o in request.outputs] or [o.name for o in model.config.output]
        tensors = [OutputTensor(n, types[n], list(outputs[n].shape), outputs[n]) for n in names if n in outputs]
        response = InferResponse(model.name, str(model.version), request.id, tensors)
        self.shared_memory.write_outputs(response)
        return response
