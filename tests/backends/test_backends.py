"""The Python and PyTorch backends and the registry, driven directly (no server)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format

from backends import registry
from backends.base import CPU, Device, InstanceContext
from backends.common.errors import (
    ClipperdError,
    ConfigError,
    FailedPrecondition,
    InvalidArgument,
    ModelExecutionError,
    NotFound,
)
from backends.common.outputs import check_outputs, output_specs
from backends.proto import model_config_pb2 as mc
from backends.python_backend import PythonBackend
from backends.pytorch_backend import PyTorchBackend, indexed_order, input_plan, output_positions
from tests.serverproc import ROOT

try:
    import torch
except ImportError:  # the Python backend's tests still run
    torch = None

REPO = ROOT / "model_repository"
requires_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")
requires_cuda = pytest.mark.skipif(
    torch is None or not torch.cuda.is_available(), reason="needs an NVIDIA GPU; CPU-only machine"
)
rng = np.random.default_rng(0)


# ----------------------------------------------------------------------------------------- helpers


def read_config(model_dir: Path) -> mc.ModelConfig:
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())


def make_context(config: mc.ModelConfig, version_path: Path, device: Device = CPU, threads: int = 1) -> InstanceContext:
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    return InstanceContext(
        config=config,
        version=int(version_path.name),
        version_path=version_path,
        device=device,
        instance_name=f"{config.name}_0_{device.kind}",
        threads=threads,
        parameters=parameters,
    )


def example(name: str, device: Device = CPU) -> InstanceContext:
    return make_context(read_config(REPO / name), REPO / name / "1", device)


def loaded(backend_cls: type[Any], context: InstanceContext) -> Any:
    backend = backend_cls(context)
    backend.load()
    return backend


def readonly(array: np.ndarray) -> np.ndarray:
    """What a request's tensor looks like: a read-only view of the wire bytes."""
    return np.frombuffer(array.tobytes(), dtype=array.dtype).reshape(array.shape)


FP32_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }} ]
"""


def python_model(tmp_path: Path, source: str, name: str = "pym", version: int = 1, config: str = "") -> InstanceContext:
    """A python model in a repository under tmp_path, FP32 INPUT0 [4] -> OUTPUT0 [4] by default."""
    model_dir = tmp_path / name
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(config or FP32_CONFIG.format(name=name))
    (model_dir / str(version) / "model.py").write_text(textwrap.dedent(source))
    return make_context(read_config(model_dir), model_dir / str(version))


def fp32_batch(batch: int = 3) -> dict[str, np.ndarray]:
    return {"INPUT0": rng.standard_normal((batch, 4)).astype(np.float32)}


# ----------------------------------------------------------------------------------------- python: examples


@pytest.mark.parametrize("batch", [1, 7, 8])
def test_simple(batch: int) -> None:
    backend = loaded(PythonBackend, example("simple"))
    a = rng.integers(-1000, 1000, (batch, 16), dtype=np.int32)
    b = rng.integers(-1000, 1000, (batch, 16), dtype=np.int32)
    out = backend.execute({"INPUT0": readonly(a), "INPUT1": readonly(b)})
    assert out["OUTPUT0"].dtype == np.int32
    np.testing.assert_array_equal(out["OUTPUT0"], a + b)
    np.testing.assert_array_equal(out["OUTPUT1"], a - b)
    backend.unload()


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_identity_returns_the_input_itself(batch: int) -> None:
    backend = loaded(PythonBackend, example("identity_fp32"))
    x = readonly(rng.standard_normal((batch, 16)).astype(np.float32))
    out = backend.execute({"INPUT0": x})
    assert out["OUTPUT0"] is x
    backend.unload()


@pytest.mark.parametrize("batch", [1, 7, 8])
def test_simple_string(batch: int) -> None:
    backend = loaded(PythonBackend, example("simple_string"))
    a = rng.integers(-1000, 1000, (batch, 16))
    b = rng.integers(-1000, 1000, (batch, 16))

    def strings(values: np.ndarray) -> np.ndarray:
        return np.array([str(v).encode() for v in values.flat], dtype=object).reshape(values.shape)

    out = backend.execute({"INPUT0": strings(a), "INPUT1": strings(b)})
    assert out["OUTPUT0"].shape == (batch, 16)
    assert out["OUTPUT0"].tolist() == strings(a + b).tolist()
    assert out["OUTPUT1"].tolist() == strings(a - b).tolist()
    assert isinstance(out["OUTPUT0"][0, 0], bytes)


@pytest.mark.parametrize("name", ["simple", "identity_fp32", "simple_string", "mlp_torch"])
def test_example_configs_pass_validation(name: str) -> None:
    from backends.common.config import load_model_config

    assert load_model_config(REPO / name).name == name


def test_example_repository_backends() -> None:
    expected = {
        "simple": "python",
        "identity_fp32": "python",
        "simple_string": "python",
        "mlp_torch": "pytorch",
    }
    for name, backend in expected.items():
        config = read_config(REPO / name)
        assert config.name == name
        assert registry.backend_name(config) == backend
        assert (REPO / name / "1" / registry.default_filename(config)).is_file()


# ----------------------------------------------------------------------------------------- python: behaviour


CONSTANT_MODEL = """
import numpy as np

