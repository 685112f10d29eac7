"""Triton ensembles (platform: "ensemble") on a real server, through tritonclient gRPC and HTTP:
the bundled pipeline (pre_standardize -> mlp_torch -> post_softmax) and diamond (two branches
joined by branch_join) answer what calling their steps one by one answers; the diamond's branches
run at the same time; bad ensembles are refused at load with their reason; run-time errors name
the step; a step model that is unloaded makes the ensemble UNAVAILABLE while the rest serves."""

from __future__ import annotations

import shutil
import textwrap
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from tests.serverproc import EXAMPLES, ServerProcess, running, wait_until

pytestmark = pytest.mark.timeout(180)

# example models the ensembles here need, copied into a repository of the test's own
STEPS = ("pre_standardize", "mlp_torch", "post_softmax", "branch_double", "branch_square", "branch_join", "add_sub")
ENSEMBLES = ("mlp_pipeline", "diamond")


# ----------------------------------------------------------------------------- test repository


def python_model(repo: Path, name: str, body: str, config: str) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(f'name: "{name}"\nbackend: "python"\n' + textwrap.dedent(config))
    (repo / name / "1" / "model.py").write_text(textwrap.dedent(body))


def ensemble(repo: Path, name: str, config: str) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(f'name: "{name}"\nplatform: "ensemble"\n' + textwrap.dedent(config))


VECTOR = """\
max_batch_size: 8
input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ 4 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 4 ] } ]
"""
IDENTITY = """\
class Model:
    def execute(self, inputs):
        return {"OUTPUT0": inputs["INPUT0"]}
"""
FAILS_ON_NEGATIVE = """\
class Model:
    def execute(self, inputs):
        if (inputs["INPUT0"] < 0).any():
            raise ValueError("negative input")
        return {"OUTPUT0": inputs["INPUT0"]}
"""
# Each of the two writes its own marker, then waits for the other's: both see the other only if
# they run at the same time (in turn, the first gives up after 30 s and answers 0).
MEETS_THE_OTHER = """\
import time
from pathlib import Path

import numpy as np


class Model:
    def initialize(self, context):
        self.folder = Path(context.parameters["meeting_folder"])
        self.me = context.model_name
        self.other = "meet_b" if self.me == "meet_a" else "meet_a"

    def execute(self, inputs):
        token = int(inputs["TOKEN"].ravel()[0])
        (self.folder / f"{token}.{self.me}").touch()
        end = time.monotonic() + 30
        while not (self.folder / f"{token}.{self.other}").exists() and time.monotonic() < end:
            time.sleep(0.005)
        met = (self.folder / f"{token}.{self.other}").exists()
        return {"MET": np.full((len(inputs["TOKEN"]), 1), met, dtype=np.bool_)}
"""

# Marks that it started, then holds until the test releases it (token: the first input value).
HELD_UNTIL_RELEASED = """\
import time
from pathlib import Path


class Model:
    def initialize(self, context):
        self.folder = Path(context.parameters["meeting_folder"])

    def execute(self, inputs):
        token = int(inputs["INPUT0"].ravel()[0])
        (self.folder / f"{token}.started").touch()
        end = time.monotonic() + 30
        while not (self.folder / f"{token}.release").exists() and time.monotonic() < end:
            time.sleep(0.005)
        return {"OUTPUT0": inputs["INPUT0"]}
"""


def one_step(model: str, tensor_in: str = "INPUT", tensor_out: str = "OUTPUT") -> str:
    return f"""\
    {{
      model_name: "{model}"
      model_version: -1
      input_map {{ key: "INPUT0" value: "{tensor_in}" }}
      output_map {{ key: "OUTPUT0" value: "{tensor_out}" }}
    }}"""


def vector_ensemble(steps: list[str], *, input_type: str = "TYPE_FP32", dims: str = "4", extra: str = "") -> str:
    return (
        f"max_batch_size: 8\n"
        f'input [ {{ name: "INPUT", data_type: {input_type}, dims: [ {dims} ] }} ]\n'
        f'output [ {{ name: "OUTPUT", data_type: TYPE_FP32, dims: [ 4 ] }}{extra} ]\n'
        f"ensemble_scheduling {{ step [\n" + ",\n".join(steps) + "\n] }\n"
    )


