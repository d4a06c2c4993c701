"""The tag-metadata versions kept in the buffer file (table ``metas``) on real SQLite files:
stored with the polls that use them, kept while readings of an old version are pending, pruned
once none is, added to a file of an older version; and what the buffer tools read with them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson

from collector.buffer import AsyncOutbox, BufferWriter, Outbox
from collector.buffer.inspection import export_rows, inspect_stats
from collector.buffer.schema import MetaUpdate
from contract.encode import DeviceMeta
from contract.records import Context, Reading

CONTEXT = Context(None, None, None)


def meta(*tags: str) -> DeviceMeta:
    return DeviceMeta(
        "dev",
        {
            t: {"unit": None, "type": "uint16", "scale": 1.0, "offset": 0.0, "station": None}
            for t in tags
        },
        tags,
    )


def stored(box: Outbox) -> set[tuple[str, str]]:
    return {(device, version) for device, version, _ in box.stored_metas()}


def submit(writer: BufferWriter, ts: float, *tags: str) -> None:
    writer.submit("dev", [Reading(ts, t, i) for i, t in enumerate(tags)], [CONTEXT] * len(tags))


async def test_versions_are_kept_while_their_readings_are_pending_then_pruned(
    tmp_path: Path,
) -> None:
    box = AsyncOutbox(tmp_path / "b.db", 10_000)
    await box.open()
    try:
        writer = BufferWriter(box)
        v1, v2 = meta("a", "b"), meta("b", "a", "c")
        writer.set_meta({"dev": v1})
        submit(writer, 1.0, "a", "b")
        await writer.flush()
        assert stored(box.outbox) == {("dev", v1.meta)}  # committed with its polls
        # A reload changes the order while readings of v1 are pending.
        writer.set_meta({"dev": v2})
        submit(writer, 2.0, "b", "a", "c")
        await writer.flush()
        assert stored(box.outbox) == {("dev", v1.meta), ("dev", v2.meta)}
        assert {(d, m) for d, m, _ in box.stored_metas()} == stored(box.outbox)  # the reader
        bodies = [b.body for b in await box.take(0, 100, 1 << 20)]
        # Positional from the first tag of each version's order (tag_index 0, left out).
        assert b'"ts":1000,"meta":"%b","v":' % v1.meta.encode() in bodies[0]
        assert b'"ts":2000,"meta":"%b","v":' % v2.meta.encode() in bodies[1]
        # The v1 poll delivered, but the v2 poll committed with the change may still be v1's
        # (the bound is the last seq of that commit): kept.
        await box.ack(1, 2)
        assert stored(box.outbox) == {("dev", v1.meta), ("dev", v2.meta)}
        # Once every batch up to that bound is gone, v1 goes, though the buffer is never
        # empty (on a busy line it hardly ever is).
        submit(writer, 3.0, "b", "a", "c")
        await writer.flush()
        await box.ack(3, 5)
        assert box.outbox.depth == 3
        assert stored(box.outbox) == {("dev", v2.meta)}
        # What is stored gives the same version back.
        ((_, _, body),) = box.outbox.stored_metas()
        again = DeviceMeta.from_body("dev", body)
        assert (again.meta, again.order) == (v2.meta, ("b", "a", "c"))
    finally:
        await box.close()


async def test_a_version_set_while_older_polls_wait_in_the_queue_is_not_pruned_early(
    tmp_path: Path,
) -> None:
    """Polls encoded with v1 but not committed yet when a reload brings v2: v1 is stored with
    them, and v1 stays current until they are, so an empty buffer cannot prune it before."""
    box = AsyncOutbox(tmp_path / "b.db", 10_000)
    await box.open()
    try:
        writer = BufferWriter(box)
        v1, v2, v3 = meta("a"), meta("a", "b"), meta("b", "a")
        writer.set_meta({"dev": v1})
        await writer.flush()
        submit(writer, 1.0, "a")
        writer.set_meta({"dev": v2})
        submit(writer, 2.0, "a", "b")
        writer.set_meta({"dev": v3})  # two reloads in one commit interval
        await writer.flush()
        assert stored(box.outbox) == {("dev", v.meta) for v in (v1, v2, v3)}
        await box.ack(1, 3)
        assert stored(box.outbox) == {("dev", v3.meta)}
    finally:
        await box.close()


def test_a_buffer_file_without_the_metas_table_gets_it_and_keeps_its_readings(
    tmp_path: Path,
) -> None:
    path = tmp_path / "b.db"
    box = Outbox(path, 10_000)
    box._conn.exec_driver_sql(
        "INSERT INTO batches VALUES (2, 1, 1.7e9, ?)",
        (b'{"seq":1,"ts":"2023-11-14T22:13:20Z","device":"dev","values":{"a":1,"b":2}}',),
    )
    box._conn.exec_driver_sql("DROP TABLE metas")  # as the version before this one wrote it
    box._conn.commit()
    box.close()
    with sqlite3.connect(path) as db:
        assert "metas" not in {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    assert inspect_stats(path)["tag_metadata_versions"] == 0  # the tools read it as it is
    box = Outbox(path, 10_000)
    try:
        assert box.depth == 2
        assert box.stored_metas() == []
        v = meta("a", "b")
        box.append([], metas=_update(v))
        assert stored(box) == {("dev", v.meta)}
    finally:
        box.close()
    assert inspect_stats(path)["tag_metadata_versions"] == 1


def _update(*versions: DeviceMeta) -> MetaUpdate:
    return MetaUpdate(
        tuple((v.device, v.meta, v.body) for v in versions),
        frozenset((v.device, v.meta) for v in versions),
    )


async def test_export_names_the_tags_of_positional_polls_from_the_kept_versions(
    tmp_path: Path,
) -> None:
    path = tmp_path / "b.db"
    box = AsyncOutbox(path, 10_000)
    await box.open()
    try:
        writer = BufferWriter(box)
        writer.set_meta({"dev": meta("a", "b", "c")})
        submit(writer, 1_700_000_000.0, "b", "c")
        await writer.flush()
        # A quarantined positional poll whose version is no longer kept: tags by position.
        await box.quarantine(2, "too large")
        box.outbox._conn.exec_driver_sql("DELETE FROM metas")
        box.outbox._conn.commit()
        writer.set_meta({"dev": meta("a", "b")})  # a reload: another version
        submit(writer, 1_700_000_001.0, "a", "b")
        await writer.flush()
    finally:
        await box.close()
    readings = [orjson.loads(row) for row in export_rows(path, "readings")]
    assert [(r["seq"], r["tag"], r["value"]) for r in readings] == [(3, "a", 0), (4, "b", 1)]
    quarantined = [orjson.loads(row) for row in export_rows(path, "quarantine")]
    assert [(r["seq"], r["tag"], r["value"]) for r in quarantined] == [(1, "#1", 0), (2, "#2", 1)]


async def test_a_refused_version_has_its_pending_polls_keyed_and_the_next_ones_too(
    tmp_path: Path,
) -> None:
    """The broker refused the device's metadata: consumers could never resolve positional
    polls of it, so the stored and queued ones are rewritten keyed, and new ones are keyed."""
    box = AsyncOutbox(tmp_path / "b.db", 10_000)
    await box.open()
    try:
        writer = BufferWriter(box)
        v1 = meta("a", "b", "c")
        other = DeviceMeta("other", {"x": {"unit": None}}, ("x",))
        writer.set_meta({"dev": v1, "other": other})
        submit(writer, 1.0, "b", "c")  # stored
        writer.submit("other", [Reading(1.0, "x", 5)], [CONTEXT])
        await writer.flush()
        submit(writer, 2.0, "a", "b")  # queued when the refusal comes
        writer.meta_refused("dev", v1.meta)
        submit(writer, 3.0, "a")  # after it
        await writer.flush()
        bodies = [orjson.loads(b.body) for b in await box.take(0, 100, 1 << 20)]
    finally:
        await box.close()
    assert [(p["seq"], p.get("tags"), p["v"], p.get("tag_index")) for p in bodies] == [
        (1, ["b", "c"], [0, 1], None),
        (3, None, [5], None),  # another device: still positional (from tag_index 0)
        (4, ["a", "b"], [0, 1], None),
        (6, ["a"], [0], None),
    ]
    # Keyed by name, a poll names its device; by position its meta version does.
    assert [p.get("device") for p in bodies] == ["dev", None, "dev", "dev"]
    assert [p["meta"] for p in bodies] == [v1.meta, other.meta, v1.meta, v1.meta]
    assert list(bodies[0]) == ["seq", "ts", "device", "meta", "tags", "v"]
