"""A member model for the application tests and benchmark. Parameters (config ``parameters``):
``value`` (added to every answer), ``scale`` (times the input's first element), ``by_version``
("1": add the version number), ``delay_ms`` (sleep per batch: a slow member)."""

import time

import numpy as np


class Model:
    def initialize(self, context):
        p = context.parameters
        self.value = float(p.get("value", "0"))
        self.scale = float(p.get("scale", "0"))
        self.delay_s = float(p.get("delay_ms", "0")) / 1000
        if p.get("by_version") == "1":
            self.value += context.version

    def execute(self, inputs):
        x = inputs["INPUT0"]
        if self.delay_s:
            time.sleep(self.delay_s)
        return {"OUTPUT0": (x[:, :1] * self.scale + self.value).astype(np.float32)}