# name -> (config, what the reason must say)
BAD_ENSEMBLES: dict[str, tuple[str, str]] = {
    "bad_no_steps": (
        'max_batch_size: 8\ninput [ { name: "INPUT", data_type: TYPE_FP32, dims: [ 4 ] } ]\n'
        'output [ { name: "OUTPUT", data_type: TYPE_FP32, dims: [ 4 ] } ]\nensemble_scheduling { }\n',
        "an ensemble needs at least one step",
    ),
    "bad_cycle": (
        vector_ensemble([one_step("ident", "b", "a"), one_step("ident", "a", "b"), one_step("ident", "INPUT")]),
        "the steps form a cycle: step 0 (model 'ident'), step 1 (model 'ident')",
    ),
    "bad_missing_tensor": (
        vector_ensemble([one_step("ident", "nowhere")]),
        "input 'INPUT0' reads tensor 'nowhere', which no ensemble input or step output produces",
    ),
    "bad_unproduced_output": (
        vector_ensemble([one_step("ident")], extra=', { name: "EXTRA", data_type: TYPE_FP32, dims: [ 4 ] }'),
        "no step produces ensemble output 'EXTRA'",
    ),
    "bad_produced_twice": (
        vector_ensemble([one_step("ident"), one_step("ident")]),
        "tensor 'OUTPUT' is produced twice: by step 0 and by output 'OUTPUT0' of model 'ident'",
    ),
    "bad_overwrites_input": (
        vector_ensemble([one_step("ident"), one_step("ident", "OUTPUT", "INPUT")]),
        "tensor 'INPUT' is produced twice: by an ensemble input",
    ),
    "bad_unknown_model": (
        vector_ensemble([one_step("no_such_model")]),
        "step 0 (model 'no_such_model'): model 'no_such_model' is not in the model repository",
    ),
    "bad_input_name": (
        vector_ensemble([one_step("ident").replace('key: "INPUT0"', 'key: "WRONG"')]),
        "model 'ident' has no input 'WRONG'",
    ),
    "bad_output_name": (
        vector_ensemble([one_step("ident").replace('key: "OUTPUT0"', 'key: "WRONG"')]),
        "model 'ident' has no output 'WRONG'",
    ),
    "bad_unmapped_input": (
        vector_ensemble([one_step("add_sub")]),  # add_sub also needs INPUT1
        "model 'add_sub' input 'INPUT1' is not mapped",
    ),
    "bad_dtype": (
        vector_ensemble([one_step("ident")], input_type="TYPE_INT32"),
        "tensor 'INPUT' is TYPE_INT32 (ensemble input 'INPUT') but input 'INPUT0' of model 'ident' is TYPE_FP32",
    ),
    "bad_dims": (
        vector_ensemble([one_step("ident")], dims="5"),
        "tensor 'INPUT' has dims [5] in 'bad_dims' but [4] in 'ident'",
    ),
    "bad_batch": (
        vector_ensemble([one_step("ident")]).replace("max_batch_size: 8", "max_batch_size: 16"),
        "the ensemble allows batches of 16, but step 0 (model 'ident') allows 8",
    ),
    "bad_self": (
        vector_ensemble([one_step("bad_self")]),
        "an ensemble cannot include itself",
    ),
    "bad_mutual_a": (
        vector_ensemble([one_step("bad_mutual_b")]),
        "model 'bad_mutual_b' includes ensemble 'bad_mutual_a' (a cycle)",
    ),
    "bad_mutual_b": (
        vector_ensemble([one_step("bad_mutual_a")]),
        "model 'bad_mutual_a' includes ensemble 'bad_mutual_b' (a cycle)",
    ),
}


