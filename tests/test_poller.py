"""The poll schedule's phases (pure logic; the poller itself is tested against real devices in
test_modbus_driver.py and test_modbus_rtu.py)."""

from __future__ import annotations

import asyncio

import pytest

from collector.backoff import Probe, wait_or_back
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


def probe_answering(*answers: bool) -> tuple[list[bool], Probe]:
    """A reachability probe that answers as given, then keeps the last answer."""
    asked: list[bool] = []

    async def probe() -> bool:
        answer = answers[min(len(asked), len(answers) - 1)]
        asked.append(answer)
        return answer

    return asked, probe


async def test_the_backoff_ends_when_a_peer_that_was_down_answers_again() -> None:
    asked, probe = probe_answering(False, False, True)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await wait_or_back(60.0, probe, period_s=0.01)
    assert asked == [False, False, True]
    assert loop.time() - started < 60.0


async def test_a_peer_reachable_all_along_keeps_the_backoff() -> None:
    """A peer that answers TCP but refused the session (a password, a certificate): the
    probe's success proves nothing, so the whole delay is waited."""
    asked, probe = probe_answering(True)
    assert not await wait_or_back(0.1, probe, period_s=0.01)
    assert len(asked) >= 3
    assert set(asked) == {True}


async def test_without_a_probe_the_backoff_is_a_plain_wait() -> None:
    stop = asyncio.Event()
    stop.set()
    assert not await wait_or_back(60.0, None, stop=stop)  # ends at once when stopped
    assert not await wait_or_back(0.01, None)
