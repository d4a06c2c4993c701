"""The encoder's path for the common poll (one time, one context, every value good: issue 28)
writes exactly the bytes its loop writes, whatever the values; any other poll takes the loop."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from contract import encode
from contract.codes import ErrorCode
from contract.encode import DeviceMeta, PollEncoder
from contract.records import Context, Quality, Reading

TAGS = [f"t{i}" for i in range(8)]
META = DeviceMeta(
    "dev",
    {t: {"unit": None, "type": "float32" if t == "t3" else "int16"} for t in TAGS},
    tuple(TAGS),
)
ONE = Context("st", "SN1", "op", 1)
OTHER = Context("st", "SN2", "op", 1)


def value(rng: random.Random) -> object:
    return rng.choice(
        [
            rng.randint(-40000, 70000),
            2**70,  # beyond orjson's integers
            rng.random() * 1000,
            float("nan"),
            True,
            None,
            "text",
            354.315,
        ]
    )


def poll(rng: random.Random) -> tuple[list[Reading], list[Context]]:
    count = rng.randint(1, 8)
    start = rng.randint(0, 2)
    tags = TAGS[start : start + count] if rng.random() < 0.7 else rng.sample(TAGS, count)
    if rng.random() < 0.1:
        tags[-1] = "unknown"
    ts = 1_700_000_000.125
    readings = []
    for tag in tags:
        reading = Reading(ts if rng.random() < 0.9 else ts + 0.005, tag, value(rng), "V")
        roll = rng.random()
        if roll < 0.05:
            reading = Reading.bad(ts, tag, ErrorCode.TIMEOUT)
        elif roll < 0.08:
            reading = reading._replace(quality=Quality.UNCERTAIN)
        readings.append(reading)
    contexts = [ONE if rng.random() < 0.95 else OTHER for _ in readings]
    if rng.random() < 0.5:
        contexts = [ONE] * len(readings)
    return readings, contexts


def encoded(
    readings: Sequence[Reading], contexts: Sequence[Context], meta: DeviceMeta | None
) -> bytes:
    return PollEncoder().encode(7, "dev", readings, contexts, meta)


@pytest.mark.parametrize("meta", [META, None], ids=["positional", "by name"])
def test_the_plain_path_writes_what_the_loop_writes(
    meta: DeviceMeta | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(28)
    polls = [poll(rng) for _ in range(3000)]
    fast = [encoded(r, c, meta) for r, c in polls]
    taken = sum(encode._plain(r, c, meta.position if meta else {}, frozenset()) is not None
                for r, c in polls)  # fmt: skip
    monkeypatch.setattr(encode, "_plain", lambda *_: None)
    assert [encoded(r, c, meta) for r, c in polls] == fast
    assert taken > 300  # the path was taken, and often


def test_a_plain_poll_of_registers_takes_the_plain_path() -> None:
    readings = [Reading(1_700_000_000.0, t, i) for i, t in enumerate(TAGS)]
    plain = encode._plain(readings, [ONE] * 8, META.position, META.float32)
    assert plain == ([b"0,1,2,3,4,5,6,7"], list(range(8)), True)
    # A float of a float32 tag needs float32 text: the loop writes it.
    floats = [r._replace(value=0.1) for r in readings]
    assert encode._plain(floats, [ONE] * 8, META.position, META.float32) is None


def test_the_pieces_the_encoder_keeps_take_their_own_size() -> None:
    """orjson's output keeps the buffer it was written in (4 KB at least); what the encoder
    caches (tag names, device heads) and the metadata bodies are copies of their own size."""
    import tracemalloc

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [encode._json(f"tag{i}") for i in range(1000)]
        per_piece = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
        before = tracemalloc.get_traced_memory()[0]
        messages = [META.message("pc1") for _ in range(10)]
        per_message = (tracemalloc.get_traced_memory()[0] - before) / len(messages)
    finally:
        tracemalloc.stop()
    assert per_piece < 200
    assert per_message < 2 * len(messages[0]) < 4096
    assert len(META.body) < 1000
