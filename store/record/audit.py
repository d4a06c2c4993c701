"""The audit trail: an append-only, hash-chained table of every write to the record.

Each entry: id (1, 2, 3 ... without holes), time, actor, function, action, content (canonical
JSON: the row the write created, under its table's name), the previous entry's hash and its
own: SHA-256 of the previous hash and the entry's canonical text. :func:`append` adds one in
the caller's transaction, after :func:`lock` (so two writers never both extend the same last
entry: SQLite takes its write lock at the first statement, PostgreSQL an advisory lock held to
the commit). :func:`verify` walks the chain and checks every record row against the entry
that created it: an UPDATE or DELETE behind the store's back, of the audit table or of a
record table, names the first entry that no longer matches.

What a chain cannot show on its own: the last entries deleted together with their rows. The
report and ``audit verify`` print the entry count and the last hash, so that a copy of them
kept elsewhere (a signed report, a mail) anchors the chain.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa

from store.record.schema import RECORD_TABLES, audit, record_lock

GENESIS = "0" * 64
#: pg_advisory_xact_lock key of the record's writers ("REC1" in ASCII).
PG_LOCK_KEY = 0x52454331


def canonical(value: Any) -> str:
    """The one JSON text of a value: keys sorted, no spaces, UTF-8 kept."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def now_text(now: datetime | None = None) -> str:
    """A time as the record stores it: ISO 8601 UTC with microseconds and ``Z``."""
    value = (now or datetime.now(UTC)).astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_text(entry: Mapping[str, Any]) -> str:
    """What an entry's hash covers besides the previous hash: every field but the hashes."""
    fields = ("id", "at", "actor", "function", "action", "content")
    return canonical({name: entry[name] for name in fields})


def entry_hash(prev_hash: str, entry: Mapping[str, Any]) -> str:
    return hashlib.sha256(f"{prev_hash}\n{entry_text(entry)}".encode()).hexdigest()


def lock(conn: sa.Connection) -> None:
    """Take the record's write lock for the rest of the transaction: call it first."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(PG_LOCK_KEY)))
    else:
        # A write as the first statement: SQLite takes the database's write lock now (or
        # waits for it), before this transaction has read anything.
        conn.execute(sa.delete(record_lock))


def row_dict(row: sa.Row[Any]) -> dict[str, Any]:
    """A record row as ``{"id": audit_id, column: value}`` with plain str keys (SQLAlchemy's
    are a str subclass that orjson refuses)."""
    out: dict[str, Any] = {"id": row._mapping["audit_id"]}
    out.update((str(k), v) for k, v in row._mapping.items() if k != "audit_id")
    return out


@dataclass(frozen=True, slots=True)
class Written:
    id: int
    at: str
    hash: str


def append(
    conn: sa.Connection,
    *,
    actor: str,
    function: str | None,
    action: str,
    table: sa.Table,
    row: Mapping[str, Any],
    at: str,
    extra: Mapping[str, Any] | None = None,
) -> Written:
    """Append the entry for a new ``row`` of ``table`` and insert the row under its id
    (``extra``: columns left out of the content, see schema.RECORD_TABLES). The caller holds
    :func:`lock` and commits both, or neither."""
    last = conn.execute(
        sa.select(audit.c.id, audit.c.hash).order_by(audit.c.id.desc()).limit(1)
    ).first()
    entry_id = 1 if last is None else int(last.id) + 1
    entry: dict[str, Any] = {
        "id": entry_id,
        "at": at,
        "actor": actor,
        "function": function,
        "action": action,
        "content": canonical({"table": table.name, "row": dict(row)}),
    }
    prev = GENESIS if last is None else last.hash
    digest = entry_hash(prev, entry)
    conn.execute(sa.insert(audit).values(**entry, prev_hash=prev, hash=digest))
    conn.execute(sa.insert(table).values(audit_id=entry_id, **row, **(extra or {})))
    return Written(entry_id, at, digest)


@dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    entries: int
    first_bad_id: int | None
    why: str
    last_hash: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "verified": self.ok,
            "entries": self.entries,
            "first_bad_id": self.first_bad_id,
            "why": self.why or None,
            "last_hash": self.last_hash,
        }


def verify(engine: sa.Engine | sa.Connection) -> Verification:
    """Walk the chain and the record rows; the first problem by entry id, with its reason."""
    if isinstance(engine, sa.Engine):
        with engine.connect() as conn:
            return _verify(conn)
    return _verify(engine)


def _verify(conn: sa.Connection) -> Verification:
    problems: list[tuple[int, str]] = []
    contents: dict[int, Any] = {}
    prev, expected, count = GENESIS, 1, 0
    for row in conn.execute(sa.select(audit).order_by(audit.c.id)).mappings():
        count += 1
        entry_id = row["id"]
        if entry_id != expected:
            missing = f"{expected}" if entry_id == expected + 1 else f"{expected}-{entry_id - 1}"
            problems.append((expected, f"entry {missing} is missing (deleted?)"))
        if row["prev_hash"] != prev:
            problems.append((entry_id, f"entry {entry_id}: its previous hash does not match "
                             "the entry before it"))  # fmt: skip
        if entry_hash(row["prev_hash"], dict(row)) != row["hash"]:
            problems.append((entry_id, f"entry {entry_id}: its content does not match its hash "
                             "(changed?)"))  # fmt: skip
        try:
            contents[entry_id] = orjson.loads(row["content"])
        except orjson.JSONDecodeError:
            problems.append((entry_id, f"entry {entry_id}: its content is not JSON"))
        prev, expected = row["hash"], entry_id + 1
        if problems:  # later entries are judged against a broken chain: stop at the first
            break
    problems.extend(_rows(conn, contents))
    if not problems:
        return Verification(True, count, None, "", prev)
    first_id, why = min(problems)
    return Verification(False, count, first_id, why, prev)


def _rows(conn: sa.Connection, contents: dict[int, Any]) -> list[tuple[int, str]]:
    """Each record row equals the row its entry wrote; each entry's row is there."""
    problems: list[tuple[int, str]] = []
    found: set[int] = set()
    for name, (table, left_out) in RECORD_TABLES.items():
        for row in conn.execute(sa.select(table)).mappings():
            key = row["audit_id"]
            found.add(key)
            content = contents.get(key)
            written = {k: v for k, v in row.items() if k != "audit_id" and k not in left_out}
            if not isinstance(content, dict) or content.get("table") != name:
                problems.append((key, f"{name} row {key} has no audit entry"))
            else:
                # A key absent from the content reads as null: a column added by a later
                # migration (null in rows written before it) was not in their content.
                changed = sorted(
                    k
                    for k in written.keys() | content["row"].keys()
                    if k not in written or written[k] != content["row"].get(k)
                )
                if changed:
                    problems.append((key, f"entry {key}: its {name} row differs in "
                                     f"{', '.join(changed)} (changed?)"))  # fmt: skip
            if "report" in left_out:
                signed = hashlib.sha256(row["report"].encode()).hexdigest()
                if signed != row["report_sha256"]:
                    problems.append((key, f"entry {key}: the signed report does not match its "
                                     "SHA-256 (changed?)"))  # fmt: skip
    for key, content in contents.items():
        if isinstance(content, dict) and content.get("table") in RECORD_TABLES and key not in found:
            problems.append((key, f"entry {key}: its {content['table']} row is missing "
                             "(deleted?)"))  # fmt: skip
    return problems
