"""A collector's word about seqs it will never send: ``{base}/gaps`` messages.

    {"schema":2,"collector":C,"outbox":O,"stream":"readings"|"units"|"deviations",
     "never_assigned":[[a,b],...],"unavailable":[[a,b],...],"dropped":[[a,b],...]}

``never_assigned``: a seq jump its buffer reserved (a power cut with ``buffer.synchronous:
normal``, or a buffer reset); announced at every connect. ``unavailable`` (``dropped``: the
part it knows it dropped at its buffer cap): the answer to a ``resend`` for seqs it no longer
holds. The store keeps them (``seq_notes``) and the gap report splits holes by them
(store.status). Bad input is a ContractError (quarantined, counted), like any message.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from contract.decode import ContractError

KINDS = ("never_assigned", "unavailable", "dropped")
MAX_RANGES = 1000


#: The streams a collector numbers (deviations: store/record/line.py acknowledges them; a
#: collector asked for one it no longer holds says so here, and is not asked again).
STREAMS = ("readings", "units", "deviations")


@dataclass(frozen=True, slots=True)
class Note:
    collector: str
    outbox: str
    stream: str
    kind: str
    first: int
    last: int


def parse_gaps(payload: bytes) -> list[Note]:
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ContractError("", f"not JSON: {exc}", "json") from None
    if not isinstance(body, dict) or body.get("schema") != 2:
        raise ContractError("", "a gaps message is a schema 2 object", "schema")
    collector, outbox, stream = body.get("collector"), body.get("outbox"), body.get("stream")
    if not isinstance(collector, str) or not isinstance(outbox, str):
        raise ContractError("", "collector and outbox must be strings", "field")
    if stream not in STREAMS:
        raise ContractError(
            "", f"stream: {str(stream)[:40]!r} is not readings, units or deviations", "field"
        )
    notes = []
    for kind in KINDS:
        ranges = body.get(kind, [])
        if not isinstance(ranges, list) or len(ranges) > MAX_RANGES:
            raise ContractError("", f"{kind}: not a list of at most {MAX_RANGES} ranges", "field")
        for item in ranges:
            if (
                not isinstance(item, list)
                or len(item) != 2
                or any(type(x) is not int or not 1 <= x < 2**63 for x in item)
                or item[0] > item[1]
            ):
                raise ContractError("", f"{kind}: {str(item)[:40]} is not a seq range", "field")
            notes.append(Note(collector, outbox, stream, kind, item[0], item[1]))
    return notes
