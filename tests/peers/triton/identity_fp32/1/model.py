"""identity_fp32 as a Triton Python-backend model: each request's INPUT0 back as OUTPUT0.

Runs in Triton's Python-backend stub (a process of its own, requests and answers through shared
memory), as a Triton user's Python model does; ``triton_python_backend_utils`` is the module the
stub provides."""

from typing import Any

import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]


class TritonPythonModel:
    def execute(self, requests: list[Any]) -> list[Any]:
        answers = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            answers.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", data)]))
        return answers
