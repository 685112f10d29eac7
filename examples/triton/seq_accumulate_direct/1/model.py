"""A sequence accumulator in Triton's Python-backend dialect (as Triton's simple_sequence
example): each request adds its INPUT to its sequence's running sum and answers the sum. The
sequence batcher fills the control inputs: START resets the sum, READY false marks a padded slot
(nothing to do), END forgets the sequence, CORRID names it."""

import numpy as np
import triton_python_backend_utils as pb_utils


def _wrap(value):
    """int32 arithmetic, as the C++ accumulator of Triton's example: overflow wraps around."""
    return (value + 2**31) % 2**32 - 2**31


class TritonPythonModel:
    def initialize(self, args):
        self.sums = {}

    def execute(self, requests):
        responses = []
        for request in requests:
            value = int(pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy().reshape(-1)[0])
            start = int(pb_utils.get_input_tensor_by_name(request, "START").as_numpy().reshape(-1)[0])
            end = int(pb_utils.get_input_tensor_by_name(request, "END").as_numpy().reshape(-1)[0])
            ready = int(pb_utils.get_input_tensor_by_name(request, "READY").as_numpy().reshape(-1)[0])
            corrid = pb_utils.get_input_tensor_by_name(request, "CORRID").as_numpy().reshape(-1)[0]
            total = 0
            if ready:
                total = _wrap((0 if start else self.sums.get(corrid, 0)) + value)
                if end:
                    self.sums.pop(corrid, None)
                else:
                    self.sums[corrid] = total
            output = pb_utils.Tensor("OUTPUT", np.array([[total]], dtype=np.int32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[output]))
        return responses
