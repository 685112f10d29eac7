"""bytes_upper as a Triton Python-backend model: OUTPUT0 = INPUT0 upper-cased, OUTPUT1 = the
byte length of each element (so a row that lands in another request's answer shows)."""

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]


class TritonPythonModel:
    def execute(self, requests: list[Any]) -> list[Any]:
        answers = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            upper = np.array([bytes(v).upper() for v in data.reshape(-1)], dtype=object).reshape(data.shape)
            lengths = np.array([len(v) for v in data.reshape(-1)], dtype=np.int32).reshape(data.shape)
            tensors = [pb_utils.Tensor("OUTPUT0", upper), pb_utils.Tensor("OUTPUT1", lengths)]
            answers.append(pb_utils.InferenceResponse(tensors))
        return answers
