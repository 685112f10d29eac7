"""The one core every transport calls: health, metadata, config, statistics, repository
management and ``infer``. Nothing here knows about gRPC or HTTP."""

from __future__ import annotations

from dataclasses import dataclass

from backends.base import Tensors
from backends.common.errors import NotFound
from backends.proto import model_config_pb2 as mc
from schedulers.stats import ModelStats
from server import __version__, response_cache
from server.applications import ApplicationManager
from server.messages import InferRequest, InferResponse, OutputTensor
from server.model_version import ModelVersion
from server.repository import IndexEntry, ModelRepository
from server.shared_memory import SharedMemoryRegistry

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
class TensorMetadata:
    name: str
    datatype: str
    shape: list[int]


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


@dataclass(frozen=True)
class VersionStatistics:
    name: str
    version: str
    stats: ModelStats


class DataPlane:
    def __init__(self, repository: ModelRepository, strict_readiness: bool = True) -> None:
        self.repository = repository
        self.strict_readiness = strict_readiness
        self.accepting = False  # set once the models of the start are loaded, cleared on shutdown
        self.name = "clipperd"
        self.version = __version__
        self.extensions = EXTENSIONS
        self.shared_memory = SharedMemoryRegistry()
        self.applications: ApplicationManager | None = None  # Clipper applications, as models of their own

    def _application(self, name: str) -> ApplicationManager | None:
        """The manager when ``name`` is an application (models come first: no name is both)."""
        apps = self.applications
        return apps if apps is not None and name in apps else None

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
            sig = apps.metadata(name, version)
            tensors = [TensorMetadata(t.name, t.datatype, ([-1] if t.batched else []) + t.dims) for t in sig]
            return ModelMetadata(name, ["1"], "clipperd_application", tensors[:1], tensors[1:])
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
            rows += [VersionStatistics(a.name, "1", a.stats) for a in self.applications.apps.values()]
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

    async def infer(self, request: InferRequest) -> InferResponse:
        try:
            model = self.repository.get(request.model_name, request.model_version)
        except NotFound:
            if (apps := self._application(request.model_name)) is not None:
                return await self._infer_application(apps, request)
            raise
        with model.stats.track() as tracked, self.shared_memory.use(request) as shared_memory:
            inputs, batch = model.signature.validate(request)  # shared memory's inputs are read now
            probe = response_cache.lookup(model, request)
            if probe is not None and probe.outputs is not None:
                outputs = probe.outputs  # a hit: the model does not run
            else:
                tracked.executing = True
                params = request.parameters
                outputs = await model.scheduler.execute(
                    inputs, batch, int(params.get("priority", 0)), int(params.get("timeout", 0))
                )
                tracked.executing = False
                if probe is not None:
                    model.cache_store(probe, outputs)
            response = self._response(request, model, outputs)
            shared_memory.write_outputs(response)
        return response

    async def _infer_application(self, apps: ApplicationManager, request: InferRequest) -> InferResponse:
        with self.shared_memory.use(request) as shared_memory:
            response = await apps.infer(request)
            shared_memory.write_outputs(response)
        return response

    @staticmethod
    def _response(request: InferRequest, model: ModelVersion, outputs: Tensors) -> InferResponse:
        types = model.signature.outputs
        names = [o.name for o in request.outputs] or [o.name for o in model.config.output]
        tensors = []
        for name in names:
            array = outputs[name]
            tensors.append(OutputTensor(name, types[name], list(array.shape), array))
        return InferResponse(model.name, str(model.version), request.id, tensors)