VALUE = {value}

class Model:
    def execute(self, inputs):
        return {{"OUTPUT0": np.full_like(inputs["INPUT0"], VALUE)}}
"""


def test_models_and_versions_with_the_same_file_do_not_clash(tmp_path: Path) -> None:
    contexts = [
        python_model(tmp_path, CONSTANT_MODEL.format(value=1), name="a"),
        python_model(tmp_path, CONSTANT_MODEL.format(value=2), name="b"),
        python_model(tmp_path, CONSTANT_MODEL.format(value=3), name="a", version=2),
    ]
    backends = [loaded(PythonBackend, context) for context in contexts]
    values = [float(backend.execute(fp32_batch())["OUTPUT0"][0, 0]) for backend in backends]
    assert values == [1.0, 2.0, 3.0]
    for backend in backends:
        backend.unload()


COUNTER_MODEL = """
import numpy as np

class Model:
    def initialize(self, context):
        self.calls = 0
        self.name = context.instance_name
        self.offset = float(context.parameters["OFFSET"])
        assert (context.version_path / "model.py").is_file()

    def execute(self, inputs):
        self.calls += 1
        return {"OUTPUT0": np.full_like(inputs["INPUT0"], self.calls + self.offset)}

    def finalize(self):
        (self.__class__.finalized).append(self.name)

