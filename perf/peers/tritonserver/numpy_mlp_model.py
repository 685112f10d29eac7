"""numpy_mlp (perf/peers/numpy_mlp.py) as a Triton Python-backend model, for perf/batching_peers.py's
``tritonserver`` system, which copies this file into the repository it writes as
``numpy_mlp/1/model.py``.

Triton's dynamic batcher hands ``execute`` the requests of one batch; their INPUT0 rows are
stacked into one matrix, computed in one numpy pass and handed back request by request, as
PyTriton's ``@batch`` does for perf/peers/pytriton_numpy_mlp.py. The path of numpy_mlp.py comes
from the config's ``numpy_mlp_path`` parameter (the repository is a copy, so a path relative to
this file would not find it); the hidden widths and BLAS threads from the environment, which
tritonserver passes on to the Python-backend stub."""

import importlib.util
import json
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]


def _numpy_mlp(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("numpy_mlp", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load numpy_mlp from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        numpy_mlp = _numpy_mlp(config["parameters"]["numpy_mlp_path"]["string_value"])
        self.input, self.output = numpy_mlp.INPUT, numpy_mlp.OUTPUT
        self.mlp = numpy_mlp.NumpyMLP()

    def execute(self, requests: list[Any]) -> list[Any]:
        inputs = [pb_utils.get_input_tensor_by_name(r, self.input).as_numpy() for r in requests]
        outputs = self.mlp(np.concatenate(inputs) if len(inputs) > 1 else inputs[0])
        answers, start = [], 0
        for x in inputs:
            rows = outputs[start : start + len(x)]
            start += len(x)
            answers.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output, rows)]))
        return answers
