"""Records each execution's start and end (JSON lines: event, model, instance, time) to the
``record_file`` parameter's file; within an execution, waits up to ``partner_wait_s`` for another
execution to run beside it, and while the ``hold_file`` parameter's file exists (60 s at most)."""

import json
import os
import time

import triton_python_backend_utils as pb_utils

HOLD_LIMIT_S = 60.0


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"]).get("parameters", {})

        def param(key, default):
            return parameters.get(key, {}).get("string_value", default)

        self.model = args["model_name"]
        self.instance = args["model_instance_name"]
        self.record_file = param("record_file", "")
        self.partner_wait_s = float(param("partner_wait_s", "0"))
        self.hold_file = param("hold_file", "")

    def execute(self, requests):
        starts = self.record("start")
        self.wait(lambda: self.partner(starts), self.partner_wait_s)
        if self.hold_file:
            self.wait(lambda: not os.path.exists(self.hold_file), HOLD_LIMIT_S)
        self.record("end")
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy())]
            )
            for r in requests
        ]

    def partner(self, starts):
        """Another execution runs now, or started since this one did."""
        now = self.count("start")
        return now > starts or now - self.count("end") > 1

    def wait(self, done, limit_s):
        end = time.monotonic() + limit_s
        while not done() and time.monotonic() < end:
            time.sleep(0.005)

    def record(self, event):
        """Appends the event; returns how many starts the file held with it."""
        if not self.record_file:
            return 0
        line = {"event": event, "model": self.model, "instance": self.instance, "time": time.time()}
        with open(self.record_file, "a") as out:
            out.write(json.dumps(line) + "\n")
        return self.count("start")

    def count(self, event):
        if not self.record_file or not os.path.exists(self.record_file):
            return 0
        with open(self.record_file) as lines:
            return sum(1 for line in lines if f'"event": "{event}"' in line)  # a line being written may be cut
