"""The live page's feed on its own (no network): a failing snapshot is logged once and the
feed goes on; nothing is computed while no page is open."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from collector.operations.live import LiveFeed
from tests.helpers import async_wait_until


async def test_a_failing_snapshot_is_logged_once_and_the_feed_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0

    async def status() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise RuntimeError("broken on purpose")
        return {"n": calls}

    feed = LiveFeed(status, period_s=0.01)
    assert calls == 0  # nothing computed before a page opens
    assert feed.admit()
    stream = feed.stream()
    with caplog.at_level(logging.ERROR):
        assert await anext(stream) == b"retry: 2000\n\n"
        event = await anext(stream)
    assert event.startswith(b"event: status\ndata: ")
    assert json.loads(event.split(b"data: ", 1)[1]) == {"n": 4}
    assert caplog.text.count("the status snapshot failed") == 1
    await stream.aclose()
    feed.leave()
    assert feed.clients == 0
    await async_wait_until(lambda: feed._producer is None, 5, "the producer stopped")
    stopped_at = calls
    feed.close()
    assert not feed.admit()  # closed: no new page
    assert calls == stopped_at
