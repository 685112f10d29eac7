"""The response cache (Triton's ``--cache-config local,size=N`` and ``response_cache { enable:
true }``, Clipper's prediction cache): the structure itself, then real servers driven by
tritonclient over gRPC and HTTP. A test model counts its executions in a file beside it, so a hit
is seen to skip the model by the model's own count as well as by the statistics."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from backends.proto import model_config_pb2 as mc
from schedulers.cache import ENTRY_OVERHEAD, ResponseCache, VersionCache, entry_size, version_cache
from server.cli import main as cli_main
from server.settings import parse_cache_config
from tests.conftest import Region
from tests.serverproc import EXAMPLES, ROOT, ServerProcess, running

pytestmark = pytest.mark.timeout(120)

# ------------------------------------------------------------------------------ the structure


def _key(cache: VersionCache, data: np.ndarray, name: str = "INPUT0", dtype: str = "FP32") -> Any:
    return cache.key([(name, dtype, list(data.shape), data)])


def _outputs(n: int, fill: float = 1.0) -> dict[str, np.ndarray]:
    return {"OUT": np.full(n, fill, dtype=np.float32)}


def test_keys_are_the_exact_input_bytes() -> None:
    versions = VersionCache(ResponseCache(1 << 20), "m", 1)
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    b = a.copy()
    b.view(np.uint8)[0, 37] ^= 1  # one bit of one byte
    assert _key(versions, a) == _key(versions, a.copy())
    assert _key(versions, a) != _key(versions, b)
    assert _key(versions, a) != _key(versions, a.reshape(2, 8))  # same bytes, another shape
    assert _key(versions, a) != _key(versions, a.view(np.int32), dtype="INT32")  # same bytes, another type
    assert _key(versions, a) != _key(versions, a, name="INPUT1")
    two = [("X", "FP32", [1], np.ones(1, np.float32)), ("Y", "FP32", [1], np.zeros(1, np.float32))]
    assert versions.key(two) == versions.key(reversed(two))  # the order inputs come in does not matter
    words = np.array([b"ab", b"c"], dtype=object)
    assert _key(versions, words, dtype="BYTES") != _key(versions, np.array([b"a", b"bc"], dtype=object), dtype="BYTES")
    other = VersionCache(versions.cache, "m", 1)  # a reload of the same version: a new generation
    assert _key(other, a) != _key(versions, a)


def test_a_key_differing_in_one_byte_never_shares_an_entry() -> None:
    cache = ResponseCache(1 << 20)
    versions = VersionCache(cache, "m", 1)
    a = np.zeros((1, 16), np.float32)
    b = a.copy()
    b[0, 15] = np.float32(-0.0)  # equal as a float, not as bytes
    cache.insert(_key(versions, a), _outputs(4, 1.0))
    assert cache.lookup(_key(versions, b)) is None
    cache.insert(_key(versions, b), _outputs(4, 2.0))
    hit = cache.lookup(_key(versions, a))
    assert hit is not None
    np.testing.assert_array_equal(hit["OUT"], np.ones(4, np.float32))


def test_byte_accounting_follows_inserts_replacements_evictions_and_purges() -> None:
    cache = ResponseCache(10_000)
    versions = VersionCache(cache, "model", 3)
    keys = [_key(versions, np.full((1, 8), i, np.float32)) for i in range(3)]
    sizes = [entry_size(k, _outputs(100)) for k in keys]
    # key: the model name, the input's name, type, shape and 32 bytes; outputs: name and 400 bytes
    assert sizes[0] == len("model") + len("INPUT0") + len("FP32") + 8 * 2 + 32 + len("OUT") + 400 + ENTRY_OVERHEAD
    for k in keys:
        assert cache.insert(k, _outputs(100))
    assert cache.size == sum(sizes)
    assert len(cache) == 3
    cache.insert(keys[1], _outputs(10))  # replaced by a smaller answer
    assert cache.size == sizes[0] + entry_size(keys[1], _outputs(10)) + sizes[2]
    versions.close()
    assert cache.size == 0
    assert len(cache) == 0
    assert cache.evictions == 0


def test_least_recently_used_entries_are_evicted_first() -> None:
    probe = VersionCache(ResponseCache(1 << 20), "m", 1)
    one = entry_size(_key(probe, np.zeros((1, 4), np.float32)), _outputs(64))
    cache = ResponseCache(3 * one)  # room for three entries of this size
    versions = VersionCache(cache, "m", 1)
    keys = [_key(versions, np.full((1, 4), i, np.float32)) for i in range(5)]
    for k in keys[:3]:
        cache.insert(k, _outputs(64))
    assert cache.lookup(keys[0]) is not None  # 0 becomes the most recently used: 1 is the oldest
    cache.insert(keys[3], _outputs(64))
    assert cache.keys() == [keys[2], keys[0], keys[3]]
    cache.insert(keys[4], _outputs(64))
    assert cache.keys() == [keys[0], keys[3], keys[4]]
    assert cache.evictions == 2
    assert cache.size == 3 * one


def test_an_entry_larger_than_the_cache_is_not_stored_and_evicts_nothing() -> None:
    cache = ResponseCache(2_000)
    versions = VersionCache(cache, "m", 1)
    small = _key(versions, np.zeros((1, 4), np.float32))
    assert cache.insert(small, _outputs(16))
    big = _key(versions, np.ones((1, 4), np.float32))
    assert not cache.insert(big, _outputs(1_000))  # 4000 bytes of output
    assert big not in cache
    assert small in cache
    assert cache.evictions == 0


def test_stored_outputs_are_read_only_copies() -> None:
    cache = ResponseCache(1 << 20)
    versions = VersionCache(cache, "m", 1)
    key = _key(versions, np.zeros((1, 4), np.float32))
    produced = {"OUT": np.arange(4, dtype=np.float32), "TEXT": np.array([b"a", "b"], dtype=object)}
    cache.insert(key, produced)
    produced["OUT"][:] = -1  # the model (or whoever holds the arrays) writes into them afterwards
    produced["TEXT"][0] = b"changed"
    hit = cache.lookup(key)
    assert hit is not None
    np.testing.assert_array_equal(hit["OUT"], np.arange(4, dtype=np.float32))
    assert hit["TEXT"].tolist() == [b"a", "b"]
    with pytest.raises(ValueError, match="read-only"):
        hit["OUT"][0] = 5


def test_a_closed_version_refuses_late_inserts() -> None:
    cache = ResponseCache(1 << 20)
    versions = VersionCache(cache, "m", 1)
    key = _key(versions, np.zeros((1, 4), np.float32))
    versions.close()
    assert not versions.insert(key, _outputs(4))
    assert len(cache) == 0


def _config(text: str) -> mc.ModelConfig:
    from google.protobuf import text_format

    return text_format.Parse('name: "m"\n' + text, mc.ModelConfig())


def test_which_versions_cache(caplog: pytest.LogCaptureFixture) -> None:
    cache = ResponseCache(1 << 20)
    enabled = "response_cache { enable: true }\n"
    assert version_cache(_config(""), 1, cache) is None
    assert version_cache(_config("response_cache { enable: false }"), 1, cache) is None
    assert isinstance(version_cache(_config(enabled), 1, cache), VersionCache)
    with caplog.at_level(logging.WARNING):
        assert version_cache(_config(enabled), 1, None) is None
        assert version_cache(_config(enabled + "sequence_batching { }"), 1, cache) is None
        assert version_cache(_config(enabled + "model_transaction_policy { decoupled: true }"), 1, cache) is None
    messages = [r.getMessage() for r in caplog.records]
    assert any("--cache-config" in m for m in messages)
    assert any("sequence batcher" in m for m in messages)
    assert any("decoupled" in m for m in messages)


# --------------------------------------------------------------------------- --cache-config


def test_cache_config_values() -> None:
    assert parse_cache_config([]) == 0
    assert parse_cache_config(["local,size=1048576"]) == 1048576
    assert parse_cache_config(["local", "size=4096"]) == 4096  # CLIPPERD_CACHE_CONFIG split at its commas
    assert parse_cache_config(["local,size=1", "local,size=2048"]) == 2048  # repeated: the last one counts


BAD_CACHE_CONFIGS = [
    ("local,size=0", "at least 1"),
    ("local,size=-5", "whole number"),
    ("local,size=1.5", "whole number"),
    ("local,size=10MB", "whole number"),
    ("local,size=", "whole number"),
    ("local", "needs size"),
    ("redis,host=127.0.0.1", "unknown cache 'redis'"),
    ("size=1024", "names no cache"),
    ("local,bytes=1024", "no setting 'bytes'"),
]


@pytest.mark.parametrize(("value", "message"), BAD_CACHE_CONFIGS)
def test_bad_cache_config_is_refused_by_the_cli(value: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["serve", "--model-repository", str(EXAMPLES), "--cache-config", value])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_cache_config_exits_2_before_serving() -> None:
    command = [sys.executable, "-m", "server.cli", "serve", "--model-repository", str(EXAMPLES)]
    run = subprocess.run(
        [*command, "--cache-config", "local,size=lots"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2
    assert "--cache-config: size must be a whole number of bytes" in run.stderr


# ------------------------------------------------------------------------------- real servers

COUNTED_MODEL = '''\
"""OUTPUT0 = FACTOR * x, OUTPUT1 = x + 1; every execution appends its batch size to a file at the
repository's root (outside the model's folder, whose changes poll mode reloads); a negative first
element fails the request."""
from pathlib import Path

import numpy as np

FACTOR = 2
MODEL_FOLDER = Path(__file__).resolve().parents[1]
LOG = MODEL_FOLDER.parent / f".{MODEL_FOLDER.name}.executions"


class Model:
    def execute(self, inputs):
        x = inputs["INPUT0"]
        with LOG.open("a") as log:
            log.write(f"{len(x)}\\n")
        if (x[:, 0] < 0).any():
            raise ValueError("a negative first element")
        return {"OUTPUT0": x * np.float32(FACTOR), "OUTPUT1": x + np.float32(1)}
'''


def counted_config(name: str, cache: bool) -> str:
    return textwrap.dedent(f"""\
        name: "{name}"
        backend: "python"
        max_batch_size: 8
        input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
        output [
          {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }},
          {{ name: "OUTPUT1" data_type: TYPE_FP32 dims: [ -1 ] }}
        ]
        """) + ("response_cache { enable: true }\n" if cache else "")


def add_counted(repository: Path, name: str, cache: bool = True) -> Path:
    folder = repository / name / "1"
    folder.mkdir(parents=True)
    (folder / "model.py").write_text(COUNTED_MODEL)
    (repository / name / "config.pbtxt").write_text(counted_config(name, cache))
    return folder


def executions(repository: Path, name: str) -> int:
    log = repository / f".{name}.executions"
    return len(log.read_text().split()) if log.exists() else 0


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cache-repo")
    add_counted(root, "counted")
    add_counted(root, "uncached", cache=False)
    strings = root / "strings"
    strings.mkdir()
    (strings / "1").mkdir()
    (strings / "1" / "model.py").write_bytes((EXAMPLES / "simple_string" / "1" / "model.py").read_bytes())
    config = (EXAMPLES / "simple_string" / "config.pbtxt").read_text()
    (strings / "config.pbtxt").write_text(
        config.replace('"simple_string"', '"strings"') + "\nresponse_cache { enable: true }\n"
    )
    shutil.copytree(EXAMPLES / "iris_sklearn", root / "iris_sklearn")  # the bundled example that caches
    (root / "cached_step" / "1").mkdir(parents=True)  # an ensemble whose one step caches
    (root / "cached_step" / "config.pbtxt").write_text(CACHED_STEP)
    return root


CACHED_STEP = """
name: "cached_step"
platform: "ensemble"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "DOUBLED" data_type: TYPE_FP32 dims: [ -1 ] } ]
ensemble_scheduling { step [ {
  model_name: "counted" model_version: -1
  input_map { key: "INPUT0" value: "INPUT0" } output_map { key: "OUTPUT0" value: "DOUBLED" }
} ] }
"""


@pytest.fixture(scope="module")
def server(repository: Path, logs_dir: Path) -> Iterator[ServerProcess]:
    with running(repository, "--cache-config", "local,size=1048576", log_dir=logs_dir) as started:
        yield started
        assert started.is_running(), started.log()


@pytest.fixture
def grpc_client(server: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server.url) as client:
        yield client


@pytest.fixture
def http_client(server: ServerProcess) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        yield client
    finally:
        client.close()


def infer(client: Any, model: str, x: np.ndarray, outputs: tuple[str, ...] = (), **kwargs: Any) -> Any:
    module = grpcclient if isinstance(client, grpcclient.InferenceServerClient) else httpclient
    tensor = module.InferInput("INPUT0", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    requested = [module.InferRequestedOutput(n) for n in outputs] or None
    return client.infer(model, [tensor], outputs=requested, **kwargs)


def stats(client: grpcclient.InferenceServerClient, model: str) -> Any:
    return client.get_inference_statistics(model).model_stats[0]


def unique_input(shape: tuple[int, ...] = (1, 16)) -> np.ndarray:
    """Inputs no other test sends: the cache is shared by every test on the server."""
    seed = uuid.uuid4().int % (2**32)
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def test_a_hit_skips_the_model_and_answers_as_a_fresh_execution(
    grpc_client: grpcclient.InferenceServerClient, repository: Path
) -> None:
    x = unique_input()
    before, runs = stats(grpc_client, "counted"), executions(repository, "counted")
    fresh = infer(grpc_client, "counted", x)
    cached = [infer(grpc_client, "counted", x) for _ in range(3)]
    after = stats(grpc_client, "counted")
    assert executions(repository, "counted") == runs + 1  # the model ran once
    assert after.execution_count == before.execution_count + 1
    assert after.inference_count == before.inference_count + 1  # hits are not inferences (Triton)
    hits = after.inference_stats.cache_hit.count - before.inference_stats.cache_hit.count
    misses = after.inference_stats.cache_miss.count - before.inference_stats.cache_miss.count
    assert (hits, misses) == (3, 1)
    assert after.inference_stats.success.count == before.inference_stats.success.count + 4
    assert after.inference_stats.queue.count == before.inference_stats.queue.count + 4
    assert after.inference_stats.cache_hit.ns > before.inference_stats.cache_hit.ns
    for result in cached:
        for name in ("OUTPUT0", "OUTPUT1"):
            assert result.as_numpy(name).tobytes() == fresh.as_numpy(name).tobytes()
    np.testing.assert_array_equal(fresh.as_numpy("OUTPUT0"), x * 2)
    elsewhere = infer(grpc_client, "uncached", x)  # the same model.py, executed afresh
    for name in ("OUTPUT0", "OUTPUT1"):
        assert cached[-1].as_numpy(name).tobytes() == elsewhere.as_numpy(name).tobytes()


def test_a_different_input_misses(grpc_client: grpcclient.InferenceServerClient, repository: Path) -> None:
    x = unique_input()
    infer(grpc_client, "counted", x)
    runs = executions(repository, "counted")
    y = x.copy()
    y.view(np.uint8)[0, 5] ^= 0x01
    np.testing.assert_array_equal(infer(grpc_client, "counted", y).as_numpy("OUTPUT1"), y + 1)
    reshaped = infer(grpc_client, "counted", x.reshape(2, 8))  # the same bytes in another shape
    assert reshaped.as_numpy("OUTPUT0").shape == (2, 8)
    assert executions(repository, "counted") == runs + 2


def test_http_and_grpc_share_entries_and_http_reports_the_statistics(
    grpc_client: grpcclient.InferenceServerClient, http_client: httpclient.InferenceServerClient, repository: Path
) -> None:
    x = unique_input()
    fresh = infer(grpc_client, "counted", x)
    runs = executions(repository, "counted")
    before = http_client.get_inference_statistics("counted")["model_stats"][0]["inference_stats"]
    over_http = infer(http_client, "counted", x)
    as_json = httpclient.InferInput("INPUT0", [1, 16], "FP32")
    as_json.set_data_from_numpy(x, binary_data=False)  # the same values as JSON numbers
    in_json = http_client.infer("counted", [as_json])
    after = http_client.get_inference_statistics("counted")["model_stats"][0]["inference_stats"]
    assert executions(repository, "counted") == runs
    assert over_http.as_numpy("OUTPUT0").tobytes() == fresh.as_numpy("OUTPUT0").tobytes()
    assert in_json.as_numpy("OUTPUT1").tobytes() == fresh.as_numpy("OUTPUT1").tobytes()
    assert after["cache_hit"]["count"] == before["cache_hit"]["count"] + 2
    assert after["cache_miss"]["count"] == before["cache_miss"]["count"]


def test_a_subset_of_outputs_is_answered_right_on_a_hit(
    grpc_client: grpcclient.InferenceServerClient, http_client: httpclient.InferenceServerClient, repository: Path
) -> None:
    x = unique_input()
    only_first = infer(grpc_client, "counted", x, outputs=("OUTPUT0",))  # the miss asked for one output
    assert only_first.as_numpy("OUTPUT1") is None
    runs = executions(repository, "counted")
    both = infer(grpc_client, "counted", x)
    second = infer(http_client, "counted", x, outputs=("OUTPUT1",))
    assert executions(repository, "counted") == runs
    np.testing.assert_array_equal(both.as_numpy("OUTPUT0"), x * 2)
    np.testing.assert_array_equal(both.as_numpy("OUTPUT1"), x + 1)
    assert second.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(second.as_numpy("OUTPUT1"), x + 1)


@pytest.fixture
def region(
    grpc_client: grpcclient.InferenceServerClient, make_region: Callable[[int], Region]
) -> Iterator[tuple[str, Any]]:
    """A 128-byte region registered with the server: (its name there, its handle)."""
    key, handle = make_region(128)
    name = f"cache_{uuid.uuid4().hex[:8]}"
    grpc_client.register_system_shared_memory(name, key, 128)
    yield name, handle
    grpc_client.unregister_system_shared_memory(name)


def test_shared_memory_outputs_are_written_on_a_hit(
    grpc_client: grpcclient.InferenceServerClient, repository: Path, region: tuple[str, Any]
) -> None:
    name, handle = region
    x = unique_input()
    infer(grpc_client, "counted", x)
    runs = executions(repository, "counted")
    tensor = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    tensor.set_data_from_numpy(x)
    outputs = [grpcclient.InferRequestedOutput("OUTPUT0"), grpcclient.InferRequestedOutput("OUTPUT1")]
    outputs[0].set_shared_memory(name, 64)
    outputs[1].set_shared_memory(name, 64, offset=64)
    grpc_client.infer("counted", [tensor], outputs=outputs)
    assert executions(repository, "counted") == runs
    np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.float32, [1, 16]), x * 2)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.float32, [1, 16], offset=64), x + 1)


def test_shared_memory_inputs_are_keyed_by_what_the_region_holds(
    grpc_client: grpcclient.InferenceServerClient, repository: Path, region: tuple[str, Any]
) -> None:
    name, handle = region

    def from_region(x: np.ndarray) -> Any:
        shm.set_shared_memory_region(handle, [x])
        tensor = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
        tensor.set_shared_memory(name, 64)
        return grpc_client.infer("counted", [tensor])

    x, y = unique_input(), unique_input()
    runs = executions(repository, "counted")
    np.testing.assert_array_equal(from_region(x).as_numpy("OUTPUT0"), x * 2)
    np.testing.assert_array_equal(from_region(y).as_numpy("OUTPUT0"), y * 2)  # the region changed
    assert executions(repository, "counted") == runs + 2
    np.testing.assert_array_equal(infer(grpc_client, "counted", x).as_numpy("OUTPUT0"), x * 2)  # inline
    np.testing.assert_array_equal(from_region(y).as_numpy("OUTPUT1"), y + 1)
    assert executions(repository, "counted") == runs + 2


def test_an_ensemble_step_answers_from_its_models_cache(
    grpc_client: grpcclient.InferenceServerClient, repository: Path
) -> None:
    """The ensemble itself does not cache (Triton's rule); its step model, which does, is looked
    up as for a client's request, and the entry is the same whoever filled it."""
    x = unique_input()
    runs = executions(repository, "counted")
    hits = stats(grpc_client, "counted").inference_stats.cache_hit.count
    for _ in range(2):
        np.testing.assert_array_equal(infer(grpc_client, "cached_step", x).as_numpy("DOUBLED"), x * 2)
    assert executions(repository, "counted") == runs + 1
    assert stats(grpc_client, "counted").inference_stats.cache_hit.count == hits + 1
    np.testing.assert_array_equal(infer(grpc_client, "counted", x).as_numpy("OUTPUT0"), x * 2)  # a client's
    assert executions(repository, "counted") == runs + 1
    assert stats(grpc_client, "counted").inference_stats.cache_hit.count == hits + 2
    assert stats(grpc_client, "cached_step").inference_stats.cache_hit.count == 0


def test_concurrent_identical_requests_all_get_the_answer(server: ServerProcess, repository: Path) -> None:
    x = unique_input()
    with grpcclient.InferenceServerClient(server.url) as client:
        before = stats(client, "counted").inference_stats
        runs = executions(repository, "counted")

        def call(_: int) -> bytes:
            with grpcclient.InferenceServerClient(server.url) as own:
                return bytes(infer(own, "counted", x).as_numpy("OUTPUT0").tobytes())

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(call, range(32)))
        after = stats(client, "counted").inference_stats
    assert set(answers) == {(x * 2).tobytes()}
    ran = executions(repository, "counted") - runs
    hits = after.cache_hit.count - before.cache_hit.count
    misses = after.cache_miss.count - before.cache_miss.count
    assert 1 <= ran <= 8  # at most the requests that were in flight together before the first insert
    assert (hits + misses, misses) == (32, ran)


