"""Peer: NVIDIA Triton Inference Server 2.51 (as PyTriton 0.7 bundles it) on the CPU, serving
numpy_mlp (perf/peers/numpy_mlp.py: FP32 INPUT0 [256] -> OUTPUT0 [16], max_batch_size 64) with
Triton's dynamic batcher in front of the @batch Python function that computes it.

    ~/.cache/clipperd-bench/pytriton/bin/python perf/peers/pytriton_numpy_mlp.py [WORKSPACE]

The batcher waits up to $NUMPY_MLP_QUEUE_DELAY_US (default 2000 µs) for a batch to fill;
$NUMPY_MLP_HIDDEN sets the hidden widths (numpy_mlp.py). Listens on 127.0.0.1: HTTP 18100,
gRPC 18101, metrics 18102. Runs in the PyTriton virtual environment (perf/install_peers.sh), as
perf/peers/pytriton_identity.py does, and the same way: libpython on LD_LIBRARY_PATH for
Triton's Python-backend stub (the script starts itself again when it is missing), the
statistics endpoint open (perf_analyzer and perf/batching_peers.py read it; loopback only)."""

from __future__ import annotations

import sys
from typing import Any

from pytriton_identity import ensure_libpython_path

HOST = "127.0.0.1"
HTTP_PORT, GRPC_PORT, METRICS_PORT = 18100, 18101, 18102


def main() -> None:
    ensure_libpython_path()
    import numpy as np
    from numpy_mlp import IN_DIM, INPUT, MAX_BATCH, MODEL_NAME, OUT_DIM, OUTPUT, NumpyMLP, queue_delay_us
    from pytriton.decorators import batch  # type: ignore[import-not-found]
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor  # type: ignore[import-not-found]
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig  # type: ignore[import-not-found]

    model = NumpyMLP()

    @batch  # type: ignore[misc, untyped-decorator, unused-ignore]
    def infer(INPUT0: Any) -> dict[str, Any]:  # the argument is named after the tensor
        return {OUTPUT: model(INPUT0)}

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
    delay = queue_delay_us()
    with Triton(config=config, workspace=workspace, security_config=security) as triton:
        triton.bind(
            model_name=MODEL_NAME,
            infer_func=infer,
            inputs=[Tensor(name=INPUT, dtype=np.float32, shape=(IN_DIM,))],
            outputs=[Tensor(name=OUTPUT, dtype=np.float32, shape=(OUT_DIM,))],
            config=ModelConfig(
                max_batch_size=MAX_BATCH,
                batcher=DynamicBatcher(max_queue_delay_microseconds=delay),
            ),
        )
        print(
            f"pytriton: Triton on {HOST}, gRPC {GRPC_PORT}, HTTP {HTTP_PORT}, model {MODEL_NAME} {model.dims}, "
            f"max_batch_size {MAX_BATCH}, max_queue_delay {delay} us",
            flush=True,
        )
        triton.serve()


if __name__ == "__main__":
    main()
