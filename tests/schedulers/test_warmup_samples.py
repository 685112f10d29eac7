"""Warm-up samples built from a config (schedulers/warmup.py), in process: zeros, random data,
files of the model's warmup/ folder (BYTES length-prefixed), the batch dimension, and the
errors that name the sample. tests/server/core/test_warmup.py runs them on a real server."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from backends.common.errors import InvalidArgument
from backends.proto import model_config_pb2 as mc
from schedulers.warmup import warmup_samples

IO = """
name: "m"
max_batch_size: 4
input [ { name: "X", data_type: TYPE_FP32, dims: [ 2 ] }, { name: "S", data_type: TYPE_STRING, dims: [ 2 ] } ]
"""


def config(warmup: str, batching: int = 4) -> mc.ModelConfig:
    text = IO.replace("max_batch_size: 4", f"max_batch_size: {batching}") + warmup
    return text_format.Parse(text, mc.ModelConfig())


def sample(name: str, x: str, s: str, batch: int = 1, count: int = 0) -> str:
    return (
        f'model_warmup [ {{ name: "{name}" batch_size: {batch} count: {count} '
        f'inputs {{ key: "X" value {{ data_type: TYPE_FP32 dims: [ 2 ] {x} }} }} '
        f'inputs {{ key: "S" value {{ data_type: TYPE_STRING dims: [ 2 ] {s} }} }} }} ]'
    )


def test_zeros_random_and_the_batch_dimension(tmp_path: Path) -> None:
    (zeros,) = warmup_samples(config(sample("z", "zero_data: true", "zero_data: true", batch=3)), tmp_path)
    assert zeros.batch_size == 3
    assert zeros.count == 1  # 0 means once
    np.testing.assert_array_equal(zeros.inputs["X"], np.zeros((3, 2), np.float32))
    assert zeros.inputs["S"].tolist() == [[b"", b""]] * 3
    (noise,) = warmup_samples(config(sample("r", "random_data: true", "random_data: true", count=2)), tmp_path)
    assert noise.count == 2
    assert noise.inputs["X"].dtype == np.float32
    assert noise.inputs["X"].shape == (1, 2)
    assert ((noise.inputs["X"] >= 0) & (noise.inputs["X"] < 1)).all()


def test_files_of_the_warmup_folder(tmp_path: Path) -> None:
    (tmp_path / "warmup").mkdir()
    np.array([1.5, -2], "<f4").tofile(tmp_path / "warmup" / "x.bin")
    (tmp_path / "warmup" / "s.bin").write_bytes(b"".join(struct.pack("<I", len(t)) + t for t in (b"ab", b"")))
    files = sample("f", 'input_data_file: "x.bin"', 'input_data_file: "s.bin"', batch=2)
    (built,) = warmup_samples(config(files), tmp_path)
    assert built.inputs["X"].tolist() == [[1.5, -2.0]] * 2
    assert built.inputs["S"].tolist() == [[b"ab", b""]] * 2


def test_without_batching_the_dims_are_the_shape(tmp_path: Path) -> None:
    (built,) = warmup_samples(config(sample("n", "zero_data: true", "zero_data: true"), batching=0), tmp_path)
    assert built.inputs["X"].shape == (2,)


@pytest.mark.parametrize(
    ("warmup", "batching", "reason"),
    [
        (sample("b", "zero_data: true", "zero_data: true", batch=0), 4, "batch_size must be at least 1"),
        (sample("b", "zero_data: true", "zero_data: true", batch=2), 0, "the model does not batch"),
        (sample("b", "zero_data: true", "zero_data: true", batch=5), 4, "exceeds the model's max_batch_size 4"),
        (sample("f", 'input_data_file: "nope.bin"', "zero_data: true"), 4, "'warmup/nope.bin' not found"),
        (sample("f", 'input_data_file: "../config.pbtxt"', "zero_data: true"), 4, "leads outside the warmup folder"),
        (sample("f", 'input_data_file: "short.bin"', "zero_data: true"), 4, "4 bytes of raw data"),
        (sample("e", "", "zero_data: true"), 4, "one of zero_data, random_data, input_data_file is required"),
        (sample("h", "zero_data: true", "zero_data: true").replace("[ 2 ]", "[ 1000000000 ]", 1), 4, "1 GiB"),
    ],
)
def test_a_bad_sample_is_an_error_naming_it(tmp_path: Path, warmup: str, batching: int, reason: str) -> None:
    (tmp_path / "warmup").mkdir()
    (tmp_path / "warmup" / "short.bin").write_bytes(b"\0" * 4)
    (tmp_path / "config.pbtxt").write_text("")
    with pytest.raises(InvalidArgument, match="warm-up sample") as error:
        warmup_samples(config(warmup, batching), tmp_path)
    assert reason in error.value.message
