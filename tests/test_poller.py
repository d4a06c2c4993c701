"""The poll schedule's phases (pure logic; the poller itself is tested against real devices in
test_modbus_driver.py and test_modbus_rtu.py)."""

from __future__ import annotations

import pytest

from collector.poller import phase_s


def test_poll_phases_group_devices_and_spread_the_groups() -> None:
    """Ten devices share a phase (one wake-up starts them); the groups are spread evenly over
    the interval, over at most a second."""
    assert {phase_s(i, 10, 0.1) for i in range(10)} == {0.0}
    phases = [phase_s(i, 50, 0.1) for i in range(50)]
    assert sorted(set(phases)) == pytest.approx([0.0, 0.02, 0.04, 0.06, 0.08])
    assert phases.count(0.0) == 10
    assert max(phase_s(i, 25, 60.0) for i in range(25)) == pytest.approx(2 / 3)
    assert phase_s(0, 0, 1.0) == 0.0
