"""Read-only inspection of a buffer file for `collector buffer stats | export`.

Through sqlite3 directly (a WAL reader next to the running service never blocks it), never
creating or changing anything.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from collector.buffer.schema import COUNT_SQL, DROPPED_KEY, QUARANTINED_KEY, epoch
from common.errors import StartupError
from contract.decode import ContextBook, ContractError, MetaBook, decode_readings
from contract.encode import DeviceMeta, context_message, envelope, ts_text, with_seq

EXPORT_TABLES = ("readings", "units", "quarantine")


def _open_read_only(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise StartupError(f"buffer {path}: no such file")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        if "batches" not in tables and "readings" in tables:
            raise StartupError(
                f"buffer {path}: written by an older collector (one row per reading); the "
                "collector converts it when it next starts"
            )
        db.execute("SELECT 1 FROM batches LIMIT 1")
    except sqlite3.Error as exc:
        raise StartupError(f"buffer {path}: cannot read: {exc}") from exc
    return db


def inspect_stats(path: Path) -> dict[str, Any]:
    """What is in a buffer file: counts, seq and time ranges, drops, size on disk."""
    with contextlib.closing(_open_read_only(path)) as db:

        def one(sql: str) -> Any:
            return db.execute(sql).fetchone()

        def meta(key: str) -> int:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return int(row[0]) if row else 0

        count, first, last, oldest, newest = one(
            f"SELECT coalesce(sum({COUNT_SQL}), 0), min(first_seq), max(last_seq), min(ts), "  # noqa: S608
            "max(ts) FROM batches"
        )
        sequence = dict(db.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
        size = sum(
            Path(f"{path}{suffix}").stat().st_size
            for suffix in ("", "-wal")
            if Path(f"{path}{suffix}").exists()
        )
        return {
            "path": str(path),
            "bytes_on_disk": size,
            "readings": {
                "unsent": count,
                "first_seq": first,
                "last_seq": last,
                "oldest_ts": None if oldest is None else ts_text(oldest),
                "newest_ts": None if newest is None else ts_text(newest),
                "last_seq_ever": sequence.get("batches", 0),
            },
            "units": {
                "unsent": one("SELECT count(*) FROM units")[0],
                "last_seq_ever": sequence.get("units", 0),
            },
            "quarantine": one("SELECT count(*) FROM quarantine")[0],
            "dropped_total": meta(DROPPED_KEY),
            "quarantined_total": meta(QUARANTINED_KEY),
            "stations_with_state": one("SELECT count(*) FROM stations")[0],
            "tag_metadata_versions": len(_stored_metas(db)),
        }


def _stored_metas(db: sqlite3.Connection) -> list[tuple[str, bytes]]:
    """(device, body) of every kept tag-metadata version; none in a file older than them."""
    try:
        return [(d, bytes(b)) for d, b in db.execute("SELECT device, body FROM metas")]
    except sqlite3.OperationalError:  # no such table: the collector adds it when it starts
        return []


def meta_book(db: sqlite3.Connection) -> MetaBook:
    """The kept versions, for reading the stored positional polls (collector ``buffer``)."""
    book = MetaBook()
    for device, body in _stored_metas(db):
        book.add(DeviceMeta.from_body(device, body).message(_COLLECTOR))
    return book


def context_book(db: sqlite3.Connection) -> ContextBook:
    """The kept unit-context versions, for reading the stored polls' ``ctx``."""
    book = ContextBook()
    try:
        rows = list(db.execute("SELECT ctx, body FROM contexts"))
    except sqlite3.OperationalError:  # no such table: a file older than schema 3
        rows = []
    for ctx, body in rows:
        book.add(context_message(_COLLECTOR, ctx, bytes(body)))
    return book


# A batch's readings were read within one poll: a batch older than ``since`` by more than this
# holds none read at or after it.
_BATCH_SPAN_S = 3600.0