def test_an_error_is_never_cached(grpc_client: grpcclient.InferenceServerClient, repository: Path) -> None:
    x = -unique_input() - 1  # the model refuses a negative first element
    runs = executions(repository, "counted")
    before = stats(grpc_client, "counted")
    for _ in range(2):
        with pytest.raises(InferenceServerException, match="negative first element"):
            infer(grpc_client, "counted", x)
    after = stats(grpc_client, "counted")
    assert executions(repository, "counted") == runs + 2
    assert after.inference_stats.cache_hit.count == before.inference_stats.cache_hit.count
    assert after.inference_stats.fail.count == before.inference_stats.fail.count + 2


def test_a_model_without_enable_never_caches(grpc_client: grpcclient.InferenceServerClient, repository: Path) -> None:
    x = unique_input()
    runs = executions(repository, "uncached")
    for _ in range(3):
        infer(grpc_client, "uncached", x)
    after = stats(grpc_client, "uncached")
    assert executions(repository, "uncached") == runs + 3
    assert after.inference_stats.cache_hit.count == 0
    assert after.inference_stats.cache_miss.count == 0


def test_sequence_requests_bypass_the_cache(grpc_client: grpcclient.InferenceServerClient, repository: Path) -> None:
    x = unique_input()
    infer(grpc_client, "counted", x)
    runs, before = executions(repository, "counted"), stats(grpc_client, "counted")
    infer(grpc_client, "counted", x, sequence_id=7)
    after = stats(grpc_client, "counted")
    assert executions(repository, "counted") == runs + 1
    assert after.inference_stats.cache_hit.count == before.inference_stats.cache_hit.count
    assert after.inference_stats.cache_miss.count == before.inference_stats.cache_miss.count


