"""The rate limiter on real servers (examples/triton/rate_limited records its executions'
intervals): with --rate-limit execution_count two instances sharing one copy of a resource never
execute at once, even when each waits for the other to start; a higher priority goes first;
with --rate-limit off the same instances do run together. No timing luck: the model waits, within
its execution, for a partner's start or for a file to go away, with generous deadlines."""

from __future__ import annotations

import functools
import itertools
import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.serverproc import ROOT, ServerProcess, model_metric, running, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

EXAMPLE = ROOT / "examples" / "triton" / "rate_limited"


def add(root: Path, name: str, parameters: dict[str, str], edit: dict[str, str] | None = None) -> None:
    shutil.copytree(EXAMPLE, root / name)
    config = (root / name / "config.pbtxt").read_text().replace('"rate_limited"', f'"{name}"')
    for old, new in (edit or {}).items():
        assert old in config, old
        config = config.replace(old, new)
    for key, value in parameters.items():
        config += f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}\n'
    (root / name / "config.pbtxt").write_text(config)


def infer(url: str, model: str) -> None:
    with grpcclient.InferenceServerClient(url) as client:
        tensor = grpcclient.InferInput("INPUT0", [1], "FP32")
        tensor.set_data_from_numpy(np.array([1.0], np.float32))
        client.infer(model, [tensor], client_timeout=120)


def in_threads(calls: list[Callable[[], None]]) -> list[threading.Thread]:
    threads = [threading.Thread(target=call) for call in calls]
    for thread in threads:
        thread.start()
    return threads


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def intervals(path: Path) -> list[tuple[float, float]]:
    """Each execution's (start, end), matched per instance (one execution at a time each)."""
    open_at: dict[str, float] = {}
    spans = []
    for line in records(path):
        if line["event"] == "start":
            open_at[line["instance"]] = line["time"]
        else:
            spans.append((open_at.pop(line["instance"]), line["time"]))
    assert not open_at, "an execution never ended"
    return sorted(spans)


def overlaps(spans: list[tuple[float, float]]) -> bool:
    return any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))


def run_pair(server: ServerProcess, requests: int) -> None:
    threads = in_threads([lambda: infer(server.url, "pair")] * requests)
    for thread in threads:
        thread.join(150)


def test_instances_sharing_one_copy_never_execute_at_once(tmp_path: Path, logs_dir: Path) -> None:
    """Each execution waits up to 2 s for another to start: none ever does."""
    record = tmp_path / "pair.jsonl"
    add(tmp_path, "pair", {"record_file": str(record), "partner_wait_s": "2"})
    with running(tmp_path, "--rate-limit", "execution_count", log_dir=logs_dir) as server:
        run_pair(server, 3)
    spans = intervals(record)
    assert len(spans) == 3
    assert not overlaps(spans), spans
    assert all(end - start >= 1.9 for start, end in spans)  # each waited its full window alone


def test_rate_limit_off_lifts_it(tmp_path: Path, logs_dir: Path) -> None:
    """The same instances, the same resources, the limiter off (Triton's default): both
    executions start, each seeing the other's start within its (generous) 60 s window."""
    record = tmp_path / "pair.jsonl"
    add(tmp_path, "pair", {"record_file": str(record), "partner_wait_s": "60"})
    with running(tmp_path, "--rate-limit=off", log_dir=logs_dir) as server:
        run_pair(server, 2)
    spans = intervals(record)
    assert len(spans) == 2
    assert overlaps(spans), spans


def test_the_higher_priority_goes_first(tmp_path: Path, logs_dir: Path) -> None:
    """A holder keeps the one copy of R (until its hold file goes); 'low' (priority 2) asks
    first, 'high' (priority 1) next; once the holder ends, 'high' runs before 'low'."""
    record, hold = tmp_path / "runs.jsonl", tmp_path / "hold"
    one = {"count: 2": "count: 1"}
    add(tmp_path, "holder", {"record_file": str(record), "hold_file": str(hold)}, one)
    add(tmp_path, "low", {"record_file": str(record)}, {**one, "priority: 1": "priority: 2"})
    add(tmp_path, "high", {"record_file": str(record)}, one)
    hold.touch()
    with running(tmp_path, "--rate-limit", "execution_count", log_dir=logs_dir) as server:
        threads = in_threads([lambda: infer(server.url, "holder")])
        wait_until(lambda: len(records(record)) == 1, "the holder starts")
        for model in ("low", "high"):
            threads += in_threads([functools.partial(infer, server.url, model)])
            pending = functools.partial(model_metric, server, "nv_inference_pending_request_count", model)
            wait_until(lambda pending=pending: pending() == 1, f"{model} waits for R")  # type: ignore[misc]
        assert [r["model"] for r in records(record)] == ["holder"]  # nobody ran beside the holder
        hold.unlink()
        for thread in threads:
            thread.join(150)
    starts = [r["model"] for r in records(record) if r["event"] == "start"]
    assert starts == ["holder", "high", "low"]
    assert not overlaps(intervals(record))


def test_sequence_models_are_rate_limited_too(tmp_path: Path, logs_dir: Path) -> None:
    """The same pair as a sequence model (a direct slot per instance): three one-request
    sequences, each execution waiting up to 2 s for another to start: none ever does."""
    record = tmp_path / "pair.jsonl"
    add(tmp_path, "pair", {"record_file": str(record), "partner_wait_s": "2"})
    config = tmp_path / "pair" / "config.pbtxt"
    config.write_text(config.read_text() + "sequence_batching { max_sequence_idle_microseconds: 60000000 }\n")

    def one_sequence(sequence_id: int) -> None:
        with grpcclient.InferenceServerClient(server.url) as client:
            tensor = grpcclient.InferInput("INPUT0", [1], "FP32")
            tensor.set_data_from_numpy(np.array([1.0], np.float32))
            client.infer("pair", [tensor], sequence_id=sequence_id, sequence_start=True, sequence_end=True,
                         client_timeout=120)  # fmt: skip

    with running(tmp_path, "--rate-limit", "execution_count", log_dir=logs_dir) as server:
        threads = in_threads([functools.partial(one_sequence, n) for n in (1, 2, 3)])
        for thread in threads:
            thread.join(150)
    spans = intervals(record)
    assert len(spans) == 3
    assert not overlaps(spans), spans
