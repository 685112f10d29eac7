"""Standardizes each row: (x - mean) / std, with a floor on std so constant rows stay finite."""

import numpy as np


class Model:
    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raw = inputs["RAW"]
        mean = raw.mean(axis=1, keepdims=True)
        std = np.maximum(raw.std(axis=1, keepdims=True), 1e-6)
        return {"FEATURES": ((raw - mean) / std).astype(np.float32)}