def export_rows(path: Path, table: str, since: float | None = None) -> Iterator[bytes]:
    """Each reading, unit record or quarantined reading of ``table`` (oldest first) as one
    JSON object with its ``seq`` (and, for the quarantine, why), read at or after ``since``
    (epoch seconds)."""
    if table not in EXPORT_TABLES:
        raise ValueError(f"table must be one of {', '.join(EXPORT_TABLES)}")
    floor = since if since is not None else float("-inf")
    with contextlib.closing(_open_read_only(path)) as db:
        metas, contexts = meta_book(db), context_book(db)
        if table == "units":
            for seq, body in db.execute(
                "SELECT seq, body FROM units WHERE ts >= ? ORDER BY seq", (floor,)
            ):
                yield with_seq([(seq, bytes(body))])
            return
        if table == "quarantine":
            query = "SELECT ts, body, reason FROM quarantine WHERE ts >= ? ORDER BY seq"
        else:
            query = "SELECT ts, body, NULL FROM batches WHERE ts >= ? ORDER BY last_seq"
        for ts, body, reason in db.execute(query, (floor - _BATCH_SPAN_S,)):
            for item in readings_of(bytes(body), metas, contexts):
                if ts < floor and epoch(item["ts"]) < floor:
                    continue
                if reason is not None:
                    item["quarantine_reason"] = reason
                yield orjson.dumps(item)


# The fields of an exported reading, in this order (one object per reading, as schema 1 had).
_EXPORTED = (
    "seq",
    "ts",
    "station",
    "device",
    "tag",
    "value",
    "quality",
    "error",
    "unit_serial",
    "operation",
    "attempt",
)


_COLLECTOR = "buffer"


def readings_of(
    body: bytes, metas: MetaBook | None = None, contexts: ContextBook | None = None
) -> list[dict[str, Any]]:
    """A stored body's poll objects as one object per reading, read with the reference
    decoder (contract.decode) and the buffer's kept tag metadata and unit contexts. A
    positional poll whose version is no longer kept (a quarantined one, kept longer than its
    metadata) names its tags by position: ``"#3"`` is the tag at index 3 of that version's
    order; a context no longer kept shows as ``"station": "ctx:<id>"``."""
    message = envelope(_COLLECTOR, "0" * 16, body)
    for _ in range(3):  # at most: the metadata, then the contexts, named by what is known
        try:
            flat = decode_readings(message, metas, contexts)
            break
        except ContractError as exc:
            if exc.kind == "unknown_meta":
                metas = _by_position(body, metas)
            elif exc.kind == "unknown_context":
                contexts = _by_id(exc.missing, contexts)
            else:
                raise
    else:  # pragma: no cover - both kinds are resolved above
        flat = decode_readings(message, metas, contexts)
    return [{name: getattr(r, name) for name in _EXPORTED} for r in flat]


def _by_id(missing: tuple[tuple[str, str, str], ...], contexts: ContextBook | None) -> ContextBook:
    """``contexts`` plus, for each version it lacks, a stand-in naming it (station
    ``ctx:<id>``)."""
    book = contexts.copy() if contexts is not None else ContextBook()
    for _collector, _, ctx in missing:
        book.stand_in(_COLLECTOR, ctx, {"station": f"ctx:{ctx}"})
    return book


def _by_position(body: bytes, metas: MetaBook | None) -> MetaBook:
    """``metas`` plus, for each version it lacks, one whose tags are named by position (a
    poll of schema 3 by position, which names its device by that version, then shows device
    ``meta:<id>``)."""
    book = metas.copy() if metas is not None else MetaBook()
    sizes: dict[tuple[str | None, str], int] = {}
    for poll in orjson.loads(b"[" + body + b"]"):
        values = poll.get("v", poll.get("value_list"))
        if values is not None and "tags" not in poll:  # by position
            key = (poll.get("device"), poll["meta"])
            listed = poll.get("tag_list")
            if listed is not None:
                size = max(listed, default=-1) + 1
            else:
                size = poll.get("tag_index", 0) + len(values)
            sizes[key] = max(sizes.get(key, 0), size)
    for (named, meta), size in sizes.items():
        if named is None:
            if book.device(_COLLECTOR, meta) is not None:
                continue
            device, by_meta = f"meta:{meta}", True
        elif book.order(_COLLECTOR, named, meta) is None:
            device, by_meta = named, False
        else:
            continue
        book.stand_in(_COLLECTOR, device, meta, [f"#{i}" for i in range(size)], by_meta)
    return book
