"""Triton's "simple_string" example: INPUT0/INPUT1 hold integers as strings (bytes); OUTPUT0 is
their sum and OUTPUT1 their difference, as bytes."""

import numpy as np


def _as_bytes(values: np.ndarray) -> np.ndarray:
    out = np.empty(values.shape, dtype=object)
    out.reshape(-1)[:] = [str(v).encode() for v in values.reshape(-1).tolist()]
    return out


class Model:
    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # int() accepts both bytes and str elements
        a = inputs["INPUT0"].astype(np.int64)
        b = inputs["INPUT1"].astype(np.int64)
        return {"OUTPUT0": _as_bytes(a + b), "OUTPUT1": _as_bytes(a - b)}
