"""What the remote backend needs of a KServe v2 server, whichever protocol reaches it: run a
batch, say whether the server and the model are ready. Every call has a timeout; a failure of
the endpoint raises EndpointFailure, the remote model's own error keeps its status."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from backends.common.datatypes import DataType
from backends.common.tensors import Tensors
from backends.remote.settings import RemoteSettings


@dataclass(frozen=True)
class CallSpec:
    """What every call to one remote model carries: its name, version, tensors' types."""

    settings: RemoteSettings
    input_types: Mapping[str, DataType]
    outputs: Sequence[str]  # asked for by name, all of the config's
    connections: int  # the most calls in flight at once (the instances per endpoint), plus health


class RemoteClient(Protocol):
    endpoint: str  # host:port, as metrics and messages name it

    async def infer(self, inputs: Tensors) -> Tensors:
        """One batch's outputs; EndpointFailure or the remote model's error."""

    async def check_ready(self) -> None:
        """Returns when ServerReady and ModelReady both say ready, else EndpointFailure."""

    async def close(self) -> None: ...


def make_client(endpoint: str, spec: CallSpec) -> RemoteClient:
    """A client of ``endpoint`` over the protocol the settings name."""
    if spec.settings.protocol == "http":
        from backends.remote.http_client import HttpClient

        return HttpClient(endpoint, spec)
    from backends.remote.grpc_client import GrpcClient

    return GrpcClient(endpoint, spec)
