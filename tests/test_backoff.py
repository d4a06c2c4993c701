"""The backoff wait and its reachability probe (common.backoff): only a down -> up edge ends a
wait early; a caller that has just seen the peer refuse its connection counts as "down"."""

from __future__ import annotations

import asyncio

from common.backoff import wait_or_back


def _probe(answers: list[bool]) -> tuple[list[bool], object]:
    asked: list[bool] = []

    async def probe() -> bool:
        answer = answers[min(len(asked), len(answers) - 1)]
        asked.append(answer)
        return answer

    return asked, probe


async def test_a_peer_up_all_along_keeps_the_whole_delay() -> None:
    # It accepts TCP but refused the session (a bad password): no edge, the plain backoff.
    loop = asyncio.get_running_loop()
    asked, probe = _probe([True])
    started = loop.time()
    assert await wait_or_back(0.3, probe, period_s=0.02) is False  # type: ignore[arg-type]
    assert loop.time() - started >= 0.3
    assert len(asked) >= 3


async def test_a_peer_seen_down_then_up_ends_the_wait_at_once() -> None:
    asked, probe = _probe([False, False, True])
    assert await wait_or_back(30, probe, period_s=0.01) is True  # type: ignore[arg-type]
    assert asked == [False, False, True]


async def test_a_refused_connection_counts_as_down_for_the_first_probe() -> None:
    # The broker came back between the refused connect and this wait's first probe: without
    # `down` the wait would run its whole delay (8 s at the fifth attempt).
    asked, probe = _probe([True])
    assert await wait_or_back(30, probe, period_s=0.01, down=True) is True  # type: ignore[arg-type]
    assert asked == [True]
