"""What a store process says about itself: its counters (:class:`Stats`), the view of the
service that /health, /metrics and the API read (:class:`ServiceView`, so they need not import
the service that serves them), and the gap audit, read from the database (shared by every
store process)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa

from store.schema import gaps, parked, streams

if TYPE_CHECKING:
    from store.config import StoreConfig


@dataclass
class Stats:
    """Counters and states that /health and /metrics show (this process's)."""

    messages: Counter[str] = field(default_factory=Counter)  # by topic kind
    readings_received: int = 0
    readings_inserted: int = 0
    units_received: int = 0
    units_inserted: int = 0
    quarantined: Counter[str] = field(default_factory=Counter)  # by kind
    parked: int = 0  # messages parked until their meta version arrives
    unparked: int = 0  # parked messages ingested since
    batches: int = 0
    acked: int = 0
    last_commit: float | None = None
    batch_seconds: float = 0.0
    db_ok: bool = True
    db_error: str = ""
    db_reason: str = ""
    db_error_since: float | None = None
    db_errors: Counter[str] = field(default_factory=Counter)  # by reason
    mqtt_connected: bool = False
    mqtt_state: str = "not connected yet"
    pruned: int = 0
    queued: int = 0
    #: Store acknowledgements published to collectors (store.acks).
    acks_published: int = 0


class ServiceView(Protocol):
    """What the HTTP API and the metrics read of a running store (store.service.StoreService)."""

    config: StoreConfig
    engine: sa.Engine
    stats: Stats
    #: The HTTP server's connection figures, once it serves.
    http_stats: Callable[[], dict[str, int]] | None


@dataclass(frozen=True, slots=True)
class StreamGaps:
    collector: str
    outbox: str
    kind: str
    low: int | None
    high: int | None
    high_water: int | None
    received: int
    #: (first, last, opened_at) of each missing range, lowest first.
    missing: list[tuple[int, int, datetime]]

    @property
    def missing_count(self) -> int:
        return sum(last - first + 1 for first, last, _ in self.missing)

    def as_dict(self, now: datetime | None = None) -> dict[str, Any]:
        now = now or datetime.now(UTC)
        return {
            "collector": self.collector,
            "outbox": self.outbox,
            "kind": self.kind,
            "low_seq": self.low,
            "high_seq": self.high,
            "high_water": self.high_water,
            "received": self.received,
            "missing_seqs": self.missing_count,
            "missing": [
                {"first": a, "last": b, "age_s": round((now - opened).total_seconds(), 1)}
                for a, b, opened in self.missing
            ],
        }


def gap_report(engine: sa.Engine) -> list[StreamGaps]:
    """Every stream with its contiguous high-water mark and missing seq ranges."""
    with engine.connect() as conn:
        holes: dict[int, list[tuple[int, int, datetime]]] = {}
        for stream, first, last, opened in conn.execute(
            sa.select(gaps.c.stream, gaps.c.first_seq, gaps.c.last_seq, gaps.c.opened_at).order_by(
                gaps.c.stream, gaps.c.first_seq
            )
        ):
            holes.setdefault(stream, []).append((first, last, opened))
        out = []
        for row in conn.execute(
            sa.select(
                streams.c.id, streams.c.collector, streams.c.outbox, streams.c.kind,
                streams.c.low_seq, streams.c.high_seq, streams.c.received,
            ).order_by(streams.c.collector, streams.c.outbox, streams.c.kind)
        ):  # fmt: skip
            missing = holes.get(row.id, [])
            high_water = None if row.low_seq is None else (
                missing[0][0] - 1 if missing else row.high_seq
            )  # fmt: skip
            out.append(
                StreamGaps(
                    row.collector,
                    row.outbox,
                    row.kind,
                    row.low_seq,
                    row.high_seq,
                    high_water,
                    row.received,
                    missing,
                )
            )
    return out


def old_gaps(report: list[StreamGaps], alert_after_s: float, now: datetime) -> list[str]:
    """One line per missing range open longer than ``alert_after_s`` (for /health)."""
    out = []
    for stream in report:
        for first, last, opened in stream.missing:
            age = (now - opened).total_seconds()
            if age > alert_after_s:
                out.append(
                    f"{stream.collector}/{stream.outbox or '-'}/{stream.kind}: seq {first}-{last}"
                    f" missing for {age:.0f} s"
                )
    return out


def parked_count(engine: sa.Engine) -> int:
    """Readings messages parked now, waiting for their meta version (every process)."""
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(parked)).scalar_one())
