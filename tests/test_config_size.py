"""Big configs that are real are loaded; what aliases add is bounded, not the document's size
(issue 25, item 8: the bomb guard used to count every value, refusing any line over about
7,500 tags, the saturation bench's included)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.run import Line, Workload
from collector.config import load_config
from common.errors import ConfigError
from common.yamlmodel import MAX_ALIAS_ADDED, MAX_FILE_BYTES
from tests.helpers import CASES


class _NoAliases(yaml.SafeDumper):
    """Writes every repeated object out in full, as a hand-written (or generated) file would."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _line(devices: int, tags_each: int, buffer: Path) -> dict[str, Any]:
    return {
        "collector": {"id": "pc1", "site": "plant-a", "line": "line-1"},
        "buffer": {"path": str(buffer)},
        "devices": [
            {
                "name": f"dev-{d:03d}",
                "protocol": "modbus_tcp",
                "host": "127.0.0.1",
                "unit_id": d % 247 + 1,
                "tags": [
                    {"name": f"r{i}", "table": "holding_register", "address": i, "type": "uint16"}
                    for i in range(tags_each)
                ],
            }
            for d in range(devices)
        ],
    }


def test_a_20000_tag_config_without_aliases_loads(tmp_path: Path) -> None:
    path = tmp_path / "line.yaml"
    path.write_text(yaml.dump(_line(160, 125, tmp_path / "b.db"), Dumper=_NoAliases))
    assert "*id" not in path.read_text()
    assert path.stat().st_size < MAX_FILE_BYTES  # the one bound on a document's own size
    config = load_config(path)
    assert sum(len(device.tags) for device in config.devices) == 20_000
    assert config.devices[-1].tags[-1].name == "r124"


def test_the_benchs_largest_throughput_config_loads(tmp_path: Path) -> None:
    # bench/run.py writes its config with yaml.safe_dump: the one tag list is an anchor and
    # each further device an alias to it (160 x 125 tags: about 200,000 values expanded).
    line = Line(tmp_path, Workload(160, 125, 50))
    text = yaml.safe_dump(line._config(list(range(20_000, 20_007))))
    assert "*id001" in text
    path = tmp_path / "collector.yaml"
    path.write_text(text)
    config = load_config(path)
    assert len(config.devices) == 160
    assert sum(len(device.tags) for device in config.devices) == 20_000


def test_a_billion_laughs_is_refused_quickly(tmp_path: Path) -> None:
    path = tmp_path / "line.yaml"
    bomb = (CASES / "billion-laughs.yaml").read_text()
    path.write_text((CASES / "small-line.yaml").read_text() + bomb)
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert time.monotonic() - started < 2
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}:")
    assert problem.endswith(
        f": anchors and aliases add more than {MAX_ALIAS_ADDED} values once expanded "
        "(an alias bomb?)"
    )


def test_aliases_adding_just_over_the_bound_are_refused(tmp_path: Path) -> None:
    # 1,001 aliases of a 1,000-value list: about 1,001,000 values added; one alias fewer of a
    # list 1 value shorter stays under the bound and loads as far as the schema.
    def text(items: int, uses: int) -> str:
        values = ", ".join(["1"] * items)
        return (
            CASES / "small-line.yaml"
        ).read_text() + f"x: &big [{values}]\ny: [{', '.join(['*big'] * uses)}]\n"

    path = tmp_path / "line.yaml"
    path.write_text(text(1000, 1001))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "(an alias bomb?)" in info.value.problems[0]
    path.write_text(text(998, 1000))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [p.split(": ", 2)[1:] for p in info.value.problems] == [
        ["x", "unknown key (not ignored: check its spelling against docs/configuration.md)"],
        ["y", "unknown key (not ignored: check its spelling against docs/configuration.md)"],
    ]
