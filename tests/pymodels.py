"""Python-backend models written into a test repository (each file whole at once, so a poll never
sees half of one) and the gRPC calls the lifecycle, replica and deploy tests make to them."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

WAIT = 20.0  # a call's client timeout


def config_text(name: str, extra: str = "", max_batch_size: int = 8) -> str:
    return textwrap.dedent(
        f"""
        name: "{name}"
        backend: "python"
        max_batch_size: {max_batch_size}
        input [ {{ name: "IN" data_type: TYPE_INT32 dims: [ 1 ] }} ]
        output [ {{ name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
        """
    ) + textwrap.dedent(extra)


def adds(n: int, initialize: str = "pass") -> str:
    """A model.py whose answer is its input + ``n``; ``initialize`` is the body of initialize()."""
    body = textwrap.indent(textwrap.dedent(initialize).strip(), " " * 8)
    return (
        "import time\n"
        "from pathlib import Path\n\n"
        "import numpy as np\n\n\n"
        "class Model:\n"
        "    def initialize(self, context):\n"
        f"{body}\n\n"
        "    def execute(self, inputs):\n"
        f"        return {{'OUT': (inputs['IN'] + {n}).astype(np.int32)}}\n"
    )


def held_until(path: Path) -> str:
    """Code that waits, bounded, until ``path`` exists."""
    return (
        "deadline = time.monotonic() + 60\n"
        f"while not Path({str(path)!r}).exists() and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
    )


def write_atomically(path: Path, text: str) -> None:
    """The whole file at once (a poll never sees half of it); a new mtime and size each time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_model(repo: Path, name: str, versions: dict[int, str], extra: str = "", max_batch_size: int = 8) -> Path:
    folder = repo / name
    write_atomically(folder / "config.pbtxt", config_text(name, extra, max_batch_size))
    for version, source in versions.items():
        write_atomically(folder / str(version) / "model.py", source)
    return folder


SLOW_MODEL = """
import time
from pathlib import Path

import numpy as np


class Model:
    def initialize(self, context):
        self.markers = Path(context.parameters["markers"])
        self.name = context.instance_name

    def execute(self, inputs):
        (self.markers / f"started-{self.name}-{time.monotonic_ns()}").touch()
        time.sleep(1.0)
        deadline = time.monotonic() + 60
        while not (self.markers / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return {"OUT": (inputs["IN"] + 1).astype(np.int32)}

    def finalize(self):
        (self.markers / f"finalized-{self.name}").touch()
"""


def slow_repository(repo: Path, markers: Path, instances: int) -> None:
    markers.mkdir()
    extra = f"""
        instance_group [ {{ kind: KIND_CPU, count: {instances} }} ]
        parameters {{ key: "execution_mode" value: {{ string_value: "thread" }} }}
        parameters {{ key: "markers" value: {{ string_value: "{markers}" }} }}
        """
    write_model(repo, "slow", {1: SLOW_MODEL}, extra=extra)
    write_model(repo, "fast", {1: adds(1)})


def started(markers: Path) -> int:
    return len(list(markers.glob("started-*")))


def infer_once(url: str, model: str, value: int) -> tuple[int, str]:
    """One request on a connection of its own."""
    with grpcclient.InferenceServerClient(url) as client:
        return infer(client, model, value)


def infer(client: grpcclient.InferenceServerClient, model: str, value: int, version: str = "") -> tuple[int, str]:
    """(answer - input, the version that answered)."""
    tensor = grpcclient.InferInput("IN", [1, 1], "INT32")
    tensor.set_data_from_numpy(np.array([[value]], dtype=np.int32))
    result = client.infer(model, [tensor], model_version=version, client_timeout=WAIT)
    return int(result.as_numpy("OUT")[0, 0]) - value, result.get_response().model_version


def status_of(call: Callable[[], object]) -> tuple[str, str]:
    """The gRPC status name and message of a call that must fail."""
    with pytest.raises(InferenceServerException) as info:
        call()
    return str(info.value.status()).removeprefix("StatusCode."), info.value.message() or ""


def accepts_connections(url: str) -> bool:
    """A fresh connection and a ServerLive call: what a new client after shutdown would try."""
    with grpc.insecure_channel(url) as channel:
        rpc = channel.unary_unary("/inference.GRPCInferenceService/ServerLive")
        try:
            rpc(b"", timeout=1.0)
        except grpc.RpcError:
            return False
    return True


def index(client: grpcclient.InferenceServerClient) -> dict[tuple[str, str], tuple[str, str]]:
    """(model, version) -> (state, reason)."""
    rows = client.get_model_repository_index().models
    return {(row.name, row.version): (row.state, row.reason) for row in rows}
