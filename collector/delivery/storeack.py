"""Reading the central store's acknowledgements (``{base}/ack``, docs/guarantees.md).

An ack arrives on a topic anyone allowed to publish there can write to, so it is input to
check, not an order: bad JSON, a wrong schema or types, ``from > through``, a range reversed
or reaching past the last seq this outbox ever assigned are refused with a reason (the
forwarder counts it, logs it once per episode, and deletes nothing). An ack for another outbox
(this collector's earlier buffer, or another process) is not an error but is not ours either.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

STREAMS = ("readings", "units", "deviations")
#: Ranges per list at most: the store caps its lists at acks.max_ranges (default 100).
MAX_RANGES = 10_000


@dataclass(frozen=True, slots=True)
class StoreAck:
    outbox: str
    stream: str
    first: int
    through: int
    holes: tuple[tuple[int, int], ...]
    resend: tuple[tuple[int, int], ...]

    def covered(self) -> list[tuple[int, int]]:
        """[first, through] minus the holes: every seq the store says it committed."""
        out = []
        start = self.first
        for a, b in sorted(self.holes):
            if a > start:
                out.append((start, min(a - 1, self.through)))
            start = max(start, b + 1)
            if start > self.through:
                break
        if start <= self.through:
            out.append((start, self.through))
        return out


class BadAck(ValueError):
    pass


def parse_ack(payload: bytes, outbox_id: str, last_assigned: dict[str, int]) -> StoreAck | None:
    """The ack in ``payload``, None when it is for another outbox; :class:`BadAck` with the
    reason when it is not an ack. ``last_assigned``: the highest seq this outbox assigned per
    stream (a range past it was never ours)."""
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise BadAck(f"not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise BadAck("not a JSON object")
    if body.get("schema") != 2:
        raise BadAck(f"schema {body.get('schema')!r}, expected 2")
    outbox, stream = body.get("outbox"), body.get("stream")
    if not isinstance(outbox, str):
        raise BadAck("outbox: not a string")
    if stream not in STREAMS:
        raise BadAck(f"stream: {str(stream)[:40]!r} is not readings, units or deviations")
    if outbox != outbox_id:
        return None
    first, through = _seq(body, "from"), _seq(body, "through")
    if first > through:
        raise BadAck(f"from {first} > through {through}")
    last = last_assigned.get(stream, 0)
    holes, resend = _ranges(body, "holes"), _ranges(body, "resend")
    if through > last or any(b > last for _, b in (*holes, *resend)):
        raise BadAck(f"a range reaches past seq {last}, the last this outbox assigned")
    return StoreAck(outbox, stream, first, through, holes, resend)


def _seq(body: dict[str, object], key: str) -> int:
    value = body.get(key)
    if type(value) is not int or value < 1:
        raise BadAck(f"{key}: not a seq (an integer >= 1)")
    return value


def _ranges(body: dict[str, object], key: str) -> tuple[tuple[int, int], ...]:
    value = body.get(key, [])
    if not isinstance(value, list) or len(value) > MAX_RANGES:
        raise BadAck(f"{key}: not a list of at most {MAX_RANGES} ranges")
    out = []
    for item in value:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or any(type(x) is not int or x < 1 for x in item)
            or item[0] > item[1]
        ):
            raise BadAck(f"{key}: {str(item)[:40]} is not a range [first, last]")
        out.append((item[0], item[1]))
    return tuple(out)