Model.finalized = []
"""


def test_instances_own_their_model_and_share_the_module(tmp_path: Path) -> None:
    config = FP32_CONFIG.format(name="counter") + 'parameters { key: "OFFSET" value: { string_value: "10" } }'
    context = python_model(tmp_path, COUNTER_MODEL, name="counter", config=config)
    first, second = loaded(PythonBackend, context), loaded(PythonBackend, context)
    assert first.execute(fp32_batch())["OUTPUT0"][0, 0] == 11.0
    assert first.execute(fp32_batch())["OUTPUT0"][0, 0] == 12.0
    assert second.execute(fp32_batch())["OUTPUT0"][0, 0] == 11.0  # its own Model object
    module = type(first._model).__module__
    assert type(first._model) is type(second._model)
    assert module in sys.modules
    first.unload()
    assert module in sys.modules  # second still uses it
    second.unload()
    assert module not in sys.modules
    first.unload()  # twice is harmless


def test_finalize_is_called_on_unload(tmp_path: Path) -> None:
    config = FP32_CONFIG.format(name="fin") + 'parameters { key: "OFFSET" value: { string_value: "0" } }'
    backend = loaded(PythonBackend, python_model(tmp_path, COUNTER_MODEL, name="fin", config=config))
    cls = type(backend._model)
    backend.unload()
    assert cls.finalized == ["fin_0_cpu"]


def test_a_changed_file_is_imported_afresh(tmp_path: Path) -> None:
    old = loaded(PythonBackend, python_model(tmp_path, CONSTANT_MODEL.format(value=1), name="re"))
    new = loaded(PythonBackend, python_model(tmp_path, CONSTANT_MODEL.format(value=22), name="re"))
    assert new.execute(fp32_batch())["OUTPUT0"][0, 0] == 22.0
    assert old.execute(fp32_batch())["OUTPUT0"][0, 0] == 1.0  # the loaded instance keeps its code
    old.unload()
    assert new.execute(fp32_batch())["OUTPUT0"][0, 0] == 22.0
    new.unload()


def test_max_batch_size_zero_shapes_are_the_dims(tmp_path: Path) -> None:
    config = FP32_CONFIG.format(name="nb").replace("max_batch_size: 8", "max_batch_size: 0")
    source = "class Model:\n    def execute(self, inputs):\n        return {'OUTPUT0': inputs['INPUT0'] * 2}\n"
    context = python_model(tmp_path, source, name="nb", config=config)
    backend = loaded(PythonBackend, context)
    specs = output_specs(context.config)
    x = np.arange(4, dtype=np.float32)
    checked = check_outputs("nb", specs, backend.execute({"INPUT0": x}), None)  # no batch dimension
    np.testing.assert_array_equal(checked["OUTPUT0"], x * 2)
    # the scheduler checks every batch's outputs (backends.common.outputs), not the backend
    with pytest.raises(ModelExecutionError, match=r"shape \[1, 4\], config expects \[4\]"):
        check_outputs("nb", specs, backend.execute({"INPUT0": x[None]}), None)


# ----------------------------------------------------------------------------------------- python: errors


def assert_clean(error: ClipperdError, tmp_path: Path) -> None:
    """Client-facing: no absolute path, no traceback."""
    assert str(tmp_path) not in error.message
    assert "Traceback" not in error.message
    assert "\n" not in error.message


def test_missing_model_py(tmp_path: Path) -> None:
    context = python_model(tmp_path, "", name="gone")
    (context.version_path / "model.py").unlink()
    with pytest.raises(NotFound, match=r"model 'gone' version 1: file 'model.py' not found") as info:
        PythonBackend(context).load()
    assert_clean(info.value, tmp_path)


def test_syntax_error(tmp_path: Path) -> None:
    context = python_model(tmp_path, "class Model:\n    def execute(self, inputs)\n        pass\n", name="syn")
    with pytest.raises(InvalidArgument, match=r"model 'syn': model.py line 2: syntax error") as info:
        PythonBackend(context).load()
    assert_clean(info.value, tmp_path)
    assert not any(name.startswith("_clipperd_model_syn") for name in sys.modules)


@pytest.mark.parametrize(
    ("source", "pattern"),
    [
        ("x = 1\n", r"model 'nomodel': model.py defines no class 'Model' or 'TritonPythonModel'$"),
        ("class TritonPythonModel:\n    pass\n", r"class 'TritonPythonModel' in model.py has no execute method"),
        ("Model = 3\n", r"defines no class 'Model'"),
        ("class Model:\n    pass\n", r"class 'Model' in model.py has no execute method"),
    ],
)
def test_no_usable_model_class(tmp_path: Path, source: str, pattern: str) -> None:
    with pytest.raises(InvalidArgument, match=pattern):
        PythonBackend(python_model(tmp_path, source, name="nomodel")).load()


def test_import_raising(tmp_path: Path) -> None:
    context = python_model(tmp_path, "import no_such_module_for_clipperd\n", name="imp")
    with pytest.raises(ModelExecutionError, match=r"importing model.py failed: ModuleNotFoundError: No module"):
        PythonBackend(context).load()


def test_initialize_raising_names_the_error_without_paths(tmp_path: Path) -> None:
    source = """
    class Model:
        def initialize(self, context):
            open(context.version_path / "weights.bin")

        def execute(self, inputs):
            return inputs
    """
    context = python_model(tmp_path, source, name="init")
    with pytest.raises(ModelExecutionError) as info:
        PythonBackend(context).load()
    assert info.value.message.startswith("model 'init' failed to initialize: FileNotFoundError: ")
    assert "'init/1/weights.bin'" in info.value.message
    assert_clean(info.value, tmp_path)
    assert not any(name.startswith("_clipperd_model_init") for name in sys.modules)  # released


def test_execute_raising(tmp_path: Path) -> None:
    source = """
    class Model:
        def execute(self, inputs):
            raise ValueError("bad input\\nsecond line")
    """
    backend = loaded(PythonBackend, python_model(tmp_path, source, name="boom"))
    with pytest.raises(ModelExecutionError) as info:
        backend.execute(fp32_batch())
    assert info.value.message == "model 'boom' failed: ValueError: bad input second line"


def test_execute_raising_keeps_its_own_type(tmp_path: Path) -> None:
    source = """
    class Model:
        def execute(self, inputs):
            raise RuntimeError("ValueError: not my type")
    """
    backend = loaded(PythonBackend, python_model(tmp_path, source, name="own"))
    with pytest.raises(ModelExecutionError) as info:
        backend.execute(fp32_batch())
    assert info.value.message == "model 'own' failed: RuntimeError: ValueError: not my type"


BAD_RESULTS = [
    ("[inputs['INPUT0']]", r"returned a list, expected a dict of numpy arrays"),
    ("None", r"returned a NoneType"),
    (
        "{'OUTPUT0': inputs['INPUT0'].astype('float64')}",
        r"output 'OUTPUT0' has dtype float64, config expects FP32",
    ),
    ("{'OUTPUT0': inputs['INPUT0'].tolist()}", r"output 'OUTPUT0' is a list, not a numpy array"),
    ("{}", r"output 'OUTPUT0' is missing"),
    ("{'OUTPUT0': inputs['INPUT0'], 'EXTRA': inputs['INPUT0']}", r"unexpected output\(s\) \['EXTRA'\]"),
    ("{'OUTPUT0': inputs['INPUT0'][:1]}", r"output .OUTPUT0. has shape \[1, 4\], config expects \[3, 4\]"),
    ("{'OUTPUT0': inputs['INPUT0'][:, :2]}", r"output .OUTPUT0. has shape \[3, 2\], config expects \[3, 4\]"),
]


@pytest.mark.parametrize(("expression", "pattern"), BAD_RESULTS)
def test_execute_returning_what_the_config_does_not_allow(tmp_path: Path, expression: str, pattern: str) -> None:
    source = f"class Model:\n    def execute(self, inputs):\n        return {expression}\n"
    context = python_model(tmp_path, source, name="res")
    result = loaded(PythonBackend, context).execute(fp32_batch(3))  # the backend passes it through
    with pytest.raises(ModelExecutionError, match=r"^model 'res' failed: " + pattern):
        check_outputs("res", output_specs(context.config), result, 3)  # as the scheduler does per batch


# ----------------------------------------------------------------------------------------- pytorch


@pytest.fixture
def keep_torch_threads() -> Iterator[None]:
    """load() sets torch's intra-op threads on the calling thread: restore them for other tests."""
    if torch is None:
        yield
        return
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def torch_model(
    tmp_path: Path,
    module: Any,
    inputs: list[tuple[str, str]],
    outputs: list[tuple[str, str]],
    dims: int = 4,
    name: str = "tm",
    device: Device = CPU,
) -> InstanceContext:
    """A TorchScript model in tmp_path; inputs/outputs as (name, TYPE_...) with dims [dims]."""
    config = mc.ModelConfig(name=name, platform="pytorch_libtorch", max_batch_size=8)
    for tensor_name, data_type in inputs:
        config.input.add(name=tensor_name, data_type=mc.DataType.Value(data_type), dims=[dims])
    for tensor_name, data_type in outputs:
        config.output.add(name=tensor_name, data_type=mc.DataType.Value(data_type), dims=[dims])
    version = tmp_path / name / "1"
    version.mkdir(parents=True)
    if module is not None:
        torch.jit.save(torch.jit.script(module), str(version / "model.pt"))
    return make_context(config, version, device)


