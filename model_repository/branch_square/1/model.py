"""OUTPUT0 = x * x."""

import numpy as np


class Model:
    def execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["INPUT0"]
        return {"OUTPUT0": (x * x).astype(np.float32)}
