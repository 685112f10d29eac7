"""Clipper's AIMD batch-size cap against a synthetic model whose batch latency is a + b·n, and
the settings it reads from a model config."""

from __future__ import annotations

import pytest

from backends.common.errors import ConfigError
from backends.proto import model_config_pb2 as mc
from schedulers.aimd import AimdController, AimdSettings, aimd_settings

US = 1000  # ns


def run(controller: AimdController, a_us: float, b_us: float, batches: int) -> list[int]:
    """``batches`` full batches (the queue never runs dry): the caps they ran at."""
    caps = []
    for _ in range(batches):
        n = controller.cap
        caps.append(n)
        controller.observe(n, int((a_us + b_us * n) * US))
    return caps


def best(a_us: float, b_us: float, target_us: float) -> int:
    """The largest n whose latency a + b·n stays within the target."""
    return int((target_us - a_us) // b_us)


def test_converges_to_the_largest_batch_under_the_target_and_stays_near_it() -> None:
    target = 10_000
    controller = AimdController(AimdSettings(target * US, step=4), max_batch=512)
    a, b = 500.0, 50.0  # n* = 190
    n_star = best(a, b, target)
    caps = run(controller, a, b, 200)
    reached = next(i for i, cap in enumerate(caps) if cap >= n_star - 4)
    assert reached <= n_star // 4 + 1  # additive steps of 4 from 1: bounded by n*/step batches
    settled = caps[reached:]
    assert max(settled) <= n_star + 4  # at most one step over, and that batch is cut at once
    assert min(settled) >= int(0.9 * n_star) - 4  # a 10 % cut, then growth again


def test_backs_off_by_ten_percent_when_the_model_slows_and_recovers_when_it_speeds_up() -> None:
    target = 10_000
    controller = AimdController(AimdSettings(target * US, step=2), max_batch=1024)
    run(controller, 500, 50, 200)
    before = controller.cap
    controller.observe(before, (500 + 100 * before) * US)  # the model is twice as slow now
    assert controller.cap == int(before * 0.9)
    slow = run(controller, 500, 100, 100)
    n_slow = best(500, 100, target)  # 95
    assert max(slow[-20:]) <= n_slow + 2
    assert min(slow[-20:]) >= int(0.9 * n_slow) - 2
    fast = run(controller, 500, 50, 100)  # back to the first speed
    assert max(fast[-20:]) >= best(500, 50, target) - 2


def test_the_cap_never_exceeds_max_batch_size_nor_falls_below_one() -> None:
    controller = AimdController(AimdSettings(10**12, step=8), max_batch=32)  # every batch is fast
    assert max(run(controller, 1, 1, 50)) == 32
    slow = AimdController(AimdSettings(1, step=1, initial=4), max_batch=32)  # every batch is slow
    assert run(slow, 1000, 1000, 10)[-1] == 1


def test_time_over_the_target_is_summed() -> None:
    controller = AimdController(AimdSettings(1000 * US, initial=10), max_batch=64)
    controller.observe(10, 1500 * US)
    controller.observe(9, 800 * US)
    controller.observe(9, 1200 * US)
    assert controller.over_target == 2
    assert controller.over_target_ns == 700 * US


def test_partial_batches_do_not_grow_the_cap() -> None:
    controller = AimdController(AimdSettings(10**12, step=1, initial=8), max_batch=64)
    for _ in range(100):
        controller.observe(3, 1)  # light load: batches of 3 say nothing about batches of 9
    assert controller.cap == 8


def test_a_batch_the_cap_limited_grows_it_though_it_is_smaller() -> None:
    controller = AimdController(AimdSettings(10**12, step=1, initial=8), max_batch=64)
    controller.observe(5, 1, cap_bound=True)  # ten waited under a cap of eight: two batches of five
    assert controller.cap == 9


def test_without_a_target_the_cap_is_max_batch_size() -> None:
    controller = AimdController(AimdSettings(None), max_batch=64)
    controller.observe(64, 10**12)
    assert controller.cap == 64
    assert controller.last_latency_ns == 10**12


def config(max_batch_size: int = 8, **params: str) -> mc.ModelConfig:
    cfg = mc.ModelConfig(name="m", max_batch_size=max_batch_size)
    for key, value in params.items():
        cfg.parameters[key].string_value = value
    return cfg


def test_settings_from_the_config() -> None:
    assert aimd_settings(config()) == AimdSettings(None)
    settings = aimd_settings(
        config(batch_latency_target_us="2500", batch_size_step="4", batch_backoff="0.8", batch_size_initial="2")
    )
    assert settings == AimdSettings(2_500_000, 4, 0.8, 2, fill_delay_ns=125_000)  # 5 % of the target
    assert aimd_settings(config(batch_latency_target_us="2500", batch_fill_delay_us="0")).fill_delay_ns == 0
    assert aimd_settings(config(batch_fill_delay_us="300")) == AimdSettings(None, fill_delay_ns=300_000)
    assert aimd_settings(config(batch_latency_target_us=" 1.5 ")).target_ns == 1500


@pytest.mark.parametrize(
    ("params", "max_batch_size", "fragment"),
    [
        ({"batch_latency_target_us": "fast"}, 8, "must be a number > 0, got 'fast'"),
        ({"batch_latency_target_us": "-5"}, 8, "must be a number > 0, got '-5'"),
        ({"batch_latency_target_us": "0"}, 8, "must be a number > 0, got '0'"),
        ({"batch_latency_target_us": "nan"}, 8, "must be a number > 0, got 'nan'"),
        ({"batch_latency_target_us": "inf"}, 8, "must be a number > 0, got 'inf'"),
        ({"batch_latency_target_us": "100", "batch_size_step": "0"}, 8, "must be a whole number from 1 to"),
        ({"batch_latency_target_us": "100", "batch_size_step": "1.5"}, 8, "must be a whole number from 1 to"),
        ({"batch_latency_target_us": "100", "batch_backoff": "1"}, 8, "must be a number > 0 and < 1, got '1'"),
        ({"batch_latency_target_us": "100", "batch_backoff": "0"}, 8, "must be a number > 0 and < 1, got '0'"),
        ({"batch_latency_target_us": "100", "batch_size_initial": "0"}, 8, "must be a whole number from 1 to"),
        ({"batch_size_step": "4"}, 8, "needs parameters.batch_latency_target_us"),
        ({"batch_fill_delay_us": "-1"}, 8, "must be a number >= 0, got '-1'"),
        ({"batch_fill_delay_us": "soon"}, 8, "must be a number >= 0, got 'soon'"),
        ({"batch_latency_target_us": "100", "batch_fill_delay_us": "inf"}, 8, "must be a number >= 0, got 'inf'"),
        ({"batch_latency_target_us": "100"}, 0, "needs max_batch_size > 0"),
    ],
)
def test_bad_settings_name_the_parameter(params: dict[str, str], max_batch_size: int, fragment: str) -> None:
    with pytest.raises(ConfigError, match="parameters") as error:
        aimd_settings(config(max_batch_size, **params))
    assert fragment in str(error.value)
