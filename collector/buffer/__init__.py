"""The buffer: a SQLite outbox between the pollers and the forwarder. append -> take -> ack;
nothing leaves before the broker accepted it.

The package, by role (data flows top to bottom):

- :mod:`~collector.buffer.writer`: the writer stage. Numbers the pollers' readings (``seq``),
  encodes each poll (cut into parts no larger than a message), commits many polls per
  transaction together with the station context's changes.
- :mod:`~collector.buffer.handover`: :class:`AsyncOutbox`, the outbox driven from asyncio
  (writes on one thread, reads on the loop, deletes of delivered readings batched).
- :mod:`~collector.buffer.store`: :class:`Outbox`, the transactions themselves (append with
  the cap, take, ack, split, quarantine, unit records, station state).
- :mod:`~collector.buffer.schema`: the tables, the batch a row holds, the seq hint file.
- :mod:`~collector.buffer.migrations`: conversions of files written by older versions.
- :mod:`~collector.buffer.recovery`: a corrupt file moved aside at start-up, seq continuing.
- :mod:`~collector.buffer.inspection`: read-only `collector buffer stats | export`.

docs/guarantees.md says what this promises; docs/performance.md why it is shaped this way.
"""

from collector.buffer.handover import AsyncOutbox
from collector.buffer.inspection import EXPORT_TABLES, export_rows, inspect_stats
from collector.buffer.recovery import SEQ_JUMP_AFTER_RESET, open_outbox
from collector.buffer.schema import (
    Batch,
    BufferReset,
    BufferStats,
    age_seconds,
    batches_table,
)
from collector.buffer.store import Outbox, take_batches
from collector.buffer.writer import BufferWriter, make_batch, make_batches

__all__ = [
    "EXPORT_TABLES",
    "SEQ_JUMP_AFTER_RESET",
    "AsyncOutbox",
    "Batch",
    "BufferReset",
    "BufferStats",
    "BufferWriter",
    "Outbox",
    "age_seconds",
    "batches_table",
    "export_rows",
    "inspect_stats",
    "make_batch",
    "make_batches",
    "open_outbox",
    "take_batches",
]
