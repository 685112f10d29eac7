"""A decoupled model in Triton's Python dialect: each request gets len(IN) answers, the i-th
carrying OUT = IN[i] and IDX = i, sent DELAY[i] ms apart by a thread of the model, then the
final flag alone. ``execute`` returns None after WAIT ms, so answers of several requests may
interleave. A request whose client went away (``is_cancelled()``) stops early (recorded as a
line "IN[0] index" in the file named by the parameter ``cancel_file``, when set)."""

import json
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException(f"model '{args['model_name']}' must be decoupled")
        self.out_type = pb_utils.triton_string_to_numpy(pb_utils.get_output_config_by_name(config, "OUT")["data_type"])
        self.idx_type = pb_utils.triton_string_to_numpy(pb_utils.get_output_config_by_name(config, "IDX")["data_type"])
        self.threads = []
        # optional: a file where each request stopped by cancellation is recorded (tests)
        self.cancel_file = config.get("parameters", {}).get("cancel_file", {}).get("string_value", "")

    def execute(self, requests):
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            delays = pb_utils.get_input_tensor_by_name(request, "DELAY").as_numpy()
            sender = request.get_response_sender()
            if values.shape != delays.shape:
                error = pb_utils.TritonError(
                    f"IN and DELAY must have the same shape, got {list(values.shape)} and {list(delays.shape)}"
                )
                sender.send(
                    pb_utils.InferenceResponse(error=error), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
                )
                continue
            worker = threading.Thread(target=self.answer, args=(request, sender, values, delays), daemon=True)
            self.threads = [t for t in self.threads if t.is_alive()] + [worker]
            worker.start()
            wait_ms = pb_utils.get_input_tensor_by_name(request, "WAIT").as_numpy()[0]
            time.sleep(wait_ms / 1000)
        return

    def answer(self, request, sender, values, delays):
        for index, (value, delay) in enumerate(zip(values, delays, strict=True)):
            if request.is_cancelled():
                self.record_cancel(values, index)
                break
            time.sleep(delay / 1000)
            outputs = [
                pb_utils.Tensor("OUT", np.array([value], dtype=self.out_type)),
                pb_utils.Tensor("IDX", np.array([index], dtype=self.idx_type)),
            ]
            sender.send(pb_utils.InferenceResponse(output_tensors=outputs))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def record_cancel(self, values, index):
        if self.cancel_file:
            with open(self.cancel_file, "a") as file:
                file.write(f"{values[0]} {index}\n")

    def finalize(self):
        for worker in self.threads:
            worker.join(timeout=10)
