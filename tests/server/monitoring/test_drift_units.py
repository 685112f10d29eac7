"""The drift monitor's parts, in-process: the tests of statistics.py (each sees a drift it should
and none where there is none), the ``drift_*`` keys (every bad value a load error naming the
key), and the monitor's request-path side (a bounded buffer, drops counted, copies) and its one
log line per alarm change. Through a real server: test_drift_server.py."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from backends.common.errors import ConfigError
from backends.proto import model_config_pb2 as mc
from schedulers.applications.application import disagree
from server.access import STATISTICS, http_api
from server.monitoring.drift import statistics
from server.monitoring.drift.config import DriftConfig, Kind, Monitored, drift_config
from server.monitoring.drift.detector import CheckResult
from server.monitoring.drift.load import drift_monitor
from server.monitoring.drift.monitor import DriftMonitor

RNG = np.random.default_rng(1)


# -- statistics ---------------------------------------------------------------------------------


def test_ks_sees_a_shifted_column_only() -> None:
    ref, cur = RNG.standard_normal((2000, 3)), RNG.standard_normal((2000, 3))
    cur[:, 1] += 0.5
    d, p = statistics.ks(ref, cur)
    assert p[1] < 1e-10 < min(p[0], p[2])
    assert d[1] > 0.15 > max(d[0], d[2])


def test_benjamini_hochberg_is_scipys() -> None:
    p = [0.001, 0.01, 0.02, 0.5]
    adjusted = statistics.adjust(p)
    assert adjusted.tolist() == pytest.approx([0.004, 0.02, 0.02 * 4 / 3, 0.5])
    assert statistics.adjust([]).size == 0


def test_psi_small_for_the_same_distribution_large_for_a_shift() -> None:
    ref = RNG.standard_normal((5000, 1))
    assert statistics.psi(ref, RNG.standard_normal((5000, 1)))[0] < 0.02
    assert statistics.psi(ref, RNG.standard_normal((5000, 1)) + 1.0)[0] > 0.5


def test_chi2_sees_a_new_category_and_not_the_same_shares() -> None:
    values = [b"a", b"b", b"c"]
    ref = RNG.choice(values, 3000).tolist()
    index = statistics.categories(ref, 50)
    same = statistics.count_table(ref, RNG.choice(values, 2000).tolist(), index)
    assert statistics.chi2(same)[1] > 0.001
    new = RNG.choice(values, 2000).tolist()
    new[:200] = [b"z"] * 200  # 10 % of a category the reference never had: it counts as OTHER
    table = statistics.count_table(ref, new, index)
    assert table[1, -1] == 200
    assert table[0, -1] == 0
    assert statistics.chi2(table)[1] < 1e-20


def test_chi2_with_one_category_is_no_test() -> None:
    assert statistics.chi2(np.array([[10, 0], [5, 0]])) == (0.0, 1.0)


def test_categories_keep_the_most_frequent_and_lump_the_rest() -> None:
    ref = [1] * 5 + [2] * 4 + [3] * 3 + [4]
    index = statistics.categories(ref, 3)
    assert index == {1: 0, 2: 1}
    assert statistics.counts([1, 2, 3, 4, 9], index).tolist() == [1, 1, 3]


def test_mmd_on_a_projection_sees_a_mean_rotation_not_noise() -> None:
    projection = statistics.projection(256, 32, 0)
    mean = np.zeros(256)
    mean[0] = 4.0
    turned = np.zeros(256)
    turned[0], turned[1] = 4.0 * np.cos(0.6), 4.0 * np.sin(0.6)
    ref = (RNG.standard_normal((2000, 256)) + mean) @ projection
    same = (RNG.standard_normal((2000, 256)) + mean) @ projection
    moved = (RNG.standard_normal((2000, 256)) + turned) @ projection
    assert statistics.mmd(ref, same, np.random.default_rng(0))[1] > 0.01
    assert statistics.mmd(ref, moved, np.random.default_rng(0))[1] < 1e-6


def test_disagreement_compares_classes() -> None:
    assert disagree([np.array([0.1, 0.9]), np.array([0.2, 0.8])]) is False
    assert disagree([np.array([0.1, 0.9]), np.array([0.8, 0.2])]) is True
    assert disagree([np.array([3]), np.array([3]), np.array([4])]) is True


def test_the_status_route_is_in_the_statistics_class() -> None:
    assert http_api("/v2/models/{model}/monitoring") == STATISTICS
    assert http_api("/v2/models/{model}/versions/{version}/monitoring") == STATISTICS


# -- configuration ------------------------------------------------------------------------------

CONFIG = """
name: "m"
backend: "python"
max_batch_size: 8
input [
  { name: "x", data_type: TYPE_FP32, dims: [ 4 ] },
  { name: "wide", data_type: TYPE_FP32, dims: [ 16, 16 ] },
  { name: "colour", data_type: TYPE_STRING, dims: [ 1 ] },
  { name: "free", data_type: TYPE_FP32, dims: [ -1 ], optional: true }
]
output [ { name: "scores", data_type: TYPE_FP32, dims: [ 3 ] } ]
"""


def config(**drift: str) -> mc.ModelConfig:
    parsed = text_format.Parse(CONFIG, mc.ModelConfig())
    for key, value in drift.items():
        parsed.parameters[key].string_value = value
    return parsed


def load_error(tmp_path: Path, **drift: str) -> str:
    with pytest.raises(ConfigError) as caught:
        drift_monitor(config(**drift), 1, tmp_path)
    return caught.value.message


def test_no_drift_key_no_monitor(tmp_path: Path) -> None:
    assert drift_config(config(), tmp_path) is None
    assert drift_config(config(drift_sample_rate="0", drift_inputs="x"), tmp_path) is None


def test_keys_give_the_monitored_tensors(tmp_path: Path) -> None:
    drift = drift_config(
        config(
            drift_inputs="x, wide,colour",
            drift_categorical="colour",
            drift_class_outputs="scores",
            drift_sample_rate="0.25",
            drift_window="500",
        ),
        tmp_path,
    )
    assert drift is not None
    assert drift.tensors == (
        Monitored("x", False, Kind.NUMERIC, 4),
        Monitored("wide", False, Kind.WIDE, 256),
        Monitored("colour", False, Kind.CATEGORICAL, 1),
        Monitored("scores", True, Kind.CLASS, 3),
    )
    assert (drift.sample_rate, drift.window, drift.check_rows) == (0.25, 500, 500)
    assert drift.reference_file is None


@pytest.mark.parametrize(
    ("drift", "says"),
    [
        ({"drift_sample_rate": "1.5"}, "parameters.drift_sample_rate': must be a number >= 0 and <= 1"),
        ({"drift_sample_rate": "nan"}, "parameters.drift_sample_rate"),
        ({"drift_inputs": "x,nope"}, "names 'nope', which is not one of the model's tensors"),
        ({"drift_class_outputs": "x"}, "parameters.drift_class_outputs': names 'x'"),
        ({"drift_inputs": "free"}, "has a variable shape"),
        ({"drift_windw": "100"}, "parameters.drift_windw': is not a drift key"),
        ({"drift_window": "10"}, "must be a whole number of rows from 100"),
        ({"drift_inputs": "x", "drift_check_rows": "5000"}, "parameters.drift_check_rows"),
        ({"drift_alpha": "0"}, "parameters.drift_alpha': must be a number > 0"),
        ({"drift_reference": "missing.npz"}, "parameters.drift_reference': names no file in the model's folder"),
        ({"drift_reference": "../../etc/passwd.npz"}, "must be a .npz or .npy file inside the model's folder"),
        ({"drift_reference": "/tmp/x.npz"}, "inside the model's folder"),
    ],
)
def test_bad_keys_fail_the_load_naming_the_key(tmp_path: Path, drift: dict[str, str], says: str) -> None:
    message = load_error(tmp_path, **drift)
    assert message.startswith("model 'm': field 'parameters.drift_")
    assert says in message


def test_reference_file_is_checked(tmp_path: Path) -> None:
    np.savez(tmp_path / "ref.npz", x=RNG.standard_normal((500, 4)).astype(np.float32))
    ok = drift_monitor(config(drift_reference="ref.npz", drift_inputs="x"), 1, tmp_path)
    assert ok is not None
    assert ok.reference_source == "file"
    assert ok.detector.reference_ready
    both = {"drift_reference": "ref.npz", "drift_inputs": "x", "drift_class_outputs": "scores"}
    assert "holds no array 'scores' (it holds x)" in load_error(tmp_path, **both)
    np.savez(tmp_path / "short.npz", x=RNG.standard_normal((50, 4)))
    assert "has 50 rows: at least 100" in load_error(tmp_path, drift_reference="short.npz", drift_inputs="x")
    np.savez(tmp_path / "shape.npz", x=RNG.standard_normal((500, 5)))
    assert "is not (rows, 4 elements)" in load_error(tmp_path, drift_reference="shape.npz", drift_inputs="x")
    np.savez(tmp_path / "pickled.npz", x=np.array([{"a": 1}] * 200, dtype=object))
    assert "without pickles" in load_error(tmp_path, drift_reference="pickled.npz", drift_inputs="x")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert "cannot be read" in load_error(tmp_path, drift_reference="junk.npz", drift_inputs="x")


# -- the monitor's request-path side ------------------------------------------------------------


def small_monitor(buffer: int = 4, rate: float = 1.0) -> DriftMonitor:
    cfg = DriftConfig(tensors=(Monitored("x", False, Kind.NUMERIC, 2),), sample_rate=rate, buffer=buffer)
    return DriftMonitor("m", 1, cfg, None)


def test_the_buffer_is_bounded_and_drops_are_counted() -> None:
    monitor = small_monitor(buffer=4)
    x = np.ones((3, 2), np.float32)
    for _ in range(10):
        monitor.offer({"x": x}, {})
    assert (monitor.sampled, monitor.dropped, len(monitor._buffer)) == (4, 6, 4)
    monitor.analyse()  # the analysis empties it: room again
    monitor.offer({"x": x}, {})
    assert (monitor.sampled, monitor.dropped, monitor.detector.reference["x"].count) == (5, 6, 12)


def test_a_sample_is_a_copy() -> None:
    monitor = small_monitor()
    wire = np.zeros((1, 2), np.float32)
    monitor.offer({"x": wire}, {})
    wire[:] = 7  # the transport reuses its bytes
    assert monitor._buffer[0]["x"].tolist() == [[0.0, 0.0]]


def test_a_categorys_bytes_are_bounded() -> None:
    cfg = DriftConfig(tensors=(Monitored("c", False, Kind.CATEGORICAL, 1),), sample_rate=1.0)
    monitor = DriftMonitor("m", 1, cfg, None)
    huge = np.array([[b"x" * 1_000_000], [b"ok"]], dtype=object)
    monitor.offer({"c": huge}, {})
    kept = monitor._buffer[0]["c"]
    assert kept.shape == (2, 1)
    assert kept[:, 0].tolist() == [b"x" * 64, b"ok"]


def test_the_sample_rate_is_kept() -> None:
    monitor = small_monitor(buffer=100_000, rate=0.1)
    x = np.ones((1, 2), np.float32)
    for _ in range(20_000):
        monitor.offer({"x": x}, {})
    assert 1800 < monitor.sampled < 2200


def test_a_request_without_a_monitored_input_is_skipped() -> None:
    monitor = small_monitor()
    monitor.offer({"y": np.ones((1, 2))}, {})
    assert monitor.sampled == 0
    assert not monitor._buffer


def test_one_log_line_per_alarm_change(caplog: pytest.LogCaptureFixture) -> None:
    monitor = small_monitor()
    on = [CheckResult("x[0]", "ks", 0.3, 1e-9, True), CheckResult("x[1]", "ks", 0.01, 0.9, False)]
    off = [CheckResult("x[0]", "ks", 0.01, 0.8, False)]
    with caplog.at_level(logging.INFO, logger="server.monitoring.drift.monitor"):
        for results in (off, on, on, on, off, off):
            monitor.publish(results)
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines == [
        ("WARNING", "drift alarm ON for model 'm' version 1: x[0] (ks p=1e-09)"),
        ("INFO", "drift alarm OFF for model 'm' version 1"),
    ]
    assert monitor.checks == 6
    assert monitor.alarm is False


def test_a_reference_from_the_first_requests_then_checks() -> None:
    tensors = (Monitored("x", False, Kind.NUMERIC, 2),)
    cfg = DriftConfig(tensors=tensors, sample_rate=1.0, reference_rows=200, window=200, check_rows=100)
    monitor = DriftMonitor("m", 1, cfg, None)
    rng = np.random.default_rng(0)
    for _ in range(20):  # 200 rows: the reference, nothing to check yet
        monitor.offer({"x": rng.standard_normal((10, 2))}, {})
    assert monitor.analyse() is None
    assert monitor.status()["reference"] == {"source": "requests", "ready": True}
    for _ in range(10):  # 100 rows more, shifted: a check is due, and it sees the shift
        monitor.offer({"x": rng.standard_normal((10, 2)) + np.array([3.0, 0.0])}, {})
    results = monitor.analyse()
    assert results is not None
    monitor.publish(results)
    alarmed = {(r.feature, r.test) for r in results if r.alarm}
    assert ("x[0]", "ks") in alarmed
    assert ("x[1]", "ks") not in alarmed
    assert monitor.status()["alarm"] is True
