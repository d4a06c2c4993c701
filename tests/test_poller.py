"""The poller's own rules, with a scripted driver (no protocol, no network): the poll schedule's
phases, how a failure is counted, and when the reconnect backoff starts again. The poller is
also tested against real devices in test_modbus_driver.py, test_modbus_rtu.py, test_opcua.py.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from typing import Any

import pytest

from collector.acquisition.poller import DeviceStatus, Poller, phase_s
from common.backoff import Backoff, Probe, wait_or_back
from contract.records import Reading
from drivers.base import NotConnectedError
from tests.helpers import async_wait_until


def test_poll_phases_group_devices_and_spread_the_groups() -> None:
    """Ten devices share a phase (one wake-up starts them); the groups are spread evenly over
    the interval, over at most a second."""
    assert {phase_s(i, 10, 0.1) for i in range(10)} == {0.0}
    phases = [phase_s(i, 50, 0.1) for i in range(50)]
    assert sorted(set(phases)) == pytest.approx([0.0, 0.02, 0.04, 0.06, 0.08])
    assert phases.count(0.0) == 10
    assert max(phase_s(i, 25, 60.0) for i in range(25)) == pytest.approx(2 / 3)
    assert phase_s(0, 0, 1.0) == 0.0


Outcome = Exception | None


class ScriptedDriver:
    """A driver whose connects and reads fail as scripted (an exception each), then succeed."""

    max_read_seconds = 1.0

    def __init__(self, connects: Sequence[Outcome] = (), reads: Sequence[Outcome] = ()) -> None:
        self.connects, self.reads = list(connects), list(reads)
        self.good_reads = 0

    async def connect(self) -> None:
        outcome = self.connects.pop(0) if self.connects else None
        if outcome is not None:
            raise outcome

    async def read(self) -> Sequence[Reading]:
        outcome = self.reads.pop(0) if self.reads else None
        if outcome is not None:
            raise outcome
        self.good_reads += 1
        return [Reading(time.time(), "x", self.good_reads)]

    async def close(self) -> None:
        pass

    def describe(self) -> str:
        return "scripted"

    def details(self) -> dict[str, Any]:
        return {}


class RecordedBackoff(Backoff):
    """The real backoff, recording each delay it hands out."""

    def __init__(self, minimum_s: float, maximum_s: float) -> None:
        super().__init__(minimum_s, maximum_s, random.Random(1))
        self.delays: list[float] = []

    def next_delay(self) -> float:
        delay = super().next_delay()
        self.delays.append(delay)
        return delay


async def run_until(poller: Poller, done: Any, what: str) -> None:
    task = asyncio.create_task(poller.run())
    try:
        await async_wait_until(done, 10, what)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize(
    ("connects", "reads", "code", "text"),
    [
        ([], [ValueError("a bug in the driver")], "internal", "ValueError('a bug in the driver')"),
        ([KeyError("slot")], [], "internal", "KeyError('slot')"),
        ([], [NotConnectedError("link gone")], "connection", "link gone"),
        ([NotConnectedError("refused")], [], "connection", "refused"),
    ],
)
async def test_a_failure_is_counted_by_its_kind(
    connects: list[Outcome], reads: list[Outcome], code: str, text: str
) -> None:
    """A DeviceError counts under its own code; anything else a driver raises is a bug in the
    driver, counted as `internal` (never as a connection problem)."""
    driver = ScriptedDriver(connects, reads)
    status = DeviceStatus("d", "scripted", None)
    poller = Poller(driver, status, 0.01, lambda *_: None, Backoff(0.01, 0.02))
    await run_until(poller, lambda: driver.good_reads >= 1, "a good poll after the failure")
    assert status.errors == {code: 1}
    assert status.last_error == f"{code}: {text}"


async def test_the_writer_is_told_when_each_poll_starts_and_ends() -> None:
    """Every poll, good or failed, is announced and ended (the buffer writer commits the
    polls under way together), the readings handed over in between."""
    driver = ScriptedDriver(reads=[None, ValueError("a bug"), None])
    events: list[str] = []
    poller = Poller(
        driver,
        DeviceStatus("d", "scripted", None),
        0.01,
        lambda _device, readings: events.append(f"sink {readings[0].value}"),
        Backoff(0.01, 0.02),
        under_way=(lambda: events.append("start"), lambda: events.append("end")),
    )
    await run_until(poller, lambda: driver.good_reads >= 2, "two good polls")
    assert events[:7] == ["start", "sink 1", "end", "start", "end", "start", "sink 2"]
    assert events.count("start") == events.count("end")  # a cancelled poll ends too


async def test_a_good_poll_starts_the_backoff_again() -> None:
    """Failed connects make the delay grow; a good poll resets it, so the next failure waits
    the shortest delay again, not the grown one."""
    failures = [NotConnectedError("refused")] * 4
    driver = ScriptedDriver(connects=failures, reads=[None, NotConnectedError("gone")])
    backoff = RecordedBackoff(0.01, 10.0)
    status = DeviceStatus("d", "scripted", None)
    poller = Poller(driver, status, 0.01, lambda *_: None, backoff)
    await run_until(poller, lambda: driver.good_reads >= 2, "polls after the second failure")
    # Four failed connects: delays up to 0.01, 0.02, 0.04, 0.08 s (each in the upper half).
    assert len(backoff.delays) == 5
    assert backoff.delays[3] > 0.04
    # After the good poll, the read failure waits at most the minimum again.
    assert backoff.delays[4] <= 0.01


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
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert not await wait_or_back(0.1, probe, period_s=0.01)
    assert loop.time() - started >= 0.1  # the whole delay (how many probes: the load's say)
    assert asked
    assert set(asked) == {True}


async def test_a_refused_connection_counts_as_down_for_the_first_probe() -> None:
    # The peer came back between the refused connect and this wait's first probe: without
    # `down` the wait would run its whole delay (8 s at a fifth attempt).
    asked, probe = probe_answering(True)
    assert await wait_or_back(60.0, probe, period_s=0.01, down=True)
    assert asked == [True]


async def test_without_a_probe_the_backoff_is_a_plain_wait() -> None:
    stop = asyncio.Event()
    stop.set()
    assert not await wait_or_back(60.0, None, stop=stop)  # ends at once when stopped
    assert not await wait_or_back(0.01, None)