def test_bytes_inputs_are_keyed_by_their_bytes(grpc_client: grpcclient.InferenceServerClient) -> None:
    def call(first: list[str]) -> Any:
        inputs = []
        for name, values in (("INPUT0", first), ("INPUT1", ["1"] * 16)):
            tensor = grpcclient.InferInput(name, [1, 16], "BYTES")
            tensor.set_data_from_numpy(np.array([values], dtype=object))
            inputs.append(tensor)
        return grpc_client.infer("strings", inputs)

    before = stats(grpc_client, "strings")
    a = call([str(i) for i in range(16)])
    b = call([str(i) for i in range(16)])
    c = call(["0", *[str(i) for i in range(2, 17)]])  # other elements, other answer
    after = stats(grpc_client, "strings")
    assert after.execution_count == before.execution_count + 2
    assert a.as_numpy("OUTPUT0").tolist() == b.as_numpy("OUTPUT0").tolist()
    assert c.as_numpy("OUTPUT0")[0, 1] == b"3"


def test_the_bundled_sklearn_example_caches(grpc_client: grpcclient.InferenceServerClient) -> None:
    features = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    before = stats(grpc_client, "iris_sklearn")
    answers = []
    for _ in range(3):
        tensor = grpcclient.InferInput("FEATURES", [2, 4], "FP32")
        tensor.set_data_from_numpy(features)
        answers.append(grpc_client.infer("iris_sklearn", [tensor]).as_numpy("PROBABILITIES"))
    after = stats(grpc_client, "iris_sklearn")
    assert after.execution_count == before.execution_count + 1
    assert after.inference_stats.cache_hit.count == before.inference_stats.cache_hit.count + 2
    assert answers[0].argmax(axis=1).tolist() == [0, 2]  # setosa, virginica
    assert answers[1].tobytes() == answers[0].tobytes() == answers[2].tobytes()


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(name)}(?:\{{{re.escape(labels)}\}})? (\S+)$" if labels else rf"^{name} (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    assert found is not None, f"{name}{{{labels}}} not in metrics"
    return float(found.group(1))


def scrape(server: ServerProcess) -> str:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as answer:
        return str(answer.read().decode())


def test_metrics_report_hits_misses_and_the_cache(
    grpc_client: grpcclient.InferenceServerClient, server: ServerProcess
) -> None:
    x = unique_input()
    infer(grpc_client, "counted", x)
    infer(grpc_client, "counted", x)
    text = scrape(server)
    row = stats(grpc_client, "counted").inference_stats
    labels = 'model="counted",version="1"'
    assert metric(text, "nv_cache_num_hits_per_model", labels) == row.cache_hit.count
    assert metric(text, "nv_cache_num_misses_per_model", labels) == row.cache_miss.count
    assert metric(text, "nv_cache_hit_duration_per_model", labels) == row.cache_hit.ns // 1000
    assert metric(text, "nv_cache_miss_duration_per_model", labels) == row.cache_miss.ns // 1000
    assert 'nv_cache_num_hits_per_model{model="uncached"' not in text  # Triton: only for models that cache
    assert metric(text, "clipperd_cache_capacity_bytes") == 1048576
    assert 0 < metric(text, "clipperd_cache_size_bytes") <= 1048576
    assert metric(text, "clipperd_cache_entries") >= 1
    assert metric(text, "clipperd_cache_evictions") == 0
    assert "# TYPE nv_cache_num_hits_per_model counter" in text


# ----------------------------------------------- a small cache: eviction, reload and unload


@pytest.fixture
def small(tmp_path: Path, logs_dir: Path) -> Iterator[tuple[ServerProcess, Path]]:
    """Room for two [1, 16] answers of ``counted`` (about 520 bytes each), explicit model control."""
    add_counted(tmp_path, "counted")
    args = ("--cache-config", "local,size=1200", "--model-control-mode", "explicit", "--load-model", "counted")
    with running(tmp_path, *args, log_dir=logs_dir) as started:
        yield started, tmp_path


def test_least_recently_used_answers_are_evicted_by_bytes(small: tuple[ServerProcess, Path]) -> None:
    server, repository = small
    a, b, c = (np.full((1, 16), v, np.float32) for v in (1, 2, 3))
    with grpcclient.InferenceServerClient(server.url) as client:
        for x in (a, b, a, c):  # a is used again before c comes: b is the one evicted
            infer(client, "counted", x)
        assert executions(repository, "counted") == 3
        infer(client, "counted", a)
        infer(client, "counted", c)
        assert executions(repository, "counted") == 3  # both still there
        infer(client, "counted", b)
        assert executions(repository, "counted") == 4  # b was gone
        big = np.full((8, 16), 4, np.float32)  # 1 KiB of outputs alone: larger than the cache
        infer(client, "counted", big)
        infer(client, "counted", big)
        assert executions(repository, "counted") == 6
        text = scrape(server)
    assert metric(text, "clipperd_cache_entries") == 2
    assert metric(text, "clipperd_cache_evictions") == 2  # b for c, then a for b
    assert metric(text, "clipperd_cache_size_bytes") <= 1200


def test_a_reload_with_a_new_model_file_invalidates_and_unload_purges(small: tuple[ServerProcess, Path]) -> None:
    server, repository = small
    x = np.full((1, 16), 5, np.float32)
    model_file = repository / "counted" / "1" / "model.py"
    with grpcclient.InferenceServerClient(server.url) as client:
        np.testing.assert_array_equal(infer(client, "counted", x).as_numpy("OUTPUT0"), x * 2)
        infer(client, "counted", x)
        assert executions(repository, "counted") == 1
        model_file.write_text(COUNTED_MODEL.replace("FACTOR = 2", "FACTOR = 10"))
        client.load_model("counted")  # the same version number, new files
        np.testing.assert_array_equal(infer(client, "counted", x).as_numpy("OUTPUT0"), x * 10)
        assert executions(repository, "counted") == 2
        np.testing.assert_array_equal(infer(client, "counted", x).as_numpy("OUTPUT0"), x * 10)
        assert executions(repository, "counted") == 2  # the new load caches its own answers
        client.unload_model("counted")
        assert metric(scrape(server), "clipperd_cache_entries") == 0
        assert metric(scrape(server), "clipperd_cache_size_bytes") == 0


def test_poll_mode_picks_up_a_changed_model_file_without_serving_stale_answers(tmp_path: Path, logs_dir: Path) -> None:
    add_counted(tmp_path, "counted")
    args = ("--cache-config", "local,size=65536", "--model-control-mode", "poll", "--repository-poll-secs", "0.2")
    x = np.full((1, 16), 7, np.float32)
    with running(tmp_path, *args, log_dir=logs_dir) as started, grpcclient.InferenceServerClient(started.url) as client:
        for _ in range(2):
            np.testing.assert_array_equal(infer(client, "counted", x).as_numpy("OUTPUT0"), x * 2)
        assert executions(tmp_path, "counted") == 1
        (tmp_path / "counted" / "1" / "model.py").write_text(COUNTED_MODEL.replace("FACTOR = 2", "FACTOR = 10"))
        deadline = time.monotonic() + 30
        answer = infer(client, "counted", x).as_numpy("OUTPUT0")
        while not np.array_equal(answer, x * 10) and time.monotonic() < deadline:  # until a rescan reloads it
            time.sleep(0.1)
            answer = infer(client, "counted", x).as_numpy("OUTPUT0")
        np.testing.assert_array_equal(answer, x * 10)
        runs = executions(tmp_path, "counted")
        np.testing.assert_array_equal(infer(client, "counted", x).as_numpy("OUTPUT0"), x * 10)
        assert executions(tmp_path, "counted") == runs  # the new load's answer is cached in turn


def test_a_server_without_a_cache_loads_the_model_and_warns(tmp_path: Path, logs_dir: Path) -> None:
    add_counted(tmp_path, "counted")
    with running(tmp_path, log_dir=logs_dir) as started, grpcclient.InferenceServerClient(started.url) as client:
        x = np.ones((1, 16), np.float32)
        for _ in range(2):
            infer(client, "counted", x)
        assert executions(tmp_path, "counted") == 2
        assert stats(client, "counted").inference_stats.cache_hit.count == 0
        assert "nv_cache_num_hits_per_model" not in scrape(started)  # Triton reports them with a cache only
        assert "enables response_cache, but the server has no cache" in started.log()
