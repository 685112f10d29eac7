"""The numpy MLP that perf/batching_peers.py serves with clipperd, Triton, PyTriton and MLServer:
one file, imported by all of them, so that they run the same math.

FP32 INPUT0 [256] per row -> dense layers with ReLU between them -> FP32 OUTPUT0 [16], computed
with numpy matmul on the whole batch at once. The hidden widths are ``DEFAULT_HIDDEN``
(256 -> 2048 -> 2048 -> 16: 4.7 M parameters, 19 MB of FP32 weights, about 9.4 MFLOP a row)
unless $NUMPY_MLP_HIDDEN says otherwise ("512,512"). The weights are generated at start from a
fixed seed (He-scaled normal, small biases), so nothing is downloaded or stored.

The peers' batching settings come from the environment too, so that one benchmark run gives
them all the same: $NUMPY_MLP_QUEUE_DELAY_US (the longest a batch waits to fill, µs; default
2000; clipperd and tritonserver get it in the config.pbtxt that perf/batching_peers.py writes)
and ``MAX_BATCH`` (64) rows a batch.

Run as a script, it times the model in-process at the batch sizes given (rows per second per
batch size, as JSON on stdout), with whatever BLAS threads the environment sets:

    python perf/peers/numpy_mlp.py [--seconds 0.5] [--sizes 1,2,4,8,16,32,64]

perf/batching_peers.py runs that under each server's own interpreter (the peers' virtual
environments bring other numpy/OpenBLAS builds). Only numpy is needed (1.21 or later)."""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

INPUT, OUTPUT = "INPUT0", "OUTPUT0"
IN_DIM, OUT_DIM = 256, 16
DEFAULT_HIDDEN = (2048, 2048)
MAX_BATCH = 64
SEED = 0
HIDDEN_ENV = "NUMPY_MLP_HIDDEN"
DELAY_ENV = "NUMPY_MLP_QUEUE_DELAY_US"
DEFAULT_DELAY_US = 2000
MODEL_NAME = "numpy_mlp"


def hidden_from_env() -> tuple[int, ...]:
    text = os.environ.get(HIDDEN_ENV, "").strip()
    if not text:
        return DEFAULT_HIDDEN
    widths = tuple(int(part) for part in text.split(",") if part.strip())
    if not widths or min(widths) < 1:
        raise ValueError(f"${HIDDEN_ENV} must list positive widths, got {text!r}")
    return widths


def queue_delay_us() -> int:
    return int(os.environ.get(DELAY_ENV, DEFAULT_DELAY_US))


class NumpyMLP:
    """``model(x)``: x FP32 [batch, 256] -> FP32 [batch, 16]."""

    def __init__(self, hidden: tuple[int, ...] | None = None, seed: int = SEED) -> None:
        self.dims = (IN_DIM, *(hidden if hidden is not None else hidden_from_env()), OUT_DIM)
        rng = np.random.default_rng(seed)
        self.layers: list[tuple[np.ndarray, np.ndarray]] = []
        for fan_in, fan_out in zip(self.dims[:-1], self.dims[1:], strict=True):
            weight = rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)
            bias = rng.standard_normal(fan_out) * 0.01
            self.layers.append((weight.astype(np.float32), bias.astype(np.float32)))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        h = np.asarray(x, dtype=np.float32)
        last = len(self.layers) - 1
        for i, (weight, bias) in enumerate(self.layers):
            h = h @ weight
            h += bias
            if i < last:
                np.maximum(h, 0.0, out=h)
        return h

    @property
    def parameters(self) -> int:
        return sum(w.size + b.size for w, b in self.layers)


def sample_input(rows: int = 4) -> np.ndarray:
    """A fixed input for checking that a server computes this model."""
    return np.random.default_rng(12345).standard_normal((rows, IN_DIM)).astype(np.float32)


def time_batches(model: NumpyMLP, sizes: list[int], seconds: float) -> dict[int, float]:
    """Rows per second, back to back, at each batch size."""
    rates: dict[int, float] = {}
    for size in sizes:
        x = np.random.default_rng(size).standard_normal((size, IN_DIM)).astype(np.float32)
        for _ in range(3):
            model(x)
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model(x)
            calls += 1
        rates[size] = calls * size / (time.perf_counter() - start)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=0.5, help="per batch size")
    parser.add_argument("--sizes", default="1,2,4,8,16,32,64")
    args = parser.parse_args()
    model = NumpyMLP()
    rates = time_batches(model, [int(s) for s in args.sizes.split(",")], args.seconds)
    print(json.dumps({"numpy": np.__version__, "dims": model.dims, "rows_per_s": rates}))


if __name__ == "__main__":
    main()
