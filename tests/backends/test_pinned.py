"""Gathering a batch into reusable host buffers (backends.pinned.PinnedStaging). Pinning itself
needs a CUDA runtime: here the buffers are ordinary memory (pin=False); the GPU test in
test_backends.py checks the real thing."""

from __future__ import annotations

import numpy as np
import pytest

from backends.base import Tensors
from backends.pinned import PinnedStaging

torch = pytest.importorskip("torch", reason="torch is not installed")


def staging() -> PinnedStaging:
    return PinnedStaging(torch, pin=False)


def test_requests_are_concatenated_into_the_buffer() -> None:
    s = staging()
    parts: list[Tensors] = [
        {"X": np.full((rows, 3), rows, np.float32), "Y": np.arange(rows, dtype=np.int64)} for rows in (2, 1, 3)
    ]
    batch = s.gather(parts)
    np.testing.assert_array_equal(batch["X"], np.concatenate([p["X"] for p in parts]))
    np.testing.assert_array_equal(batch["Y"], np.concatenate([p["Y"] for p in parts]))
    assert batch["X"].dtype == np.float32
    assert batch["Y"].dtype == np.int64
    assert s.is_pinned(batch["X"])
    assert s.is_pinned(batch["Y"])


def test_a_single_request_is_copied_in_so_the_device_copy_can_be_asynchronous() -> None:
    s = staging()
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    staged = s.gather([{"X": x}])["X"]
    assert staged is not x
    assert s.is_pinned(staged)
    assert not s.is_pinned(x)
    np.testing.assert_array_equal(staged, x)


def test_the_buffer_is_reused_and_grows_when_a_batch_needs_more() -> None:
    s = staging()
    small = s.gather([{"X": np.ones((2, 4), np.float32)}])["X"]
    again = s.gather([{"X": np.zeros((3, 4), np.float32)}])["X"]
    assert again.__array_interface__["data"][0] == small.__array_interface__["data"][0]  # same memory
    big = s.gather([{"X": np.full((4096, 4), 7, np.float32)}])["X"]  # 64 KiB: past the first buffer
    assert s.is_pinned(big)
    np.testing.assert_array_equal(big, 7)


def test_zero_rows_and_odd_dtypes_survive() -> None:
    s = staging()
    empty = s.gather([{"X": np.empty((0, 5), np.float16)}])["X"]
    assert empty.shape == (0, 5)
    assert empty.dtype == np.float16
    words = np.array([[1, 2]], dtype=np.uint16)  # BF16 travels as uint16 words
    np.testing.assert_array_equal(s.gather([{"B": words}, {"B": words}])["B"], [[1, 2], [1, 2]])


def test_bytes_inputs_are_not_staged() -> None:
    s = staging()
    strings = np.array([b"a", b"bc"], dtype=object)
    batch = s.gather([{"S": strings}, {"S": strings[:1]}])
    assert list(batch["S"]) == [b"a", b"bc", b"a"]
    assert not s.is_pinned(batch["S"])
