"""Issue 19's Prove-it for drift, in-process and seeded (tests/server/monitoring/scenarios.py):
each injected drift is detected within its bound and not before it starts, on every seed."""

from __future__ import annotations

import pytest

from tests.server.monitoring.scenarios import SCENARIOS, Scenario, delay

SEEDS = range(5)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_injected_drift_is_detected_within_its_bound(scenario: Scenario) -> None:
    delays = [delay(scenario, seed) for seed in SEEDS]
    for found in delays:
        assert found is not None, f"{scenario.name}: not detected within {2 * scenario.within} samples: {delays}"
        assert found > 0, f"{scenario.name}: an alarm before the drift started: {delays}"
        assert found <= scenario.within, f"{scenario.name}: detected after {found} samples: {delays}"
