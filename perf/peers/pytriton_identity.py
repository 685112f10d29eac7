"""Peer: NVIDIA Triton Inference Server 2.51 (as PyTriton 0.7 bundles it) on the CPU, serving
identity_fp32 (FP32 INPUT0 -> OUTPUT0, dims [-1, 16], max_batch_size 64) with Triton's dynamic
batcher (max_queue_delay 100 us) in front of a Python function.

    ~/.cache/clipperd-bench/pytriton/bin/python perf/peers/pytriton_identity.py [WORKSPACE]

Listens on 127.0.0.1: HTTP 18000, gRPC 18001, metrics 18002. Runs in the PyTriton virtual
environment (perf/install_peers.sh), not the project's. Triton's Python-backend stub links
libpython dynamically and must find the interpreter's own (<base prefix>/lib) before any other
on the system, so the script puts it on LD_LIBRARY_PATH and starts itself again when it is not
there yet. The statistics endpoint, which perf_analyzer reads and PyTriton restricts by default,
is left open: the server listens on the loopback interface only."""

from __future__ import annotations

import os
import sys
from typing import Any

HOST = "127.0.0.1"
HTTP_PORT, GRPC_PORT, METRICS_PORT = 18000, 18001, 18002
MODEL = "identity_fp32"
DIM = 16
MAX_BATCH = 64
QUEUE_DELAY_US = 100


def ensure_libpython_path() -> None:
    """Triton's Python-backend stub finds this interpreter's libpython: restarts with it on LD_LIBRARY_PATH."""
    lib = os.path.join(sys.base_prefix, "lib")
    paths = os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep)
    if lib not in paths:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([lib, *filter(None, paths)])
        os.execv(sys.executable, [sys.executable, *sys.argv])


def main() -> None:
    ensure_libpython_path()
    import numpy as np
    from pytriton.decorators import batch  # type: ignore[import-not-found]
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor  # type: ignore[import-not-found]
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig  # type: ignore[import-not-found]

    @batch  # type: ignore[misc, untyped-decorator, unused-ignore]
    def identity(INPUT0: Any) -> dict[str, Any]:  # the argument is named after the tensor
        return {"OUTPUT0": INPUT0}

    config = TritonConfig(
        http_address=HOST,
        http_port=HTTP_PORT,
        grpc_address=HOST,
        grpc_port=GRPC_PORT,
        metrics_address=HOST,
        metrics_port=METRICS_PORT,
    )
    security = TritonSecurityConfig(restricted_endpoints=[])  # [] opens every endpoint, statistics included
    workspace = sys.argv[1] if len(sys.argv) > 1 else None
    with Triton(config=config, workspace=workspace, security_config=security) as triton:
        triton.bind(
            model_name=MODEL,
            infer_func=identity,
            inputs=[Tensor(name="INPUT0", dtype=np.float32, shape=(DIM,))],
            outputs=[Tensor(name="OUTPUT0", dtype=np.float32, shape=(DIM,))],
            config=ModelConfig(
                max_batch_size=MAX_BATCH,
                batcher=DynamicBatcher(max_queue_delay_microseconds=QUEUE_DELAY_US),
            ),
        )
        print(f"pytriton: Triton on {HOST}, gRPC {GRPC_PORT}, HTTP {HTTP_PORT}, model {MODEL}", flush=True)
        triton.serve()


if __name__ == "__main__":
    main()
