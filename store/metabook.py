"""Tag-metadata versions and the readings messages parked until theirs arrives.

A positional poll (``tag_index`` + ``value_list``, docs/messages.md) means something only
with the meta version it names: value i is tag ``order[tag_index + i]`` of that version.
Every meta message the store receives is checked (its ``meta`` must be the hash of its
content, contract.metahash; else it is quarantined, kind ``meta_hash``) and kept in the
``metas`` table. The first content stored under a version id stays: a later message with other
content under that id is quarantined (kind ``meta_conflict``), and the in-memory cache is
filled from the database only, so both always resolve a poll alike. A readings message
naming a version the store has not seen is *parked*: kept whole in ``quarantine`` (kind
``unknown_meta``) with a ``parked`` row saying what it waits for, and acknowledged (bounded:
store.parking). When that version arrives, :class:`store.ingest.Writer` ingests the parked
messages (insert-or-ignore makes a second ingest harmless) and deletes both rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from contract.decode import ContractError, decode_meta
from contract.metahash import meta_hash_problem, meta_version

#: (collector, device, meta version)
MetaKey = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class MetaVersion:
    collector: str
    device: str
    meta: str
    #: The device's tags in config order; None when the message had no ``order`` (a
    #: collector older than positional values): positional polls cannot name it then.
    order: tuple[str, ...] | None
    #: tag -> its metadata object, as sent.
    tags: dict[str, Any]

    @property
    def key(self) -> MetaKey:
        return (self.collector, self.device, self.meta)

    def unit(self, tag: str) -> str | None:
        info = self.tags.get(tag)
        unit = info.get("unit") if type(info) is dict else None
        return unit if type(unit) is str else None


def parse_meta(payload: bytes) -> MetaVersion:
    """A meta message, checked by the reference decoder, plus its ``order``: an array of
    distinct tag names. Raises ContractError."""
    checked = decode_meta(payload)
    order = orjson.loads(payload).get("order")
    if order is not None:
        if type(order) is not list or not all(type(t) is str for t in order):
            raise ContractError("order", "must be an array of tag names")
        if len(set(order)) != len(order):
            raise ContractError("order", "names a tag twice")
        order = tuple(order)
    # Schema 3 hashes the device too (a version then names one device: positional polls
    # leave their device out); schema 2's form is kept for its messages (contract.metahash).
    device = checked["device"] if checked["schema"] >= 3 else None
    problem = meta_hash_problem(checked["meta"], order, checked["tags"], device)
    if problem is not None:
        raise ContractError("meta", problem, "meta_hash")
    return MetaVersion(checked["collector"], checked["device"], checked["meta"], order,
                       checked["tags"])  # fmt: skip


def same_content(a: MetaVersion, b: MetaVersion) -> bool:
    return a.order == b.order and a.tags == b.tags


def conflict_reason(key: MetaKey) -> str:
    return (
        f"meta: version {key[2]} of {key[0]}/{key[1]} is already stored with other content "
        "(the first one received stays: readings are resolved through it)"
    )


def from_row(key: MetaKey, order: str | None, tags: str) -> MetaVersion:
    listed = None if order is None else tuple(orjson.loads(order))
    return MetaVersion(*key, listed, orjson.loads(tags))


def run_problem(version: MetaVersion, tag_index: int, count: int, path: str) -> str | None:
    """Why a positional run cannot be resolved through ``version`` (None: it can)."""
    if version.order is None:
        return (
            f"{path}meta: version {version.meta} of {version.device} has no order "
            "(a positional poll needs one)"
        )
    if tag_index + count > len(version.order):
        return (
            f"{path}value_list: {count} value(s) from tag_index {tag_index} run past the "
            f"{len(version.order)} tags of meta version {version.meta} of {version.device}"
        )
    return None


#: The device of the parking key of a message whose poll names its device by its meta version
#: only (schema 3, by position) and that version is unknown: no device is named so (a device
#: is a topic level, which never holds a ``/``).
BY_META = "/"


def names_device(version: MetaVersion) -> bool:
    """Whether the version's id covers its device (schema 3's form, contract.metahash): then
    a poll naming it by ``meta`` alone is of that device."""
    return version.order is not None and version.meta == meta_version(
        version.order, version.tags, version.device
    )


def parked_reason(key: MetaKey) -> str:
    of = key[0] if key[1] == BY_META else f"{key[0]}/{key[1]}"
    return f"meta version {key[2]} of {of} not received yet: parked until it arrives"
