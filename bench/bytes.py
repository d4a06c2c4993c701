"""Bytes per reading on the wire and on disk, schema 1 against schema 3 (tags by name,
``mqtt.value_keys: name``, and its positional form, the default), at the reference load.

    .venv/bin/python -m bench.bytes

The reference workload's polls (10 devices named as bench/run.py names them, 100 uint16
registers each, no station, values that change every poll) go through the collector's own
encoders and a real buffer file (the Outbox, WAL, synchronous FULL, as the service writes it:
many polls per commit), and are joined into messages as the forwarder joins them
(``mqtt.max_readings_per_message`` 500). On the wire: the MQTT PUBLISH payload plus its
packet overhead (topic, header, packet id), per reading. On disk: the buffer file and its WAL
after a checkpoint, per buffered reading. No broker, no network: the bytes are the same.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from collector.buffer import Batch, Outbox
from collector.buffer.writer import make_batch
from collector.delivery.forwarder import PACKET_OVERHEAD_BYTES
from contract.decode import MetaBook, decode_readings
from contract.encode import (
    DeviceMeta,
    PollEncoder,
    ReadingEncoder,
    build_message,
    envelope,
    join_polls,
)
from contract.records import Context, Reading

DEVICES, REGISTERS, POLLS = 10, 100, 500  # 500,000 readings
PER_MESSAGE = 500
TOPIC = "collector/lab/bench/bench/readings"
OUTBOX = "6f1d0c2a9b7e4e55"


def polls() -> list[tuple[str, list[Reading], list[Context]]]:
    context = Context(None, None, None)
    out = []
    for p in range(POLLS):
        for d in range(DEVICES):
            ts = 1_764_000_000.0 + p * 0.1 + d * 0.01
            readings = [
                Reading(ts, f"r{i}", (p * 7 + i * 13 + d) % 65536) for i in range(REGISTERS)
            ]
            out.append((f"dev-{d:03d}", readings, [context] * REGISTERS))
    return out


def batches_v1(work: list[tuple[str, list[Reading], list[Context]]]) -> list[Batch]:
    encoder, seq, out = ReadingEncoder(), 1, []
    for device, readings, contexts in work:
        body = encoder.encode(seq, device, readings, contexts)
        out.append(Batch(seq, seq + len(readings) - 1, readings[0].ts, body))
        seq += len(readings)
    return out


def metas(work: list[tuple[str, list[Reading], list[Context]]]) -> dict[str, DeviceMeta]:
    """Each device's tag metadata, its registers in config order."""
    tag = {"unit": None, "type": "uint16", "scale": 1.0, "offset": 0.0, "station": None}
    names = tuple(f"r{i}" for i in range(REGISTERS))
    return {
        d: DeviceMeta(d, dict.fromkeys(names, tag), names)
        for d in {device for device, _, _ in work}
    }


def batches_v2(
    work: list[tuple[str, list[Reading], list[Context]]], positional: bool
) -> list[Batch]:
    encoder, seq, out = PollEncoder(positional), 1, []
    metas_ = metas(work)
    for device, readings, contexts in work:
        out.append(make_batch(encoder, seq, device, readings, contexts, meta=metas_[device]))
        seq += len(readings)
    return out


def message(group: list[Batch], schema: int) -> bytes:
    """The batches in one message, as the forwarder joins them (schema 3: join_polls)."""
    if schema == 1:
        return build_message("bench", b",".join(b.body for b in group))
    return envelope("bench", OUTBOX, join_polls((b.first_seq, b.count, b.body) for b in group))


def wire(batches: list[Batch], schema: int) -> float:
    total = readings = 0
    for start in range(0, len(batches), PER_MESSAGE // REGISTERS):
        group = batches[start : start + PER_MESSAGE // REGISTERS]
        payload = message(group, schema)
        total += len(payload) + len(TOPIC) + PACKET_OVERHEAD_BYTES
        readings += sum(b.count for b in group)
    return total / readings


def disk(batches: list[Batch], work: Path) -> float:
    path = work / "buffer.db"
    box = Outbox(path, 10_000_000)
    for start in range(0, len(batches), 20):  # about a commit interval's polls per commit
        box.append(batches[start : start + 20])
    box._conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    readings = box.depth
    box.close()
    size = sum(f.stat().st_size for f in work.iterdir() if f.name.startswith("buffer.db"))
    return size / readings


def decode_rate(batches: list[Batch], schema: int, book: MetaBook | None = None) -> float:
    """Readings per second the reference decoder (contract.decode.decode_readings, with
    the MetaBook a consumer keeps for positional polls) turns back into one record each, on
    messages of the reference load, on this machine: the best of 5 rounds (the machine is
    shared; the best is the least disturbed)."""
    group = batches[: PER_MESSAGE // REGISTERS]
    payload = message(group, schema)
    readings = sum(b.count for b in group)
    best = 0.0
    for _ in range(5):
        rounds = 100
        started = time.perf_counter()
        for _ in range(rounds):
            decode_readings(payload, book)
        best = max(best, rounds * readings / (time.perf_counter() - started))
    return best


def main() -> None:
    work = polls()
    book = MetaBook()
    for meta in metas(work).values():
        book.add(meta.message("bench"))
    print(f"{DEVICES} devices x {REGISTERS} uint16 registers, {POLLS} polls each")
    for name, schema, batches in (
        ("schema 1           ", 1, batches_v1(work)),
        ("schema 3 by name   ", 3, batches_v2(work, positional=False)),
        ("schema 3 positional", 3, batches_v2(work, positional=True)),
    ):
        with tempfile.TemporaryDirectory() as folder:
            on_disk = disk(batches, Path(folder))
        body = sum(len(b.body) for b in batches) / sum(b.count for b in batches)
        print(
            f"{name}: {wire(batches, schema):6.1f} B/reading on the wire, "
            f"{on_disk:6.1f} B/reading on disk (stored body {body:.1f} B), reference decoder "
            f"{decode_rate(batches, schema, book):,.0f} readings/s"
        )


if __name__ == "__main__":
    main()
