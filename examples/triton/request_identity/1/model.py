"""Answers each request with its own identity: request_id(), correlation_id() (as JSON, so that
an integer and a string stay apart) and parameters(), each a one-element BYTES output."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            rows = values.shape[0]
            texts = {
                "REQUEST_ID": request.request_id(),
                "CORRELATION_ID": json.dumps(request.correlation_id()),
                "PARAMETERS": request.parameters(),
            }
            outputs = [pb_utils.Tensor("OUT", values)]
            for name, text in texts.items():
                outputs.append(pb_utils.Tensor(name, np.full((rows, 1), text.encode(), dtype=object)))
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses
