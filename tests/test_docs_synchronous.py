"""The docs name only the buffer.synchronous values the config takes (issue 25, item 6: two
pages named `off`, which the config refuses, deliberately: a power cut must not lose committed
readings)."""

from __future__ import annotations

import re

import pytest

from collector.config import parse_config
from collector.config.base import Synchronous
from common.errors import ConfigError
from tests.conftest import REPO
from tests.helpers import CASES

#: SQLite's synchronous modes: those of them the docs may name beside buffer.synchronous.
SQLITE_MODES = {"off", "normal", "full", "extra"}


def test_off_is_refused_by_the_config() -> None:
    text = (CASES / "small-line.yaml").read_text()
    text = text.replace(
        "  path: /tmp/buffer.db\n", "  path: /tmp/buffer.db\n  synchronous: 'off'\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, "line.yaml")
    (problem,) = info.value.problems
    assert problem.startswith("line.yaml:7: buffer.synchronous: Input should be 'full' or 'normal'")


def test_the_docs_name_only_values_the_config_takes() -> None:
    allowed = {mode.value for mode in Synchronous}
    named: list[str] = []
    for page in sorted((REPO / "docs").glob("*.md")):
        # A paragraph (or list item, or table row) that is about the collector's buffer.
        for block in re.split(r"\n\s*\n|\n(?=[-|] )", page.read_text()):
            if "buffer.synchronous" not in block:
                continue
            for word in re.findall(r"`([a-z]+)`", block):
                if word in SQLITE_MODES and word not in allowed:
                    named.append(f"{page.name}: `{word}` in {block[:80]!r}")
    assert named == []