def script_module(source: str, directory: Path) -> Any:
    """An nn.Module instance from source text; TorchScript reads a class's source from its file,
    so the text becomes a real module in ``directory``."""
    name = f"_clipperd_test_torch_{abs(hash(source)):x}"
    file = directory / f"{name}.py"
    file.write_text(
        "import torch\nfrom torch import nn, Tensor\nfrom typing import Dict, List, Optional, Tuple\n" + source
    )
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        return module.M()
    finally:
        del sys.modules[name]


@requires_torch
@pytest.mark.usefixtures("keep_torch_threads")
@pytest.mark.parametrize("batch", [1, 7, 128])
def test_mlp_torch_matches_torch(batch: int) -> None:
    backend = loaded(PyTorchBackend, example("mlp_torch"))
    x = rng.standard_normal((batch, 64)).astype(np.float32)
    out = backend.execute({"INPUT__0": readonly(x)})  # read-only: no warning, no copy
    reference = torch.jit.load(str(REPO / "mlp_torch" / "1" / "model.pt"))
    with torch.inference_mode():
        expected = reference(torch.from_numpy(x)).numpy()
    assert out["OUTPUT__0"].dtype == np.float32
    assert out["OUTPUT__0"].shape == (batch, 10)
    np.testing.assert_allclose(out["OUTPUT__0"], expected, rtol=1e-6)
    backend.unload()


