"""The bounds leave room for real load: with the defaults, one loopback client holds 6,000
concurrent gRPC calls (two connections of 3,000, as a client with a small channel pool opens),
all admitted at once and all answered. A model held on a file makes "concurrent" exact: every
call is inside the server (validated, queued or executing) before any is answered."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as tpb

from tests.serverproc import ServerProcess, model_metric, running, wait_until

pytestmark = pytest.mark.timeout(600)

CALLS = 6000
CONNECTIONS = 2
METHOD = "/inference.GRPCInferenceService/ModelInfer"

CONFIG = """name: "held"
backend: "python"
max_batch_size: 8192
input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ 1 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 1 ] } ]
dynamic_batching { }
parameters [ { key: "execution_mode", value: { string_value: "thread" } } ]
"""

MODEL = '''"""Answers its input once the file named by RELEASE exists (the test holds it until then)."""
import os
import time

RELEASE = {release!r}


class Model:
    def execute(self, inputs):
        while not os.path.exists(RELEASE):
            time.sleep(0.05)
        return {{"OUTPUT0": inputs["INPUT0"]}}
'''


def _repository(root: Path) -> tuple[Path, Path]:
    release = root / "release"
    model = root / "repo" / "held"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(CONFIG)
    (model / "1" / "model.py").write_text(MODEL.format(release=str(release)))
    return root / "repo", release


def _request(i: int) -> bytes:
    request = tpb.ModelInferRequest(model_name="held", id=str(i))
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(np.float32(i).tobytes())
    return bytes(request.SerializeToString())


async def _hold(server: ServerProcess, release: Path) -> list[float]:
    """Sends every call, waits until all are inside the server, releases the model, gathers."""
    options = [("grpc.use_local_subchannel_pool", 1)]  # a connection per channel
    channels = [grpc.aio.insecure_channel(server.url, options=options) for _ in range(CONNECTIONS)]
    try:
        calls = [channels[i % CONNECTIONS].unary_unary(METHOD)(_request(i), timeout=300) for i in range(CALLS)]
        held = asyncio.get_running_loop().run_in_executor(
            None,
            lambda: wait_until(
                lambda: model_metric(server, "clipperd_inflight_requests", "held") == CALLS,
                f"{CALLS} calls inside the server at once",
                timeout_s=240,
                interval_s=0.5,
            ),
        )
        await held
        await asyncio.to_thread(release.touch)
        answers = await asyncio.gather(*calls)
    finally:
        for channel in channels:
            await channel.close()
    return [
        float(np.frombuffer(tpb.ModelInferResponse.FromString(a).raw_output_contents[0], np.float32)[0])
        for a in answers
    ]


def test_one_client_holds_6000_concurrent_calls_with_the_default_bounds(tmp_path: Path, logs_dir: Path) -> None:
    """The default (native) front end. The grpcio one admits about 3,350 of them on this machine
    and holds the rest in grpc's own core (a limit of grpc's, not one of clipperd's bounds)."""
    repository, release = _repository(tmp_path)
    with running(repository, log_dir=logs_dir) as server:
        values = asyncio.run(_hold(server, release))
        assert values == [float(i) for i in range(CALLS)]  # every call answered, none refused
