"""When the buffer writer commits (issue 28): the polls under way with the first one queued go
in its commit (a phase group's polls: one transaction, one message), never later than the
commit interval; delivered ranges that touch are deleted as one. Real SQLite files."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from collector.buffer import AsyncOutbox, Batch, BufferWriter, Outbox
from collector.buffer.store import adjacent_merged
from contract.records import Context, Reading
from tests.helpers import async_wait_until

CONTEXT = Context(None, None, None)


class RecordingOutbox(AsyncOutbox):
    """A real outbox that notes the batches of every commit, as the writer hands them over."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, 10_000)
        self.commits: list[list[tuple[int, int]]] = []

    async def append(self, batches: Sequence[Batch], *args: Any, **kwargs: Any) -> int:
        if batches:
            self.commits.append([(b.first_seq, b.last_seq) for b in batches])
        return await super().append(batches, *args, **kwargs)


def submit(writer: BufferWriter, device: str) -> None:
    readings = [Reading(1_700_000_000.0, f"t{i}", i) for i in range(3)]
    writer.submit(device, readings, [CONTEXT] * 3)


async def test_the_polls_under_way_with_the_first_one_share_its_commit(tmp_path: Path) -> None:
    box = RecordingOutbox(tmp_path / "b.db")
    await box.open()
    writer = BufferWriter(box, commit_interval_s=30.0)
    running = asyncio.create_task(writer.run())
    writer.poll_started()
    writer.poll_started()
    submit(writer, "a")
    writer.poll_ended()
    for _ in range(20):  # the writer runs meanwhile: it waits for the poll still under way
        await asyncio.sleep(0)
    assert box.commits == []
    submit(writer, "b")
    writer.poll_ended()
    await async_wait_until(lambda: box.commits, what="the commit")
    assert box.commits == [[(1, 3), (4, 6)]]  # one transaction for both polls
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    assert box.outbox.depth == 6
    await box.close()


async def test_a_poll_that_does_not_end_holds_a_commit_back_by_the_interval_at_most(
    tmp_path: Path,
) -> None:
    box = RecordingOutbox(tmp_path / "b.db")
    await box.open()
    writer = BufferWriter(box, commit_interval_s=0.05)
    running = asyncio.create_task(writer.run())
    writer.poll_started()
    writer.poll_started()  # a device that takes its whole timeout
    submit(writer, "a")
    writer.poll_ended()
    await async_wait_until(lambda: box.commits, what="the first poll's commit")
    assert box.commits == [[(1, 3)]]
    submit(writer, "slow")
    writer.poll_ended()
    await async_wait_until(lambda: len(box.commits) == 2, what="the slow poll's commit")
    assert box.commits == [[(1, 3)], [(4, 6)]]
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    await box.close()


def test_delivered_ranges_that_touch_are_deleted_as_one(tmp_path: Path) -> None:
    assert adjacent_merged([(6, 9), (1, 5), (12, 12), (12, 12), (13, 20)]) == [
        (1, 9),
        (12, 12),
        (12, 20),
    ]
    box = Outbox(tmp_path / "b.db", 10_000)
    encoder_polls = [
        Batch(first, last, 1.0, b'{"seq":%d}' % first)
        for first, last in [(1, 5), (6, 9), (12, 14), (15, 15)]
    ]
    box.append(encoder_polls)
    assert box.depth == 13
    # Two messages back to back and one past a gap (seqs 10-11 were dropped), in any order.
    assert box.ack_ranges([(12, 15), (6, 9), (1, 5)]) == 13
    assert box.depth == 0
    assert box.take(0, 100, 1 << 20) == []
    box.close()


async def test_the_buffers_connections_keep_small_page_caches(tmp_path: Path) -> None:
    """They touch a few pages at the table's ends: SQLite's default 2 MB cache would only be
    resident memory."""
    from collector.buffer.handover import READER_CACHE_KB
    from collector.buffer.store import WRITER_CACHE_KB

    box = AsyncOutbox(tmp_path / "b.db", 10_000)
    await box.open()
    assert box._reader is not None
    assert box._reader.exec_driver_sql("PRAGMA cache_size").scalar() == -READER_CACHE_KB
    cache = box.outbox._conn.exec_driver_sql("PRAGMA cache_size").scalar()
    assert cache == -WRITER_CACHE_KB
    await box.close()
