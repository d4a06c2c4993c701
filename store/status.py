"""What a store process says about itself: its counters (:class:`Stats`), the view of the
service that /health, /metrics and the API read (:class:`ServiceView`, so they need not import
the service that serves them), and the gap audit, read from the database (shared by every
store process)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa

from store.gaps import Hole as AuditHole
from store.gaps import StreamState
from store.schema import gaps, parked, quarantine, seq_notes, streams

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
    #: Deviations recorded on the line PC (``.../deviations``, store.record.line).
    deviations_received: int = 0
    deviations_inserted: int = 0
    quarantined: Counter[str] = field(default_factory=Counter)  # by kind
    parked: int = 0  # messages parked until their meta version arrives
    unparked: int = 0  # parked messages ingested since
    parked_dropped: int = 0  # parked messages dropped into quarantine at a bound (store.parking)
    #: Quarantined messages pruned at a bound (store.quarantine), by kind; their payload bytes,
    #: the bound(s) of the last prune, and when the first and the last prune were (time.time()).
    quarantine_pruned: Counter[str] = field(default_factory=Counter)
    quarantine_pruned_bytes: int = 0
    quarantine_pruned_why: str = ""
    quarantine_pruned_first: float | None = None
    quarantine_pruned_last: float | None = None
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


Range = tuple[int, int]
Hole = tuple[int, int, datetime]


@dataclass(frozen=True, slots=True)
class StreamGaps:
    """A stream's gap audit, its holes in three kinds (docs/store.md): ``never_assigned``
    (the collector announced it never gave those seqs out: no error), and ``missing``, the
    rest, each range either **pending** (asked for again, still recoverable) or **lost**: the
    collector said it no longer holds it (``unavailable``), or it stayed open longer than
    ``gaps.alert_after_s`` without an answer."""

    collector: str
    outbox: str
    kind: str
    low: int | None
    high: int | None
    high_water: int | None
    received: int
    #: (first, last, opened_at) of each missing range (never-assigned seqs taken out),
    #: lowest first.
    missing: list[Hole]
    #: The parts of the holes the collector announced it never assigned.
    never_assigned: list[Range] = field(default_factory=list)
    #: The parts of ``missing`` the collector said it no longer holds.
    unavailable: list[Range] = field(default_factory=list)

    @property
    def missing_count(self) -> int:
        return sum(last - first + 1 for first, last, _ in self.missing)

    @property
    def never_assigned_count(self) -> int:
        return sum(b - a + 1 for a, b in self.never_assigned)

    def lost(self, alert_after_s: float, now: datetime) -> list[Hole]:
        """The missing ranges no longer recoverable: said unavailable, or never answered."""
        out = []
        for first, last, opened in self.missing:
            gone = any(a <= last and first <= b for a, b in self.unavailable)
            if gone or (now - opened).total_seconds() > alert_after_s:
                out.append((first, last, opened))
        return out

    def as_dict(self, now: datetime | None = None, alert_after_s: float = 600.0) -> dict[str, Any]:
        now = now or datetime.now(UTC)
        lost = self.lost(alert_after_s, now)
        return {
            "collector": self.collector,
            "outbox": self.outbox,
            "kind": self.kind,
            "low_seq": self.low,
            "high_seq": self.high,
            "high_water": self.high_water,
            "received": self.received,
            "missing_seqs": self.missing_count,
            "lost_seqs": sum(b - a + 1 for a, b, _ in lost),
            "never_assigned_seqs": self.never_assigned_count,
            "missing": [
                {
                    "first": a,
                    "last": b,
                    "age_s": round((now - opened).total_seconds(), 1),
                    "state": "missing" if (a, b, opened) in lost else "pending",
                }
                for a, b, opened in self.missing
            ],
            "never_assigned": [{"first": a, "last": b} for a, b in self.never_assigned],
            "unavailable": [{"first": a, "last": b} for a, b in self.unavailable],
        }


def _split(holes: list[Hole], cut: list[Range]) -> tuple[list[Hole], list[Range]]:
    """(the parts of ``holes`` outside ``cut``, the parts inside it)."""
    outside: list[Hole] = []
    inside: list[Range] = []
    for first, last, opened in holes:
        pieces = [(first, last)]
        for a, b in cut:
            nxt = []
            for lo, hi in pieces:
                if b < lo or a > hi:
                    nxt.append((lo, hi))
                    continue
                inside.append((max(lo, a), min(hi, b)))
                if lo < a:
                    nxt.append((lo, a - 1))
                if b < hi:
                    nxt.append((b + 1, hi))
            pieces = nxt
        outside.extend((lo, hi, opened) for lo, hi in pieces)
    return outside, sorted(inside)


def gap_report(engine: sa.Engine) -> list[StreamGaps]:
    """Every stream with its contiguous high-water mark and missing seq ranges."""
    with engine.connect() as conn:
        holes: dict[int, list[Hole]] = {}
        for stream, first, last, opened in conn.execute(
            sa.select(gaps.c.stream, gaps.c.first_seq, gaps.c.last_seq, gaps.c.opened_at).order_by(
                gaps.c.stream, gaps.c.first_seq
            )
        ):
            holes.setdefault(stream, []).append((first, last, opened))
        notes: dict[tuple[int, str], list[Range]] = {}
        for stream, first, last, said in conn.execute(
            sa.select(
                seq_notes.c.stream, seq_notes.c.first_seq, seq_notes.c.last_seq, seq_notes.c.kind
            )
        ):
            kind = "unavailable" if said == "dropped" else said
            notes.setdefault((stream, kind), []).append((first, last))
        out = []
        for row in conn.execute(
            sa.select(
                streams.c.id, streams.c.collector, streams.c.outbox, streams.c.kind,
                streams.c.low_seq, streams.c.high_seq, streams.c.received,
            ).order_by(streams.c.collector, streams.c.outbox, streams.c.kind)
        ):  # fmt: skip
            raw = holes.get(row.id, [])
            missing, never = _split(raw, notes.get((row.id, "never_assigned"), []))
            _, unavailable = _split(missing, notes.get((row.id, "unavailable"), []))
            high_water = None if row.low_seq is None else (
                raw[0][0] - 1 if raw else row.high_seq
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
                    never,
                    unavailable,
                )
            )
    return out


def stream_states(
    engine: sa.Engine, keys: Iterable[tuple[str, str, str]]
) -> dict[tuple[str, str, str], StreamState]:
    """The gap audit's state of these streams ((collector, outbox, kind)), as a committed
    batch leaves it (store.acks): those the database has."""
    wanted = set(keys)
    out: dict[tuple[str, str, str], StreamState] = {}
    with engine.connect() as conn:
        for row in conn.execute(
            sa.select(streams.c.id, streams.c.collector, streams.c.outbox, streams.c.kind,
                      streams.c.low_seq, streams.c.high_seq)
            .where(streams.c.collector.in_({c for c, _, _ in wanted}))
        ):  # fmt: skip
            key = (row.collector, row.outbox, row.kind)
            if key not in wanted:
                continue
            holes = conn.execute(
                sa.select(gaps.c.first_seq, gaps.c.last_seq, gaps.c.opened_at)
                .where(gaps.c.stream == row.id)
                .order_by(gaps.c.first_seq)
            )
            out[key] = StreamState(row.low_seq, row.high_seq, tuple(AuditHole(*h) for h in holes))
    return out


def old_gaps(report: list[StreamGaps], alert_after_s: float, now: datetime) -> list[str]:
    """One line per missing range no longer recoverable (for /health): the collector said it
    does not hold it, or it stayed open longer than ``alert_after_s``. Never-assigned seqs
    and ranges still asked for (pending) are no problem."""
    out = []
    for stream in report:
        for first, last, opened in stream.lost(alert_after_s, now):
            age = (now - opened).total_seconds()
            out.append(
                f"{stream.collector}/{stream.outbox or '-'}/{stream.kind}: seq {first}-{last}"
                f" missing for {age:.0f} s"
            )
    return out


def parked_size(engine: sa.Engine) -> tuple[int, int]:
    """Readings messages parked now and their payload bytes (every process)."""
    with engine.connect() as conn:
        count, size = conn.execute(
            sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(quarantine.c.payload_bytes), 0))
            .select_from(parked)
            .join(quarantine, quarantine.c.id == parked.c.quarantine_id)
        ).one()
    return int(count), int(size)
