"""Config files that must not flood, freeze or fool the loader: each is FILE:LINE: path: problem
and exit 2, never a traceback; the same hardened loader reads the store's config and the pilot
protocol (common.yamlmodel)."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.config import load_config, parse_config
from common.errors import ConfigError
from common.yamlmodel import MAX_DEPTH, MAX_FILE_BYTES
from store.config import load_store_config
from store.report.protocol import load_protocol
from tests.helpers import CASES, run_cli

BASE = (CASES / "small-line.yaml").read_text()  # the config tests/test_config.py edits too
CSV_BASE = BASE.replace("    tags:\n", "    tags_csv: map.csv\n    tags:\n", 1)


def edit(old: str, new: str) -> str:
    assert old in BASE
    return BASE.replace(old, new, 1)


BILLION_LAUGHS = (CASES / "billion-laughs.yaml").read_text()


def check(tmp_path: Path, content: str | bytes, name: str = "line.yaml") -> list[str]:
    """``collector check`` on a real file: exit 2, no traceback; its problem lines."""
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert all(line.startswith(f"{path}:") or line.startswith(str(tmp_path)) for line in lines)
    return lines


def test_a_latin1_comment_names_its_line(tmp_path: Path) -> None:
    text = BASE.replace("  line: line-1\n", "  line: line-1  # Prüfplatz\n")
    lines = check(tmp_path, text.encode("latin-1"))
    assert lines == [
        f"{tmp_path / 'line.yaml'}:4: (file): not UTF-8: byte 0xFC at column 21; save the "
        "config file as UTF-8 (an editor or a spreadsheet wrote it as Latin-1 / Windows-1252)"
    ]


def test_an_excel_cp1252_register_map_names_the_csv_line(tmp_path: Path) -> None:
    (tmp_path / "map.csv").write_bytes(
        "name,table,address,type,unit\nvoltage,holding_register,0,float32,V\n"
        "temp,holding_register,2,float32,\u00b0C\n".encode("cp1252")
    )
    with pytest.raises(ConfigError) as info:
        parse_config(CSV_BASE, str(tmp_path / "line.yaml"))
    (problem,) = info.value.problems
    assert problem.startswith(f"{tmp_path / 'map.csv'}:3: (file): not UTF-8: byte 0xB0")


@pytest.mark.parametrize(
    ("char", "name"),
    [
        ("\x1b", "control character"),
        ("\u202e", "RIGHT-TO-LEFT OVERRIDE"),
        ("\x00", "control character"),
    ],
)
def test_control_and_format_characters_are_refused(tmp_path: Path, char: str, name: str) -> None:
    text = edit("  site: plant-a\n", f"  site: plant{char}-a\n")
    (line,) = check(tmp_path, text)
    assert line == (
        f"{tmp_path / 'line.yaml'}:3: (file): character U+{ord(char):04X} ({name}) at column 14 "
        "is not allowed (control and format characters can hide text)"
    )


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    text = BASE + "x: " + "[" * 5000 + "]" * 5000 + "\n"
    (line,) = check(tmp_path, text)
    assert line.endswith(f"(yaml): nested deeper than {MAX_DEPTH} levels")


def test_a_recursive_anchor_is_refused(tmp_path: Path) -> None:
    (line,) = check(tmp_path, BASE + "x: &loop\n  - *loop\n")
    assert "x[0]: an alias refers to a node that contains it (a recursive anchor)" in line


def test_a_billion_laughs_is_refused(tmp_path: Path) -> None:
    (line,) = check(tmp_path, BASE + BILLION_LAUGHS)
    assert "values once expanded (an alias bomb?)" in line


def test_modest_anchors_still_work(tmp_path: Path) -> None:
    text = BASE.replace("    host: 127.0.0.1\n", "    host: &h 127.0.0.1\n") + "x_unused: *h\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "line.yaml")
    # The alias resolves (the key is only unknown), so anchors stay usable.
    assert info.value.problems == [
        "line.yaml:26: x_unused: unknown key (not ignored: check its spelling against "
        "docs/configuration.md)"
    ]


def test_a_huge_regex_repeat_count_is_a_problem(tmp_path: Path) -> None:
    text = BASE + (
        "  - name: scanner\n    protocol: barcode_scanner\n    port: /dev/ttyUSB9\n"
        "    serial_pattern: 'a{99999999999}'\n"
    )
    (line,) = check(tmp_path, text)
    assert line.startswith(f"{tmp_path / 'line.yaml'}:29: devices[1].serial_pattern: ")
    assert "'a{99999999999}' is not a regular expression" in line


def test_duplicate_keys_are_refused_not_last_wins(tmp_path: Path) -> None:
    text = edit("  site: plant-a\n", "  site: plant-a\n  site: plant-b\n")
    (line,) = check(tmp_path, text)
    assert line == (
        f"{tmp_path / 'line.yaml'}:4: collector.site: duplicate key (also on line 3); "
        "YAML would silently keep the last"
    )


def test_a_100_kb_value_is_not_echoed_whole(tmp_path: Path) -> None:
    text = edit("        type: float32\n", f"        type: {'x' * 100_000}\n")
    lines = check(tmp_path, text)
    assert len(lines) == 1
    assert "(100000 chars)" in lines[0]
    assert len(lines[0]) < 1000


def test_a_file_too_large_is_refused_before_parsing(tmp_path: Path) -> None:
    text = BASE + "#" * (MAX_FILE_BYTES + 1) + "\n"
    (line,) = check(tmp_path, text)
    assert (
        line == f"{tmp_path / 'line.yaml'}:1: (file): larger than {MAX_FILE_BYTES} bytes: too "
        "large for a config file"
    )


def test_schema_and_reference_problems_in_one_pass(tmp_path: Path) -> None:
    text = edit("        type: float32\n", "        type: real\n").replace(
        "serial_source: {device: tester-1, tag: serial}",
        "serial_source: {device: tester-1, tag: serial}\n"
        "    key_characteristics: [{device: nowhere, tag: x}]",
    )
    text += (
        "  - name: other\n    protocol: modbus_tcp\n    station: ft-2\n    host: 10.0.0.1\n"
        "    tags: [{name: a, table: coil, address: 0, type: bool}]\n"
    )
    lines = check(tmp_path, text)
    assert [line.split(": ", 2)[1] for line in lines] == [
        "stations[0].key_characteristics[0].device",
        "devices[0].tags[0].type",
        "devices[1].station",
    ], lines
    assert "device 'nowhere' is not defined; defined: other, tester-1" in lines[0]
    assert "Input should be" in lines[1]
    assert "station 'ft-2' is not defined; defined: ft-1" in lines[2]


def test_hints_for_near_misses(tmp_path: Path) -> None:
    text = edit("    host: 127.0.0.1\n", "    host: 127.0.0.1\n    unit: 3\n")
    text = text.replace("collector:\n", "mqtt:\n  version: 5\ncollector:\n")
    lines = check(tmp_path, text)
    joined = "\n".join(lines)
    assert (
        "mqtt.version: Input should be '5' or '3.1.1'; got the number 5: write it in "
        'quotes, e.g. "5"' in joined
    )
    assert "devices[0].unit: unknown key" in joined
    assert "(a device's Modbus unit is unit_id; unit is a tag's engineering unit)" in joined


def test_integer_like_tag_names_are_refused(tmp_path: Path) -> None:
    lines = check(tmp_path, edit("      - name: voltage\n", "      - name: '17'\n"))
    assert lines == [
        f"{tmp_path / 'line.yaml'}:17: devices[0].tags[0].name: tag name '17' is a whole "
        "number, which JSON consumers reorder; give it a letter, e.g. 'r17'"
    ]


def test_an_empty_host_is_refused(tmp_path: Path) -> None:
    lines = check(tmp_path, edit("    host: 127.0.0.1\n", "    host: ''\n"))
    assert lines == [
        f"{tmp_path / 'line.yaml'}:15: devices[0].host: '' is not a host: give an IP address "
        "or a host name"
    ]


def test_check_catches_a_missing_or_unusable_buffer_folder(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    text = edit("  path: /tmp/buffer.db\n", f"  path: {tmp_path / 'file' / 'sub' / 'b.db'}\n")
    assert check(tmp_path, text) == [
        f"{tmp_path / 'line.yaml'}:6: buffer.path: '{tmp_path / 'file'}' is a file, so folder "
        f"'{tmp_path / 'file' / 'sub'}' can never exist"
    ]
    # A folder that does not exist yet is a warning: systemd's StateDirectory= makes it.
    path = tmp_path / "later.yaml"
    path.write_text(edit("  path: /tmp/buffer.db\n", f"  path: {tmp_path / 'later' / 'b.db'}\n"))
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        f"{path}:6: buffer.path: warning: folder '{tmp_path / 'later'}' does not exist (yet): "
        "run fails unless it is created (systemd creates /var/lib/collector, the unit's "
        "StateDirectory=, at start)"
    ) in result.stdout.splitlines()
    # load_config alone (a reload) does not look at the buffer: it cannot change while running.
    (tmp_path / "ok.yaml").write_text(text)
    assert load_config(tmp_path / "ok.yaml").buffer.path == tmp_path / "file" / "sub" / "b.db"


def test_the_store_config_and_the_protocol_use_the_same_loader(tmp_path: Path) -> None:
    store = tmp_path / "store.yaml"
    store.write_text("http:\n  port: 8190\n  port: 8191\n")
    with pytest.raises(ConfigError) as info:
        load_store_config(store)
    assert info.value.problems == [
        f"{store}:3: http.port: duplicate key (also on line 2); YAML would silently keep the last"
    ]
    protocol = tmp_path / "pilot.yaml"
    protocol.write_text(BILLION_LAUGHS)
    with pytest.raises(ConfigError) as info:
        load_protocol(protocol)
    assert "(an alias bomb?)" in info.value.problems[0]
    protocol.write_bytes("run:\n  name: Pilot \u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_protocol(protocol)
    assert info.value.problems[0].startswith(f"{protocol}:2: (file): not UTF-8: byte 0xE9")


def test_a_modicon_address_is_a_warning_of_check(tmp_path: Path) -> None:
    path = tmp_path / "line.yaml"
    text = edit("  path: /tmp/buffer.db\n", f"  path: {tmp_path / 'b.db'}\n")
    path.write_text(text.replace("        address: 0\n", "        address: 40001\n", 1))
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        f"{path}:19: devices[0].tags[0].address: warning: 40001 looks like a Modicon reference "
        "number: that is table: holding_register, address: 0 (0-based); if the manual really "
        "means holding_register 40001, leave it"
    ) in result.stdout.splitlines()
