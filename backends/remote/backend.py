"""The remote backend: a model served by KServe v2 servers elsewhere (another clipperd, Triton,
MLServer, a KServe runtime). One instance is one batch in flight to one endpoint: its
``execute_async`` sends the batch there as one request, on the event loop."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from backends.base import Backend, Capabilities, InstanceContext
from backends.common import datatypes
from backends.common.tensors import Tensors
from backends.proto import model_config_pb2 as mc
from backends.remote.client import CallSpec
from backends.remote.endpoints import Endpoint
from backends.remote.settings import RemoteSettings


class RemoteBackend(Backend):
    capabilities: ClassVar[Capabilities] = Capabilities(asynchronous=True, remote=True)

    def __init__(self, context: InstanceContext, endpoint: Endpoint) -> None:
        super().__init__(context)
        self.endpoint = endpoint

    def load(self) -> None:
        """Nothing to load: the endpoint's pool connects and checks it."""

    def execute(self, inputs: Tensors) -> Tensors:
        raise NotImplementedError("a remote model executes on the event loop (execute_async)")

    async def execute_async(self, inputs: Tensors) -> Tensors:
        return await self.endpoint.infer(inputs)

    @classmethod
    def autocomplete(cls, config: mc.ModelConfig, version_path: Path) -> None:
        from backends.remote.autocomplete import complete

        complete(config)


def call_spec(config: mc.ModelConfig, settings: RemoteSettings, per_endpoint: int) -> CallSpec:
    """What each call to the remote model carries: the inputs' types, every output by name."""
    types = {t.name: datatypes.from_config(mc.DataType.Name(t.data_type)) for t in config.input}
    return CallSpec(settings, types, [o.name for o in config.output], per_endpoint + 1)
