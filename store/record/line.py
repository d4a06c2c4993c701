"""Deviations recorded on the line PC (``.../deviations``, contract.deviations) into the
record's deviations table, like the office's (``POST /runs/{id}/deviations``) but written by
the collector: ``person`` is ``line PC <collector>``, ``who`` what the form said (default: the
station), and the row keeps its dedupe key (collector, outbox, seq), unique, so a message
delivered twice stores its deviations once.

Which run: the latest run (by its opening) whose protocol's latest version selects the
deviation: every serial it names (or, with none, any) matches the run's ``serial_pattern``,
and the time it was recorded is within the run's ``start``/``end`` when given. None matches
(no run open yet, say): the deviation is kept without a run (``run_id`` null). It shows in
the genealogy of the units it names, not in any run's report.

After each message the stream's state is what the deviations table holds for its (collector,
outbox): the store acknowledges exactly that (store.acks), and the collector deletes it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa

from contract.deviations import FlatDeviation, decode_deviations
from contract.fields import ContractError
from store.gaps import StreamState, merge
from store.quarantine import Kept, collector_of
from store.record.audit import append, lock, now_text
from store.record.runs import protocol_of
from store.record.schema import deviations, runs, versions
from store.schema import quarantine

log = logging.getLogger(__name__)

#: The stream's name in acks and gap notes (collector.delivery.storeack.STREAMS).
STREAM = "deviations"


@dataclass(slots=True)
class LineResult:
    received: int = 0
    inserted: int = 0
    #: (kind, reason) of each message kept in ``quarantine``.
    quarantined: list[tuple[str, str]] = field(default_factory=list)
    #: The same with the topic's collector, for the log (store.quarantine.QuarantineLog).
    kept: list[Kept] = field(default_factory=list)
    #: (collector, outbox, "deviations") -> (topic base, what the table holds).
    streams: dict[tuple[str, str, str], tuple[str, StreamState]] = field(default_factory=dict)


def ingest(
    engine: sa.Engine, messages: Sequence[tuple[str, bytes]], quarantine_max_bytes: int = 65_536
) -> LineResult:
    """Store the deviations of these ``(topic, payload)`` messages, each message in one
    transaction; a message that breaks the contract is quarantined (and acknowledged)."""
    result = LineResult()
    for topic, payload in messages:
        try:
            found = decode_deviations(payload)
            _same_collector(topic, found)
        except ContractError as exc:
            _quarantine(
                engine, topic, payload, kind=exc.kind, reason=str(exc), limit=quarantine_max_bytes
            )
            result.quarantined.append((exc.kind, str(exc)))
            result.kept.append(Kept(collector_of(topic), exc.kind, str(exc)))
            continue
        base = topic.rsplit("/", 1)[0]
        with engine.begin() as conn:
            lock(conn)
            for flat in found:
                result.received += 1
                result.inserted += _store(conn, flat)
            for key in {(f.collector, f.outbox, STREAM) for f in found}:
                result.streams[key] = (base, _state(conn, key[0], key[1]))
    return result


def _same_collector(topic: str, found: list[FlatDeviation]) -> None:
    """Like store.ingest: the payload's collector is the topic's (the broker's ACL checked
    the topic, not the payload)."""
    levels = topic.split("/")
    topic_id = levels[-2] if len(levels) >= 2 else ""
    for flat in found:
        if flat.collector != topic_id:
            raise ContractError("collector", f"{flat.collector[:64]!r} published under the "
                                f"topic of collector {topic_id[:64]!r}", "identity")  # fmt: skip


def _store(conn: sa.Connection, flat: FlatDeviation) -> int:
    """1 when the deviation is new, 0 when its (collector, outbox, seq) is stored already."""
    key = (flat.collector, flat.outbox, flat.seq)
    there = conn.execute(
        sa.select(deviations.c.audit_id).where(
            deviations.c.collector == key[0],
            deviations.c.outbox == key[1],
            deviations.c.seq == key[2],
        )
    ).first()
    if there is not None:
        return 0
    d = flat.deviation
    recorded = datetime.fromtimestamp(d.ts, UTC)
    window = None if d.window is None else tuple(datetime.fromtimestamp(t, UTC) for t in d.window)
    person = f"line PC {flat.collector}"
    at = now_text()
    row: dict[str, Any] = {
        "run_id": _run_for(conn, d.serials, recorded), "description": d.description,
        "severity": d.severity, "operation": d.operation, "station": d.station,
        "device": d.device, "serials": orjson.dumps(list(d.serials)).decode(),
        "window_start": None if window is None else now_text(window[0]),
        "window_end": None if window is None else now_text(window[1]),
        "action": d.action, "who": d.who or f"station {d.station}", "person": person,
        "at": at, "recorded_at": now_text(recorded), "collector": flat.collector,
        "outbox": flat.outbox, "seq": flat.seq,
    }  # fmt: skip
    append(conn, actor=person, function=None, action="deviation.line", table=deviations,
           row=row, at=at)  # fmt: skip
    return 1


def _run_for(conn: sa.Connection, serials: Sequence[str], recorded: datetime) -> int | None:
    """The latest run whose protocol's latest version selects the deviation (module doc)."""
    latest = (
        sa.select(versions.c.run_id, sa.func.max(versions.c.version).label("v"))
        .group_by(versions.c.run_id)
        .subquery()
    )
    rows = conn.execute(
        sa.select(runs.c.audit_id, versions.c.text)
        .join(versions, versions.c.run_id == runs.c.audit_id)
        .join(latest, (latest.c.run_id == versions.c.run_id) & (latest.c.v == versions.c.version))
        .order_by(runs.c.audit_id.desc())
    ).all()
    for run_id, text in rows:
        scope = protocol_of(text).run
        if scope.start is not None and recorded < scope.start:
            continue
        if scope.end is not None and recorded >= scope.end:
            continue
        if scope.serial_pattern is not None and serials:
            pattern = re.compile(scope.serial_pattern)
            if not all(pattern.fullmatch(s) for s in serials):
                continue
        return int(run_id)
    return None


def _state(conn: sa.Connection, collector: str, outbox: str) -> StreamState:
    seqs = conn.execute(
        sa.select(deviations.c.seq).where(
            deviations.c.collector == collector, deviations.c.outbox == outbox
        )
    ).scalars()
    now = datetime.now(UTC)
    return merge(StreamState(None, None), [(s, s) for s in seqs], now)


def _quarantine(
    engine: sa.Engine, topic: str, payload: bytes, *, kind: str, reason: str, limit: int
) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.insert(quarantine).values(
                received_at=datetime.now(UTC), topic=topic, kind=kind, reason=reason,
                payload=payload[:limit], payload_bytes=len(payload),
            )
        )  # fmt: skip
