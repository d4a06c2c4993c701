"""The streams the forwarder delivers: readings, unit records and deviations, each a numbered
sequence of stored items in the buffer, seen through one interface so one delivery loop serves
them all (collector.delivery.forwarder).

They differ only in where their rows live and in a few parameters:

- **readings**: batches of a poll's readings; the deletes of delivered ranges wait to ride
  with the buffer writer's next commit; a batch can be split in the buffer and a reading the
  broker can never take moved to the quarantine table. Their lanes and window are what
  /status shows.
- **unit records**: one row per record, few and small (one per unit per operation): one
  message in flight at a time; a record the broker refuses stays and is retried (there is no
  quarantine for them); a record whose delete failed is not sent again.
- **deviations** (recorded on the line PC, POST /deviations): like unit records, from a table
  and seq of their own, on ``.../deviations``.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from collector.buffer import AsyncOutbox, Batch
from collector.delivery.publisher import MqttStatus
from collector.delivery.sentmarks import SentMarks
from contract.encode import with_seq

# Unit records per message: they are few and small (one per unit per operation).
MAX_UNITS_PER_MESSAGE = 50


class Stream(Protocol):
    #: For log lines: "readings", "unit records".
    name: str
    topic: str
    #: The message's array key: ``polls`` or ``units`` (docs/messages.md).
    key: bytes
    #: Messages in flight at most.
    window: int
    #: Items per message at most.
    max_items: int
    #: Whether its lanes and in-flight count are what /status shows.
    shown: bool
    #: Set when rows were appended.
    appended: asyncio.Event
    #: mqtt.delivery store: what the broker took and the store has not acknowledged yet;
    #: never taken while marked.
    marks: SentMarks

    @property
    def depth(self) -> int:
        """Items buffered."""
        ...

    async def newest_seq(self) -> int: ...

    async def take(
        self, after_seq: int, max_items: int, max_bytes: int, up_to: int | None
    ) -> list[Batch]:
        """The oldest batches after ``after_seq`` (up to ``up_to``), within the budgets but
        always at least one; delivered ones whose delete is pending are never taken."""
        ...

    async def delivered(self, first_seq: int, last_seq: int) -> None: ...

    async def split(self, first_seq: int, last_seq: int, per_batch: int) -> bool: ...

    async def quarantine(self, last_seq: int, reason: str) -> int:
        """Move a single item aside; how many moved (0: it stays and is retried)."""
        ...

    def deletes_waiting_s(self) -> float | None:
        """How long the oldest delivered range has waited for its delete (None: none)."""
        ...

    async def flush_deletes(self) -> None: ...

    def count_delivered(self, status: MqttStatus, items: int) -> None: ...

    async def store_acked(self, ranges: list[tuple[int, int]]) -> None:
        """Delete the rows of these seq ranges: the store has committed them."""
        ...

    def last_assigned(self) -> int:
        """The highest seq this outbox ever assigned in this stream."""
        ...


class ReadingsStream:
    name = "readings"
    key = b"polls"
    shown = True

    def __init__(self, outbox: AsyncOutbox, topic: str, window: int, max_items: int) -> None:
        self._outbox = outbox
        self.topic = topic
        self.window = window
        self.max_items = max_items
        self.appended = outbox.appended
        self.marks = SentMarks()

    @property
    def depth(self) -> int:
        return self._outbox.outbox.depth

    async def newest_seq(self) -> int:
        return (await self._outbox.stats()).last_seq

    async def take(
        self, after_seq: int, max_items: int, max_bytes: int, up_to: int | None
    ) -> list[Batch]:
        skip = self.marks.holds if len(self.marks) else None
        return await self._outbox.take(after_seq, max_items, max_bytes, up_to, skip)

    async def delivered(self, first_seq: int, last_seq: int) -> None:
        self._outbox.delivered(first_seq, last_seq)  # deleted with the writer's next commit

    async def split(self, first_seq: int, last_seq: int, per_batch: int) -> bool:
        return await self._outbox.split(first_seq, last_seq, per_batch)

    async def quarantine(self, last_seq: int, reason: str) -> int:
        return await self._outbox.quarantine(last_seq, reason)

    def deletes_waiting_s(self) -> float | None:
        return self._outbox.acks_waiting_s

    async def flush_deletes(self) -> None:
        await self._outbox.flush_acks()

    def count_delivered(self, status: MqttStatus, items: int) -> None:
        status.messages_accepted += 1
        status.readings_delivered += items

    async def store_acked(self, ranges: list[tuple[int, int]]) -> None:
        for first, last in ranges:
            self._outbox.delivered(first, last)  # deleted with the writer's next commit

    def last_assigned(self) -> int:
        return self._outbox.outbox.last_seq


class UnitsStream:
    name = "unit records"
    key = b"units"
    shown = False
    window = 1
    max_items = MAX_UNITS_PER_MESSAGE

    def __init__(self, outbox: AsyncOutbox, topic: str) -> None:
        self._outbox = outbox
        self.topic = topic
        self.appended = outbox.units_appended
        self.marks = SentMarks()
        # Delivered, even if their delete failed: never sent again (until a restart).
        self._delivered_through = 0

    @property
    def depth(self) -> int:
        return self._outbox.outbox.units_depth

    async def newest_seq(self) -> int:
        return self.last_assigned()

    async def _rows(self, after_seq: int, max_items: int) -> list[tuple[int, bytes]]:
        return await self._outbox.take_units(after_seq, max_items)

    async def _delete(self, first_seq: int, last_seq: int) -> None:
        await self._outbox.ack_units(first_seq, last_seq)

    async def take(
        self, after_seq: int, max_items: int, max_bytes: int, up_to: int | None
    ) -> list[Batch]:
        after = max(after_seq, self._delivered_through)
        while True:
            rows = await self._rows(after, max_items)
            # Each record is a batch of one, numbered as it goes out (stored without its
            # seq); its read time does not matter here (0.0): no unsent age is shown.
            kept: list[Batch] = []
            for seq, body in rows:
                if up_to is not None and seq > up_to:
                    break
                if self.marks.holds(seq):
                    if kept:
                        break
                    continue
                kept.append(Batch(seq, seq, 0.0, with_seq([(seq, body)])))
            if kept or not rows or (up_to is not None and rows[-1][0] >= up_to):
                return kept
            after = rows[-1][0]  # all sent and waiting for the store: look further

    async def delivered(self, first_seq: int, last_seq: int) -> None:
        self._delivered_through = max(self._delivered_through, last_seq)
        await self._delete(first_seq, last_seq)

    async def split(self, first_seq: int, last_seq: int, per_batch: int) -> bool:
        return True  # a record is a batch of one already

    async def quarantine(self, last_seq: int, reason: str) -> int:
        return 0

    def deletes_waiting_s(self) -> float | None:
        return None

    async def flush_deletes(self) -> None:
        return

    def count_delivered(self, status: MqttStatus, items: int) -> None:
        status.units_delivered += items

    async def store_acked(self, ranges: list[tuple[int, int]]) -> None:
        for first, last in ranges:
            await self._delete(first, last)

    def last_assigned(self) -> int:
        return self._outbox.outbox.last_unit_seq


class DeviationsStream(UnitsStream):
    """Deviations recorded on the line PC (contract.deviations): delivered exactly like unit
    records (one row per item, one message in flight), from their own table and seq, on
    their own topic."""

    name = "deviations"
    key = b"deviations"

    def __init__(self, outbox: AsyncOutbox, topic: str) -> None:
        super().__init__(outbox, topic)
        self.appended = outbox.deviations_appended

    @property
    def depth(self) -> int:
        return self._outbox.outbox.deviations_depth

    async def _rows(self, after_seq: int, max_items: int) -> list[tuple[int, bytes]]:
        return await self._outbox.take_deviations(after_seq, max_items)

    async def _delete(self, first_seq: int, last_seq: int) -> None:
        await self._outbox.ack_deviations(first_seq, last_seq)

    def count_delivered(self, status: MqttStatus, items: int) -> None:
        status.deviations_delivered += items

    def last_assigned(self) -> int:
        return self._outbox.outbox.last_deviation_seq