@requires_torch
@pytest.mark.usefixtures("keep_torch_threads")
def test_mlp_torch_build_is_reproducible(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_models.py"), "--repository", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    # the same weights and the same TorchScript code; the bytes themselves also hold debug
    # information with the build script's path, which differs between checkouts
    built = torch.jit.load(str(tmp_path / "mlp_torch" / "1" / "model.pt"))
    committed = torch.jit.load(str(REPO / "mlp_torch" / "1" / "model.pt"))
    assert built.code == committed.code
    built_state, committed_state = built.state_dict(), committed.state_dict()
    assert list(built_state) == list(committed_state)
    for name, tensor in committed_state.items():
        assert torch.equal(built_state[name], tensor), name
    onnx_path = "mlp_onnx/1/model.onnx"  # the ONNX graph carries no path: byte for byte the same
    assert (tmp_path / onnx_path).read_bytes() == (REPO / onnx_path).read_bytes()


@requires_torch
@pytest.mark.usefixtures("keep_torch_threads")
def test_threads_follow_the_context_and_the_parameters() -> None:
    context = example("mlp_torch")
    loaded(PyTorchBackend, make_context(context.config, context.version_path, threads=2))
    assert torch.get_num_threads() == 2
    config = mc.ModelConfig()
    config.CopyFrom(context.config)
    config.parameters["INTRA_OP_THREAD_COUNT"].string_value = "3"
    loaded(PyTorchBackend, make_context(config, context.version_path, threads=2))
    assert torch.get_num_threads() == 3
    config.parameters["INTRA_OP_THREAD_COUNT"].string_value = "many"
    with pytest.raises(ConfigError, match=r"parameters.INTRA_OP_THREAD_COUNT"):
        PyTorchBackend(make_context(config, context.version_path)).load()


SUB = """
class M(nn.Module):
    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a - b
"""


def test_naming_rules_unit() -> None:
    assert indexed_order(["INPUT__1", "INPUT__0"]) == (1, 0)
    assert indexed_order(["INPUT__0", "INPUT__2"]) is None
    assert indexed_order(["INPUT__0", "x"]) is None
    assert input_plan(["IN__1", "IN__0"], ["a", "b"]).names == ("IN__0", "IN__1")
    assert input_plan(["b", "a"], ["a", "b"]).names == ("a", "b")
    plan = input_plan(["c", "a"], ["a", "b", "c"])
    assert (plan.names, plan.keywords) == (("a", "c"), True)
    assert input_plan(["y", "x"], ["a", "b"]).names == ("y", "x")
    assert output_positions(["OUT__1", "OUT__0"]) == (("OUT__1", 1), ("OUT__0", 0))
    assert output_positions(["p", "q"]) == (("p", 0), ("q", 1))


@requires_torch
@pytest.mark.usefixtures("keep_torch_threads")
@pytest.mark.parametrize(
    ("names", "first"),
    [
        (["INPUT__1", "INPUT__0"], "INPUT__0"),  # by __index, whatever the config order
        (["b", "a"], "a"),  # by forward()'s argument names
        (["Y", "X"], "Y"),  # by config order
    ],
)
def test_input_naming_rules(tmp_path: Path, names: list[str], first: str) -> None:
    context = torch_model(
        tmp_path, script_module(SUB, tmp_path), [(n, "TYPE_FP32") for n in names], [("OUT", "TYPE_FP32")]
    )
    backend = loaded(PyTorchBackend, context)
    x, y = np.ones((2, 4), np.float32) * 5, np.ones((2, 4), np.float32)
    second = next(n for n in names if n != first)
    out = backend.execute({first: x, second: y})["OUT"]
    np.testing.assert_array_equal(out, x - y)


@requires_torch
@pytest.mark.usefixtures("keep_torch_threads")
def test_forward_arguments_with_defaults_are_passed_by_keyword(tmp_path: Path) -> None:
    source = """
class M(nn.Module):
    def forward(self, a: Tensor, offset: float = 100.0, b: Optional[Tensor] = None) -> Tensor:
        if b is None:
            return a + offset
        return a - b + offset
"""
    context = torch_model(
        tmp_path,
        script_module(source, tmp_path),
        [("b", "TYPE_FP32"), ("a", "TYPE_FP32")],
        [("OUT", "TYPE_FP32")],
    )
    backend = loaded(PyTorchBackend, context)
    x, y = np.full((1, 4), 5, np.float32), np.ones((1, 4), np.float32)
    np.testing.assert_array_equal(backend.execute({"a": x, "b": y})["OUT"], x - y + 100)


TWO_OUTPUTS = {
    "tuple": "return (a + 1, a * 2)",
    "list": "return [a + 1, a * 2]",
}


@requires_torch
@pytest.mark.usefixtures("keep_torch_threads")
@pytest.mark.parametrize("kind", ["tuple", "list"])
def test_sequence_outputs_by_index_then_config_order(tmp_path: Path, kind: str) -> None:
    annotation = "Tuple[Tensor, Tensor]" if kind == "tuple" else "List[Tensor]"
    source = f"""
class M(nn.Module):
    def forward(self, a: Tensor) -> {annotation}:
        {TWO_OUTPUTS[kind]}
"""
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    indexed = torch_model(
        tmp_path,
        script_module(source, tmp_path),
        [("IN", "TYPE_FP32")],
        [("O__1", "TYPE_FP32"), ("O__0", "TYPE_FP32")],
        name="ix",
    )
    out = loaded(PyTorchBackend, indexed).execute({"IN": x})
    np.testing.assert_array_equal(out["O__0"], x + 1)
    np.testing.assert_array_equal(out["O__1"], x * 2)
    ordered = torch_model(
        tmp_path,
        script_module(source, tmp_path),
        [("IN", "TYPE_FP32")],
        [("P", "TYPE_FP32"), ("Q", "TYPE_FP32")],
        name="co",
    )
    out = loaded(PyTorchBackend, ordered).execute({"IN": x})
    np.testing.assert_array_equal(out["P"], x + 1)
    np.testing.assert_array_equal(out["Q"], x * 2)


@requires_torch
@pytest.mark.usefixtures("keep_torch_threads")
def test_dict_outputs_by_name(tmp_path: Path) -> None:
    source = """
class M(nn.Module):
    def forward(self, a: Tensor) -> Dict[str, Tensor]:
        return {"twice": a * 2, "plus": a + 1, "unused": a}
"""
    context = torch_model(
        tmp_path,
        script_module(source, tmp_path),
        [("IN", "TYPE_FP32")],
        [("plus", "TYPE_FP32"), ("twice", "TYPE_FP32")],
    )
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    out = loaded(PyTorchBackend, context).execute({"IN": x})
    assert sorted(out) == ["plus", "twice"]
    np.testing.assert_array_equal(out["twice"], x * 2)
    np.testing.assert_array_equal(out["plus"], x + 1)


@requires_torch
@pytest.mark.usefixtures("keep_torch_threads")
@pytest.mark.parametrize(
    ("body", "annotation", "outputs", "pattern"),
    [
        ("return a", "Tensor", ["P", "Q"], r"forward\(\) returned 1 tensor\(s\), config declares 2"),
        (
            "return (a, a, a)",
            "Tuple[Tensor, Tensor, Tensor]",
            ["P", "Q"],
            r"forward\(\) returned 3 tensor\(s\), config declares 2",
        ),
        ('return {"P": a}', "Dict[str, Tensor]", ["P", "Q"], r"output 'Q' is a NoneType, not a tensor"),
        ("return 3", "int", ["P"], r"forward\(\) returned a int, expected tensors"),
        ("return a.double()", "Tensor", ["P"], r"output 'P' has dtype float64, config expects FP32"),
        ("return a[:, :2]", "Tensor", ["P"], r"output 'P' has shape \[2, 2\], config expects \[2, 4\]"),
    ],
)
def test_outputs_the_config_does_not_allow(
    tmp_path: Path, body: str, annotation: str, outputs: list[str], pattern: str
) -> None:
    source = f"""
class M(nn.Module):
    def forward(self, a: Tensor) -> {annotation}:
        {body}
"""
    context = torch_model(
        tmp_path, script_module(source, tmp_path), [("IN", "TYPE_FP32")], [(n, "TYPE_FP32") for n in outputs]
    )
    backend = loaded(PyTorchBackend, context)

    def run_batch() -> None:  # what the scheduler does with every batch: run it, check it against the config
        result = backend.execute({"IN": np.ones((2, 4), np.float32)})
        check_outputs("tm", output_specs(context.config), result, 2)

    with pytest.raises(ModelExecutionError, match=r"^model 'tm' failed: " + pattern):
        run_batch()


@requires_torch
@pytest.mark.usefixtures("keep_torch_threads")
def test_forward_raising(tmp_path: Path) -> None:
    source = """
class M(nn.Module):
    def forward(self, a: Tensor) -> Tensor:
        if bool(a.sum() < 0):
            raise ValueError("negative input")
        return a @ torch.ones(5, 4)
"""
    context = torch_model(tmp_path, script_module(source, tmp_path), [("IN", "TYPE_FP32")], [("OUT", "TYPE_FP32")])
    backend = loaded(PyTorchBackend, context)
    with pytest.raises(ModelExecutionError) as info:
        backend.execute({"IN": np.ones((2, 4), np.float32)})
    assert info.value.message.startswith("model 'tm' failed: RuntimeError: mat1 and mat2 shapes cannot be multiplied")
    assert_clean(info.value, tmp_path)
    with pytest.raises(ModelExecutionError, match=r"^model 'tm' failed: ValueError: negative input$"):
        backend.execute({"IN": -np.ones((2, 4), np.float32)})


@requires_torch
@pytest.mark.usefixtures("keep_torch_threads")
def test_fp16_and_bf16(tmp_path: Path) -> None:
    source = """
class M(nn.Module):
    def forward(self, a: Tensor, b: Tensor) -> Tuple[Tensor, Tensor]:
        return (a * 2, b * 2)
"""
    context = torch_model(
        tmp_path,
        script_module(source, tmp_path),
        [("a", "TYPE_FP16"), ("b", "TYPE_BF16")],
        [("A2", "TYPE_FP16"), ("B2", "TYPE_BF16")],
    )
    backend = loaded(PyTorchBackend, context)
    half = rng.standard_normal((3, 4)).astype(np.float16)
    bf16 = torch.from_numpy(rng.standard_normal((3, 4)).astype(np.float32)).to(torch.bfloat16)
    words = bf16.view(torch.int16).numpy().view(np.uint16)
    out = backend.execute({"a": readonly(half), "b": readonly(words)})
    assert out["A2"].dtype == np.float16
    np.testing.assert_array_equal(out["A2"], half * 2)
    assert out["B2"].dtype == np.uint16
    np.testing.assert_array_equal(out["B2"], (bf16 * 2).view(torch.int16).numpy().view(np.uint16))


@requires_torch
def test_missing_model_pt(tmp_path: Path) -> None:
    context = torch_model(tmp_path, None, [("IN", "TYPE_FP32")], [("OUT", "TYPE_FP32")], name="nopt")
    with pytest.raises(NotFound, match=r"^model 'nopt' version 1: file 'model.pt' not found$"):
        PyTorchBackend(context).load()


@requires_torch
@pytest.mark.usefixtures("keep_torch_threads")
def test_corrupt_model_pt(tmp_path: Path) -> None:
    context = torch_model(tmp_path, None, [("IN", "TYPE_FP32")], [("OUT", "TYPE_FP32")], name="junk")
    (context.version_path / "model.pt").write_bytes(rng.bytes(4096))
    with pytest.raises(InvalidArgument, match=r"^model 'junk': model.pt is not a loadable TorchScript model: ") as info:
        PyTorchBackend(context).load()
    assert_clean(info.value, tmp_path)


@requires_torch
@pytest.mark.usefixtures("keep_torch_threads")
def test_kind_gpu_without_cuda_fails_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    context = example("mlp_torch", device=Device("gpu", 0))
    with pytest.raises(FailedPrecondition) as info:
        PyTorchBackend(context).load()
    assert info.value.message == "model 'mlp_torch' asks for cuda:0 but no CUDA device is available"


def test_string_tensors_are_refused_by_pytorch(tmp_path: Path) -> None:
    config = mc.ModelConfig(name="str", platform="pytorch_libtorch")
    config.input.add(name="IN", data_type=mc.TYPE_STRING, dims=[1])
    config.output.add(name="OUT", data_type=mc.TYPE_FP32, dims=[1])
    (tmp_path / "str" / "1").mkdir(parents=True)
    with pytest.raises(ConfigError, match="TYPE_STRING is not supported"):
        PyTorchBackend(make_context(config, tmp_path / "str" / "1")).load()


@requires_cuda
@pytest.mark.gpu
@pytest.mark.usefixtures("keep_torch_threads")
def test_mlp_torch_on_gpu_matches_cpu() -> None:
    cpu = loaded(PyTorchBackend, example("mlp_torch"))
    gpus = [loaded(PyTorchBackend, example("mlp_torch", device=Device("gpu", 0))) for _ in range(2)]
    assert gpus[0]._stream is not gpus[1]._stream
    for batch in (1, 32, 128):
        x = readonly(rng.standard_normal((batch, 64)).astype(np.float32))
        expected = cpu.execute({"INPUT__0": x})["OUTPUT__0"]
        for gpu in gpus:
            np.testing.assert_allclose(gpu.execute({"INPUT__0": x})["OUTPUT__0"], expected, atol=1e-5)


@requires_cuda
@pytest.mark.gpu
@pytest.mark.usefixtures("keep_torch_threads")
def test_a_gpu_batch_is_gathered_once_in_pinned_memory_and_matches_cpu() -> None:
    cpu = loaded(PyTorchBackend, example("mlp_torch"))
    gpu = loaded(PyTorchBackend, example("mlp_torch", device=Device("gpu", 0)))
    parts = [{"INPUT__0": rng.standard_normal((rows, 64)).astype(np.float32)} for rows in (3, 1, 4)]
    staged = gpu.stage(parts)
    assert gpu.staging.is_pinned(staged["INPUT__0"])
    assert torch.from_numpy(staged["INPUT__0"]).is_pinned()
    np.testing.assert_array_equal(staged["INPUT__0"], np.concatenate([p["INPUT__0"] for p in parts]))
    expected = cpu.execute(cpu.stage(parts))["OUTPUT__0"]
    np.testing.assert_allclose(gpu.execute(staged)["OUTPUT__0"], expected, atol=1e-5)
    assert cpu.stage(parts[:1])["INPUT__0"] is parts[0]["INPUT__0"]  # a CPU instance copies nothing


# ----------------------------------------------------------------------------------------- registry


def test_registry_by_backend_platform_and_files(tmp_path: Path) -> None:
    assert registry.backend_class(mc.ModelConfig(name="m", backend="python")) is PythonBackend
    assert registry.backend_class(mc.ModelConfig(name="m", backend="pytorch")) is PyTorchBackend
    assert registry.backend_class(mc.ModelConfig(name="m", platform="pytorch_libtorch")) is PyTorchBackend
    config = mc.ModelConfig(name="m", platform="pytorch_libtorch", default_model_filename="net.ts")
    assert registry.default_filename(config) == "net.ts"
    assert registry.default_filename(mc.ModelConfig(name="m", backend="python")) == "model.py"
    assert registry.backend_name(mc.ModelConfig(name="m", default_model_filename="x.pt")) == "pytorch"
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.py").write_text("")
    assert registry.backend_class(mc.ModelConfig(name="m"), tmp_path / "1") is PythonBackend
    (tmp_path / "1" / "model.py").unlink()
    (tmp_path / "1" / "model.pt").write_bytes(b"")
    assert registry.default_filename(mc.ModelConfig(name="m"), tmp_path / "1") == "model.pt"


@pytest.mark.parametrize(
    ("config", "pattern"),
    [
        (
            mc.ModelConfig(name="m", backend="tensorrtx"),
            r"^model 'm': field 'backend': unknown backend 'tensorrtx'",
        ),
        (
            mc.ModelConfig(name="m", platform="onnxruntime_x"),
            r"^model 'm': field 'platform': unknown platform 'onnxruntime_x'",
        ),
        (mc.ModelConfig(name="m", backend="python", platform="pytorch_libtorch"), r"contradicts platform"),
        (mc.ModelConfig(name="m"), r"neither backend nor platform is set"),
    ],
)
def test_registry_refuses(config: mc.ModelConfig, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        registry.backend_class(config)


def test_registry_does_not_import_torch() -> None:
    code = "import sys, backends.registry; sys.exit(1 if 'torch' in sys.modules else 0)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=False).returncode == 0
