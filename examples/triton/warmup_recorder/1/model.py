"""Doubles INPUT0; records each request it executes (a JSON line: INPUT0, TEXT, the time) to
the file named by the ``record_file`` parameter, when set; a negative INPUT0 fails its request."""

import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"]).get("parameters", {})
        self.record_file = parameters.get("record_file", {}).get("string_value", "")

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            self.record(x, text)
            if (x < 0).any():
                error = pb_utils.TritonError("negative input", pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", (x * 2).astype(np.float32))]))
        return responses

    def record(self, x, text):
        if not self.record_file:
            return
        line = {
            "input0": x.tolist(),
            "text": [[item.decode(errors="replace") for item in row] for row in text.reshape(len(text), -1)],
            "time": time.time(),
        }
        with open(self.record_file, "a") as out:
            out.write(json.dumps(line) + "\n")