def build_repository(repo: Path) -> None:
    for name in STEPS + ENSEMBLES:
        shutil.copytree(EXAMPLES / name, repo / name)
    python_model(repo, "ident", IDENTITY, VECTOR)
    python_model(repo, "failing", FAILS_ON_NEGATIVE, VECTOR)
    checked = [one_step("ident", "INPUT", "mid"), one_step("failing", "mid")]
    ensemble(repo, "checked", vector_ensemble(checked, dims="-1"))  # any length: step 0 checks it
    for version in (1, 2):  # ident serves version 1 only
        pinned = one_step("ident").replace("model_version: -1", f"model_version: {version}")
        ensemble(repo, f"pinned_{version}", vector_ensemble([pinned]))
    meeting = repo.parent / "meetings"
    meeting.mkdir()
    for side in ("meet_a", "meet_b"):
        python_model(
            repo,
            side,
            MEETS_THE_OTHER,
            f"""\
            max_batch_size: 8
            input [ {{ name: "TOKEN", data_type: TYPE_INT64, dims: [ 1 ] }} ]
            output [ {{ name: "MET", data_type: TYPE_BOOL, dims: [ 1 ] }} ]
            parameters {{ key: "execution_mode" value: {{ string_value: "thread" }} }}
            parameters {{ key: "meeting_folder" value: {{ string_value: "{meeting}" }} }}
            """,
        )
    held = VECTOR + (
        'parameters { key: "execution_mode" value: { string_value: "thread" } }\n'
        f'parameters {{ key: "meeting_folder" value: {{ string_value: "{meeting}" }} }}\n'
    )
    python_model(repo, "held", HELD_UNTIL_RELEASED, held)
    ensemble(repo, "held_chain", vector_ensemble([one_step("held", "INPUT", "mid"), one_step("ident", "mid")]))
    meet = """\
        {{ model_name: "{0}", model_version: -1,
          input_map {{ key: "TOKEN" value: "TOKEN" }}, output_map {{ key: "MET" value: "{1}" }} }}"""
    ensemble(
        repo,
        "rendezvous",
        'max_batch_size: 8\ninput [ { name: "TOKEN", data_type: TYPE_INT64, dims: [ 1 ] } ]\n'
        'output [ { name: "MET_A", data_type: TYPE_BOOL, dims: [ 1 ] }, '
        '{ name: "MET_B", data_type: TYPE_BOOL, dims: [ 1 ] } ]\n'
        f"ensemble_scheduling {{ step [ {meet.format('meet_a', 'MET_A')}, {meet.format('meet_b', 'MET_B')} ] }}\n",
    )
    for name, (config, _) in BAD_ENSEMBLES.items():
        ensemble(repo, name, config)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("ensembles") / "models"
    repo.mkdir()
    build_repository(repo)
    args = ("--model-control-mode", "explicit", "--load-model", "*", "--no-strict-readiness")
    with running(repo, *args, log_dir=logs_dir) as proc:
        yield proc
        assert proc.is_running(), proc.log()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server.url) as triton:
        yield triton


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpclient.InferenceServerClient]:
    with httpclient.InferenceServerClient(server.http_url) as triton:
        yield triton


# ------------------------------------------------------------------------------------- helpers


def call(client: grpcclient.InferenceServerClient, model: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
    """One gRPC request; every output as an array."""
    tensors = []
    for name, data in inputs.items():
        tensor = grpcclient.InferInput(name, list(data.shape), wire_type(data))
        tensor.set_data_from_numpy(data)
        tensors.append(tensor)
    result = client.infer(model, tensors)
    return {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}


def call_http(client: httpclient.InferenceServerClient, model: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
    tensors = []
    for name, data in inputs.items():
        tensor = httpclient.InferInput(name, list(data.shape), wire_type(data))
        tensor.set_data_from_numpy(data, binary_data=True)
        tensors.append(tensor)
    result = client.infer(model, tensors)
    return {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}


def wire_type(data: np.ndarray) -> str:
    return {"float32": "FP32", "int64": "INT64", "int32": "INT32"}[str(data.dtype)]


def failure(call_it: object) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call_it()  # type: ignore[operator]
    return info.value


def index(client: grpcclient.InferenceServerClient) -> dict[str, tuple[str, str]]:
    return {m.name: (m.state, m.reason) for m in client.get_model_repository_index().models}


def success_count(client: grpcclient.InferenceServerClient, model: str) -> tuple[int, int]:
    stats = client.get_inference_statistics(model).model_stats[0].inference_stats
    return stats.success.count, stats.fail.count


# --------------------------------------------------------------------------------- the examples


def test_pipeline_answers_what_its_steps_answer(client: grpcclient.InferenceServerClient) -> None:
    raw = np.random.default_rng(7).normal(3.0, 2.0, size=(5, 64)).astype(np.float32)
    got = call(client, "mlp_pipeline", RAW=raw)
    features = call(client, "pre_standardize", RAW=raw)["FEATURES"]
    logits = call(client, "mlp_torch", INPUT__0=features)["OUTPUT__0"]
    want = call(client, "post_softmax", LOGITS=logits)
    assert set(got) == {"PROBS", "CLASS"}
    np.testing.assert_allclose(got["PROBS"], want["PROBS"], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(got["CLASS"], want["CLASS"])
    assert got["PROBS"].shape == (5, 10)
    assert got["CLASS"].shape == (5, 1)


def test_diamond_answers_what_its_steps_answer_over_http(http: httpclient.InferenceServerClient) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4) - 5
    got = call_http(http, "diamond", INPUT=x)
    doubled = call_http(http, "branch_double", INPUT0=x)["OUTPUT0"]
    squared = call_http(http, "branch_square", INPUT0=x)["OUTPUT0"]
    want = call_http(http, "branch_join", INPUT0=doubled, INPUT1=squared)
    np.testing.assert_array_equal(got["SUM"], want["OUTPUT0"])
    np.testing.assert_array_equal(got["DIFF"], want["OUTPUT1"])
    np.testing.assert_array_equal(got["SUM"], 2 * x + x * x)


def test_batched_and_concurrent_requests(server: ServerProcess) -> None:
    """Batches of every size up to max_batch_size, many at once: each gets its own rows back."""

    def one(rows: int) -> None:
        with grpcclient.InferenceServerClient(server.url) as triton:
            x = np.random.default_rng(rows).normal(size=(rows, 4)).astype(np.float32)
            got = call(triton, "diamond", INPUT=x)
            np.testing.assert_allclose(got["SUM"], 2 * x + x * x, rtol=1e-6)
            np.testing.assert_allclose(got["DIFF"], 2 * x - x * x, rtol=1e-6)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, [1 + i % 8 for i in range(32)]))


