"""Retention: delete raw readings older than a cutoff; unit records and characteristics stay.

Readings have no index on time (docs/store.md): within a stream, seq grows with the time a
value was read, so the boundary is found by a binary search over the seq key (a few point
look-ups), and rows are deleted in seq ranges of ``chunk`` rows, one short transaction each,
so ingest is never blocked for long. The ``ts < cutoff`` condition stays in every delete: a
reading whose clock went backwards is kept rather than deleted early.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from store.schema import readings, streams


def _first_at_or_after(
    conn: sa.Connection, stream: int, low: int, high: int, cutoff: datetime
) -> int:
    """The lowest seq in [low, high + 1] whose next stored reading is not older than cutoff."""
    r = readings.c
    while low <= high:
        mid = (low + high) // 2
        row = conn.execute(
            sa.select(r.seq, r.ts).where(r.stream == stream, r.seq >= mid).order_by(r.seq).limit(1)
        ).first()
        if row is None or row.ts >= cutoff:
            high = mid - 1
        else:
            low = row.seq + 1
    return low


def prune_readings(engine: sa.Engine, cutoff: datetime, chunk: int = 50_000) -> int:
    """Delete readings older than ``cutoff``; the number deleted."""
    deleted = 0
    with engine.connect() as conn:
        todo = conn.execute(
            sa.select(streams.c.id, streams.c.low_seq, streams.c.high_seq).where(
                streams.c.kind == "readings", streams.c.low_seq.is_not(None)
            )
        ).all()
    for stream, low, high in todo:
        with engine.connect() as conn:
            first = conn.execute(
                sa.select(sa.func.min(readings.c.seq)).where(readings.c.stream == stream)
            ).scalar()
            if first is None:
                continue
            bound = _first_at_or_after(conn, stream, max(first, low), high, cutoff)
        start = first
        while start < bound:
            end = min(start + chunk, bound)
            with engine.begin() as conn:
                result = conn.execute(
                    sa.delete(readings).where(
                        readings.c.stream == stream,
                        readings.c.seq >= start,
                        readings.c.seq < end,
                        readings.c.ts < cutoff,
                    )
                )
                deleted += max(result.rowcount, 0)
            start = end
    return deleted
