"""The version id of a tag-metadata message (docs/messages.md "Tag metadata"), computed from
its content, so that a consumer can check the ``meta`` a message claims.

``meta`` is the first 8 hex digits of the SHA-256 of the canonical JSON (keys sorted, no
spaces) of the message's content. Which content depends on the meta message's ``schema``:

- schema 3: ``{"device": device, "order": order, "tags": tags}``. The device is hashed too,
  so that a version id names one device of a collector (ten devices configured alike have
  ten ids): a positional poll names its device by its ``meta`` alone.
- schema 2: ``{"order": order, "tags": tags}``; a message without ``order`` (written before
  positional values) hashed ``tags`` alone.

A consumer that keys versions by ``meta`` without this check takes the first (or the last)
content it sees under an id, whatever it holds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import orjson


def meta_body(
    order: Sequence[str] | None, tags: Mapping[str, Any], device: str | None = None
) -> bytes:
    """The canonical JSON a version id hashes: with ``device`` the schema-3 form, without it
    the schema-2 one (``tags`` alone when there is no ``order`` either)."""
    body: Any
    if device is not None:
        body = {"device": device, "order": list(order or ()), "tags": tags}
    else:
        body = tags if order is None else {"order": list(order), "tags": tags}
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def meta_version(
    order: Sequence[str] | None, tags: Mapping[str, Any], device: str | None = None
) -> str:
    """The ``meta`` id of this content: 8 lowercase hex digits (the schema-3 form when
    ``device`` is given, see the module's text)."""
    return hashlib.sha256(meta_body(order, tags, device)).hexdigest()[:8]


def meta_hash_problem(
    meta: str, order: Sequence[str] | None, tags: Mapping[str, Any], device: str | None = None
) -> str | None:
    """Why ``meta`` is not the id of this content (None: it is). ``device``: the message's
    device when it is of schema 3 (its hash covers the device), None for schema 2."""
    expected = meta_version(order, tags, device)
    if meta == expected:
        return None
    if device is not None:
        hashed = '{"device", "order", "tags"}'
    else:
        hashed = '{"tags"}' if order is None else '{"order", "tags"}'
    return (
        f"is {meta}, but the SHA-256 of the canonical {hashed} of this message starts "
        f"{expected}: the content does not match its version id"
    )