def test_branches_run_at_the_same_time(client: grpcclient.InferenceServerClient) -> None:
    """meet_a and meet_b each wait for the other's marker: both meet only if they overlap."""
    got = call(client, "rendezvous", TOKEN=np.array([[1]], dtype=np.int64))
    assert got["MET_A"].tolist() == [[True]]
    assert got["MET_B"].tolist() == [[True]]


def test_ensemble_metadata_and_config(client: grpcclient.InferenceServerClient) -> None:
    meta = client.get_model_metadata("diamond")
    assert meta.platform == "ensemble"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("INPUT", "FP32", [-1, 4])]
    config = client.get_model_config("diamond").config
    assert [s.model_name for s in config.ensemble_scheduling.step] == ["branch_double", "branch_square", "branch_join"]


def request_metrics(server: ServerProcess, model: str) -> tuple[float, float]:
    """nv_inference_request_success and _failure (all reasons) of ``model`` version 1, scraped."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as answer:
        text = answer.read().decode()
    found = {"success": 0.0, "failure": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") == model and sample.name.startswith("nv_inference_request_"):
                kind = sample.name.removeprefix("nv_inference_request_").removesuffix("_total")
                if kind in found:
                    found[kind] += sample.value
    return found["success"], found["failure"]


def test_ensemble_and_steps_keep_their_own_statistics(
    server: ServerProcess, client: grpcclient.InferenceServerClient
) -> None:
    metrics_before = request_metrics(server, "diamond")
    before = {m: success_count(client, m) for m in ("diamond", "branch_double", "branch_join")}
    x = np.ones((2, 4), dtype=np.float32)
    call(client, "diamond", INPUT=x)
    failure(lambda: call(client, "diamond", INPUT=np.ones((2, 3), dtype=np.float32)))
    after = {m: success_count(client, m) for m in before}
    assert after["diamond"] == (before["diamond"][0] + 1, before["diamond"][1] + 1)
    assert after["branch_double"][0] == before["branch_double"][0] + 1
    assert after["branch_join"][0] == before["branch_join"][0] + 1
    assert request_metrics(server, "diamond") == (metrics_before[0] + 1, metrics_before[1] + 1)
    stats = client.get_inference_statistics("diamond").model_stats[0]
    assert stats.inference_count >= 2
    assert stats.inference_stats.success.ns > 0


# ---------------------------------------------------------------------------- bad ensembles


@pytest.mark.parametrize("name", sorted(BAD_ENSEMBLES))
def test_bad_ensemble_is_refused_at_load_with_its_reason(client: grpcclient.InferenceServerClient, name: str) -> None:
    fragment = BAD_ENSEMBLES[name][1]
    state, reason = index(client)[name]
    assert state == "UNAVAILABLE"
    assert f"ensemble '{name}'" in reason
    assert fragment in reason
    error = failure(lambda: client.load_model(name))
    assert str(error.status()) == "StatusCode.INVALID_ARGUMENT"
    assert fragment in (error.message() or "")
    assert client.is_model_ready(name) is False
    assert client.is_server_live()
    assert call(client, "diamond", INPUT=np.ones((1, 4), dtype=np.float32))["SUM"].tolist() == [[3.0] * 4]


def test_good_models_ready_beside_the_bad_ones(client: grpcclient.InferenceServerClient) -> None:
    rows = index(client)
    test_models = ("ident", "failing", "checked", "rendezvous", "held", "held_chain", "pinned_1", "pinned_2")
    for name in (*STEPS, *ENSEMBLES, *test_models):
        assert rows[name] == ("READY", ""), name


# ----------------------------------------------------------------------------- run-time errors


def test_a_step_rejecting_its_input_is_named_with_its_status(
    client: grpcclient.InferenceServerClient, http: httpclient.InferenceServerClient
) -> None:
    """The ensemble takes any length; its step 0 (ident) takes 4: INVALID_ARGUMENT, step named."""
    short = np.ones((1, 3), dtype=np.float32)
    error = failure(lambda: call(client, "checked", INPUT=short))
    assert str(error.status()) == "StatusCode.INVALID_ARGUMENT"
    message = error.message() or ""
    assert message.startswith("ensemble 'checked' step 0 (model 'ident'): ")
    assert "unexpected shape for input 'INPUT0' for model 'ident'" in message
    error = failure(lambda: call_http(http, "checked", INPUT=short))
    assert error.status() == "400"
    assert "ensemble 'checked' step 0 (model 'ident')" in (error.message() or "")


def test_a_failing_step_is_named_and_the_server_serves_on(
    client: grpcclient.InferenceServerClient, http: httpclient.InferenceServerClient
) -> None:
    negative = -np.ones((2, 4), dtype=np.float32)
    error = failure(lambda: call(client, "checked", INPUT=negative))
    assert str(error.status()) == "StatusCode.INTERNAL"
    message = error.message() or ""
    assert message.startswith("ensemble 'checked' step 1 (model 'failing'): ")
    assert "ValueError: negative input" in message
    error = failure(lambda: call_http(http, "checked", INPUT=negative))
    assert error.status() == "500"
    assert "step 1 (model 'failing')" in (error.message() or "")
    ok = np.ones((2, 4), dtype=np.float32)
    np.testing.assert_array_equal(call(client, "checked", INPUT=ok)["OUTPUT"], ok)


def test_the_ensemble_validates_its_own_inputs(client: grpcclient.InferenceServerClient) -> None:
    error = failure(lambda: call(client, "diamond", INPUT=np.ones((1, 4), dtype=np.int32)))
    assert str(error.status()) == "StatusCode.INVALID_ARGUMENT"
    assert "model 'diamond' expects 'FP32'" in (error.message() or "")
    error = failure(lambda: call(client, "diamond", INPUT=np.ones((9, 4), dtype=np.float32)))
    assert str(error.status()) == "StatusCode.INVALID_ARGUMENT"
    assert "batch-size must be <= 8 for 'diamond'" in (error.message() or "")


def test_an_unloaded_step_makes_the_ensemble_unavailable(client: grpcclient.InferenceServerClient) -> None:
    x = np.ones((1, 4), dtype=np.float32)
    client.unload_model("branch_square")
    try:
        error = failure(lambda: call(client, "diamond", INPUT=x))
        assert str(error.status()) == "StatusCode.UNAVAILABLE"
        assert (error.message() or "").startswith("ensemble 'diamond' step 1 (model 'branch_square'): ")
        assert client.is_model_ready("diamond")  # it is the step that is missing, not the ensemble
        raw = np.ones((1, 64), dtype=np.float32)
        assert call(client, "mlp_pipeline", RAW=raw)["PROBS"].shape == (1, 10)  # the rest serves
    finally:
        client.load_model("branch_square")
    assert call(client, "diamond", INPUT=x)["SUM"].tolist() == [[3.0] * 4]  # the reload is picked up


def test_loading_an_ensemble_loads_its_step_models(client: grpcclient.InferenceServerClient) -> None:
    for step in ("branch_double", "branch_square", "branch_join"):
        client.unload_model(step)
    client.unload_model("diamond")
    assert not client.is_model_ready("branch_square")
    client.load_model("diamond")  # as Triton does: the steps not serving come up first
    assert all(client.is_model_ready(step) for step in ("branch_double", "branch_square", "branch_join"))
    x = np.ones((1, 4), dtype=np.float32)
    assert call(client, "diamond", INPUT=x)["SUM"].tolist() == [[3.0] * 4]


def test_an_ensemble_whose_step_cannot_load_fails_its_load_naming_the_step(
    server: ServerProcess, client: grpcclient.InferenceServerClient
) -> None:
    repo = server.repository
    ensemble(
        repo,
        "broken_steps",
        """\
        max_batch_size: 8
        input [ { name: "X", data_type: TYPE_FP32, dims: [ 4 ] } ]
        output [ { name: "Y", data_type: TYPE_FP32, dims: [ 4 ] } ]
        ensemble_scheduling { step [ { model_name: "unloadable", model_version: -1,
          input_map { key: "INPUT0" value: "X" } output_map { key: "OUTPUT0" value: "Y" } } ] }
        """,
    )
    python_model(repo, "unloadable", "raise ImportError('no such package')\n", VECTOR)
    error = failure(lambda: client.load_model("broken_steps"))
    assert "step model 'unloadable' failed to load" in (error.message() or "")
    assert client.is_server_live()


def held_executions(client: grpcclient.InferenceServerClient) -> int:
    return int(client.get_inference_statistics("held").model_stats[0].execution_count)


def test_a_cancelled_request_runs_no_further_step(
    server: ServerProcess, client: grpcclient.InferenceServerClient
) -> None:
    """The client cancels while step 0 (held) executes: step 1 (ident) is never sent the request."""
    meeting = server.repository.parent / "meetings"
    idents = success_count(client, "ident")
    ensembles = success_count(client, "held_chain")
    tensor = grpcclient.InferInput("INPUT", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.full((1, 4), 41, dtype=np.float32))
    answers: list[object] = []
    call_context = client.async_infer("held_chain", [tensor], lambda result, error: answers.append(error))
    wait_until((meeting / "41.started").exists, "step 0 started", interval_s=0.01)
    call_context.cancel()
    wait_until(lambda: bool(answers), "an answer to the cancelled request", interval_s=0.01)
    assert isinstance(answers[0], InferenceServerException)
    assert "CANCELLED" in str(answers[0].status())
    executions = held_executions(client)  # step 0 still holds: its batch has not finished
    (meeting / "41.release").touch()
    wait_until(lambda: held_executions(client) > executions, "step 0 finished", interval_s=0.01)
    wait_until(
        lambda: success_count(client, "held_chain")[1] == ensembles[1] + 1,
        "the ensemble's failure counted",
        interval_s=0.01,
    )
    assert success_count(client, "ident") == idents  # step 1 never ran
    (meeting / "42.release").touch()
    x = np.full((1, 4), 42, dtype=np.float32)
    np.testing.assert_array_equal(call(client, "held_chain", INPUT=x)["OUTPUT"], x)


def test_only_the_requested_outputs_come_back(client: grpcclient.InferenceServerClient) -> None:
    x = np.full((2, 4), 3, dtype=np.float32)
    tensor = grpcclient.InferInput("INPUT", [2, 4], "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("diamond", [tensor], outputs=[grpcclient.InferRequestedOutput("DIFF")])
    assert [o.name for o in result.get_response().outputs] == ["DIFF"]
    np.testing.assert_array_equal(result.as_numpy("DIFF"), np.full((2, 4), -3, dtype=np.float32))
    error = failure(lambda: client.infer("diamond", [tensor], outputs=[grpcclient.InferRequestedOutput("doubled")]))
    assert str(error.status()) == "StatusCode.INVALID_ARGUMENT"  # intermediate tensors are not outputs
    assert "unexpected inference output 'doubled' for model 'diamond'" in (error.message() or "")


def test_a_step_pinned_to_a_version_uses_that_version(client: grpcclient.InferenceServerClient) -> None:
    x = np.ones((1, 4), dtype=np.float32)
    np.testing.assert_array_equal(call(client, "pinned_1", INPUT=x)["OUTPUT"], x)
    error = failure(lambda: call(client, "pinned_2", INPUT=x))
    assert str(error.status()) == "StatusCode.UNAVAILABLE"
    message = error.message() or ""
    assert message.startswith("ensemble 'pinned_2' step 0 (model 'ident'): ")
    assert "version 2" in message
