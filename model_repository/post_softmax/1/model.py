"""Softmax over the logits of each row, and the index of the largest."""

import numpy as np


class Model:
    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        logits = inputs["LOGITS"]
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
        return {"PROBS": probs, "CLASS": logits.argmax(axis=1).astype(np.int64).reshape(-1, 1)}
