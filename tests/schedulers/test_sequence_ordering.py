"""``sequence_batching { oldest { preserve_ordering: true } }``: answers leave in the order their
batches were formed, across the version's instances, even when a later batch finishes first;
without it, the later batch's answer leaves at once. A real server and tritonclient; a Triton
Python model of two instances holds the executions of value 1 while a file exists, and records
when each execution ends (no timing luck: the test waits on the file and on the record)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.serverproc import ServerProcess, running, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

MODEL_PY = """
import json, os, time
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"])["parameters"]
        self.hold = parameters["hold_file"]["string_value"]
        self.record = parameters["record_file"]["string_value"]

    def execute(self, requests):
        answers = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            with open(self.record, "a") as f:
                f.write(f"start{int(value.reshape(-1)[0])}\\n")
            deadline = time.monotonic() + 60
            while int(value.reshape(-1)[0]) == 1 and os.path.exists(self.hold) and time.monotonic() < deadline:
                time.sleep(0.01)
            with open(self.record, "a") as f:
                f.write(f"end{int(value.reshape(-1)[0])}\\n")
            answers.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", value)]))
        return answers
"""


def repository(root: Path, preserve: bool) -> tuple[Path, Path]:
    hold, record = root / "hold", root / "record.txt"
    model = root / "repo" / "ordered"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text(MODEL_PY)
    (model / "config.pbtxt").write_text(
        f"""name: "ordered"
backend: "python"
max_batch_size: 1
input [ {{ name: "INPUT", data_type: TYPE_INT32, dims: [ 1 ] }} ]
output [ {{ name: "OUTPUT", data_type: TYPE_INT32, dims: [ 1 ] }} ]
sequence_batching {{ oldest {{ max_candidate_sequences: 1 preserve_ordering: {str(preserve).lower()} }} }}
instance_group [ {{ kind: KIND_CPU, count: 2 }} ]
parameters {{ key: "execution_mode" value {{ string_value: "thread" }} }}
parameters {{ key: "hold_file" value {{ string_value: "{hold}" }} }}
parameters {{ key: "record_file" value {{ string_value: "{record}" }} }}
"""
    )
    return hold, record


def recorded(record: Path) -> list[str]:
    return record.read_text().split() if record.exists() else []


def ask(server: ServerProcess, value: int, answered: dict[int, float]) -> None:
    with grpcclient.InferenceServerClient(server.url) as client:
        tensor = grpcclient.InferInput("INPUT", [1, 1], "INT32")
        tensor.set_data_from_numpy(np.array([[value]], np.int32))
        client.infer("ordered", [tensor], sequence_id=value, sequence_start=True, sequence_end=True, client_timeout=120)
    answered[value] = time.monotonic()


def held_then_released(tmp_path: Path, logs_dir: Path, preserve: bool) -> tuple[dict[int, float], bool]:
    """Sequence 1 is held on one instance; sequence 2 runs to its end on the other. Returns when
    each was answered and whether 2 had its answer before 1 was released."""
    hold, record = repository(tmp_path, preserve)
    hold.touch()
    answered: dict[int, float] = {}
    with running(tmp_path / "repo", log_dir=logs_dir) as server:
        first = threading.Thread(target=ask, args=(server, 1, answered))
        first.start()
        wait_until(lambda: recorded(record) == ["start1"], "sequence 1 is held")
        second = threading.Thread(target=ask, args=(server, 2, answered))
        second.start()
        wait_until(lambda: recorded(record) == ["start1", "start2", "end2"], "sequence 2 runs on the other instance")
        if not preserve:
            second.join(60)
        else:  # it must not leave: give it ample time to (wrongly) arrive
            second.join(1.0)
        early = 2 in answered
        hold.unlink()
        first.join(60)
        second.join(60)
    return answered, early


def test_preserve_ordering_holds_a_later_batchs_answer(tmp_path: Path, logs_dir: Path) -> None:
    answered, early = held_then_released(tmp_path, logs_dir, preserve=True)
    assert not early  # 2 finished long before but waited for 1 (which clients record first is a race)
    assert set(answered) == {1, 2}


def test_without_it_a_later_batchs_answer_leaves_at_once(tmp_path: Path, logs_dir: Path) -> None:
    answered, early = held_then_released(tmp_path, logs_dir, preserve=False)
    assert early
    assert answered[2] < answered[1]
