"""The version id of a tag-metadata message (docs/messages.md "Tag metadata"), computed from
its content, so that a consumer can check the ``meta`` a message claims.

``meta`` is the first 8 hex digits of the SHA-256 of the canonical JSON (keys sorted, no
spaces) of ``{"order": order, "tags": tags}``; a message without ``order`` (written before
positional values) hashed ``tags`` alone. A consumer that keys versions by ``meta`` without
this check takes the first (or the last) content it sees under an id, whatever it holds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import orjson


def meta_version(order: Sequence[str] | None, tags: Mapping[str, Any]) -> str:
    """The ``meta`` id of this content: 8 lowercase hex digits."""
    body: Any = tags if order is None else {"order": list(order), "tags": tags}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:8]


def meta_hash_problem(
    meta: str, order: Sequence[str] | None, tags: Mapping[str, Any]
) -> str | None:
    """Why ``meta`` is not the id of this content (None: it is)."""
    expected = meta_version(order, tags)
    if meta == expected:
        return None
    hashed = '{"tags"}' if order is None else '{"order", "tags"}'
    return (
        f"is {meta}, but the SHA-256 of the canonical {hashed} of this message starts "
        f"{expected}: the content does not match its version id"
    )
