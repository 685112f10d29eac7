"""A repository of decoupled models for the streaming tests: the repeat examples of
examples/triton, identity_fp32, and models that record what they saw into files under a marker
folder (the config parameter ``marker_dir``), so a test can wait for the model's own account:
that it saw ``is_cancelled()``, that its generator was closed, how many answers it has sent."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from tests.serverproc import EXAMPLES, ROOT

TRITON_EXAMPLES = ROOT / "examples" / "triton"

_IO = """
input [ { name: "N" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ -1 ] } ]
"""

# Triton dialect: answers until the client goes away, then records it and sends the final flag
ENDLESS_TRITON = """
import json, os, threading, time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.marker = config["parameters"]["marker_dir"]["string_value"]

    def execute(self, requests):
        for request in requests:
            threading.Thread(target=self.run, args=(request,), daemon=True).start()
        return None

    def run(self, request):
        sender = request.get_response_sender()
        sent = 0
        while not request.is_cancelled():
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([sent], np.int32))]))
            sent += 1
            time.sleep(0.005)
        with open(os.path.join(self.marker, "cancelled-" + request.request_id() + str(id(request))), "w") as f:
            f.write(str(sent))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
"""

# clipperd dialect: a generator that never ends; its finally records that it was closed
ENDLESS_GENERATOR = """
import itertools, os, time
import numpy as np


class Model:
    def initialize(self, context):
        self.marker = context.parameters["marker_dir"]

    def execute(self, inputs):
        try:
            for sent in itertools.count():
                yield {"OUT": np.array([sent], np.int32)}
                time.sleep(0.005)
        finally:
            with open(os.path.join(self.marker, "closed-%d" % time.monotonic_ns()), "w") as f:
                f.write("closed")
"""

ENDLESS_ASYNC = """
import asyncio, itertools, os, time
import numpy as np


class Model:
    def initialize(self, context):
        self.marker = context.parameters["marker_dir"]

    async def execute(self, inputs):
        try:
            for sent in itertools.count():
                yield {"OUT": np.array([sent], np.int32)}
                await asyncio.sleep(0.005)
        finally:
            with open(os.path.join(self.marker, "closed-%d" % time.monotonic_ns()), "w") as f:
                f.write("closed")
"""

# N answers of N["N"] MiB-sized int32 vectors; records how many it has handed over so far
BIG_ANSWERS = """
import os
import numpy as np


class Model:
    def initialize(self, context):
        self.count = os.path.join(context.parameters["marker_dir"], "big-count")

    def execute(self, inputs):
        total = int(inputs["N"][0])
        block = np.arange(256 * 1024, dtype=np.int32)  # 1 MiB
        for index in range(total):
            with open(self.count, "w") as f:
                f.write(str(index))
            yield {"OUT": block + index}
        with open(self.count, "w") as f:
            f.write(str(total))
"""

# sends its final answer, then tries once more: Triton's rule is an exception
SEND_AFTER_FINAL = """
import json, os
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.marker = config["parameters"]["marker_dir"]["string_value"]

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            answer = pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([1], np.int32))])
            sender.send(answer, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            try:
                sender.send(answer)
                outcome = "no error"
            except pb_utils.TritonModelException as error:
                outcome = error.message()
            with open(os.path.join(self.marker, "after-final"), "w") as f:
                f.write(outcome)
        return None
"""

# a decoupled Triton model whose execute returns responses, as a non-decoupled one would
RETURNS_LIST = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([1], np.int32))]) for _ in requests]
"""

MODELS = {
    "endless_triton": ENDLESS_TRITON,
    "endless_generator": ENDLESS_GENERATOR,
    "endless_async": ENDLESS_ASYNC,
    "big_answers": BIG_ANSWERS,
    "send_after_final": SEND_AFTER_FINAL,
    "returns_list": RETURNS_LIST,
}


def build_repository(root: Path) -> tuple[Path, Path]:
    """(repository, marker folder) under ``root``."""
    repo, marker = root / "repo", root / "marker"
    marker.mkdir(parents=True)
    shutil.copytree(TRITON_EXAMPLES / "repeat_int32", repo / "repeat_int32")
    shutil.copytree(TRITON_EXAMPLES / "repeat_generator", repo / "repeat_generator")
    shutil.copytree(EXAMPLES / "identity_fp32", repo / "identity_fp32")
    for name, source in MODELS.items():
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.py").write_text(source)
        config = f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\n'
        config += "model_transaction_policy { decoupled: true }\n" + _IO
        config += f'parameters {{ key: "marker_dir" value {{ string_value: "{marker}" }} }}\n'
        (repo / name / "config.pbtxt").write_text(config)
    return repo, marker


def wait_for(check: object, what: str, timeout: float = 30.0) -> None:
    """Until ``check()`` is true, or AssertionError after ``timeout`` s (a generous deadline)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout:g} s: {what}")
