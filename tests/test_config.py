"""Config validation: every example loads; every kind of mistake gets FILE:LINE: path: message."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from collector.config import load_config, parse_config
from common.errors import ConfigError
from tests.helpers import CASES, REPO, run_cli

# Every example under config/ is validated here, so the examples cannot rot.
# config/ also holds example files of other kinds, each loaded by its own test.
NOT_COLLECTOR = {"pilot-protocol.yaml", "demo-protocol.yaml", "store.yaml"}
EXAMPLES = sorted(p for p in (REPO / "config").glob("*.yaml") if p.name not in NOT_COLLECTOR)

# One tester at one station: the config most checks edit (tests/cases/small-line.yaml; its
# line numbers are part of the expected messages).
BASE = (CASES / "small-line.yaml").read_text()


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "line.yaml")
    return info.value.problems


def edit(old: str, new: str) -> str:
    assert old in BASE
    return BASE.replace(old, new, 1)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_config_is_valid(path: Path) -> None:
    config = parse_config(path.read_text(), str(path))
    assert config.devices


def test_examples_exist() -> None:
    assert len(EXAMPLES) >= 2


def test_base_is_valid() -> None:
    config = parse_config(BASE)
    assert config.devices[0].tags[1].count == 8
    assert config.mqtt.port == 1883
    assert config.health.host == "127.0.0.1"  # secure by default


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            edit("  line: line-1\n", "  line: line-1\n  lien: x\n"),
            "line.yaml:5: collector.lien: unknown key",
        ),
        (
            edit("    host: 127.0.0.1\n", "    host: 127.0.0.1\n    unitid: 3\n"),
            "line.yaml:16: devices[0].unitid: unknown key",
        ),
        (edit("  site: plant-a\n", ""), "line.yaml:1: collector.site: required field is missing"),
        (
            edit("        type: float32\n", "        type: float\n"),
            "line.yaml:20: devices[0].tags[0].type: Input should be 'bool', 'int16', 'uint16', "
            "'int32', 'uint32', 'int64', 'uint64', 'float32', 'float64' or 'string'; got 'float'",
        ),
        (
            edit(
                "        table: holding_register\n        address: 0\n",
                "        table: holding\n        address: 0\n",
            ),
            "line.yaml:18: devices[0].tags[0].table: Input should be 'coil', 'discrete_input', "
            "'input_register' or 'holding_register'; got 'holding'",
        ),
        (
            edit(
                "        table: holding_register\n        address: 0\n",
                "        table: coil\n        address: 0\n",
            ),
            "line.yaml:17: devices[0].tags[0]: a coil holds one bit: give it type: bool (type "
            "float32 needs a register table: holding_register or input_register)",
        ),
        (
            edit("        type: float32\n", "        type: bool\n"),
            "line.yaml:17: devices[0].tags[0]: bool in a register needs bit: 0 (LSB) to 15",
        ),
        (
            edit("        count: 8\n", ""),
            "line.yaml:21: devices[0].tags[1]: type string needs count",
        ),
        (
            edit("        address: 0\n", "        address: 70000\n"),
            "line.yaml:19: devices[0].tags[0].address: Input should be less than or equal to "
            "65535; got 70000",
        ),
        (
            edit("      - name: voltage\n", "      - name: '17'\n"),
            "line.yaml:17: devices[0].tags[0].name: tag name '17' is a whole number, which "
            "JSON consumers reorder; give it a letter, e.g. 'r17'",
        ),
        (
            edit("        address: 0\n", "        address: -1\n"),
            "line.yaml:19: devices[0].tags[0].address: Input should be greater than or equal to 0",
        ),
        (
            edit("    protocol: modbus_tcp\n", "    protocol: modbus\n"),
            "line.yaml:13: devices[0].protocol: 'modbus' is not a protocol; allowed: "
            "modbus_tcp, modbus_rtu, serial_ascii, barcode_scanner",
        ),
        (
            edit("  - name: serial\n", "  - name: voltage\n"),
            "line.yaml:16: devices[0].tags: duplicate tag name 'voltage'",
        ),
        (
            edit("    station: ft-1\n", "    station: ft-2\n"),
            "line.yaml:14: devices[0].station: station 'ft-2' is not defined; defined: ft-1",
        ),
        (
            edit("tag: serial}", "tag: sn}"),
            "line.yaml:10: stations[0].serial_source.tag: 'sn' is not a tag of device "
            "'tester-1'; its tags: ",
        ),
        (
            edit("tag: serial}\n", "tag: serial}\n    verdict: {device: tester-1, tag: result}\n"),
            "line.yaml:11: stations[0].verdict.tag: 'result' is not a tag of device "
            "'tester-1'; its tags: serial, voltage",
        ),
        (
            edit(
                "tag: serial}\n", "tag: serial}\n    key_characteristics: [{device: t2, tag: x}]\n"
            ),
            "line.yaml:11: stations[0].key_characteristics[0].device: device 't2' is not "
            "defined; defined: tester-1",
        ),
        (
            edit("tag: serial}\n", "tag: serial}\n    unit_end: cycle_complete\n"),
            "line.yaml:8: stations[0]: unit_end is 'cycle_complete' but no cycle_complete tag "
            "is set",
        ),
        (
            edit(
                "tag: serial}\n",
                "tag: serial}\n    verdict: {device: tester-1, tag: voltage, "
                "map: {1: pass, 2: incomplete}}\n",
            ),
            "line.yaml:11: stations[0].verdict.map: 'incomplete' is given by the collector",
        ),
        (
            edit(
                "tag: serial}\n",
                "tag: serial}\n    verdict: {device: tester-1, tag: voltage, map: {1: ok}}\n",
            ),
            "line.yaml:11: stations[0].verdict.map.1: Input should be 'pass', 'fail', "
            "'rework', 'scrap' or 'incomplete'",
        ),
        (
            edit("serial_source: {device: tester-1, tag: serial}", "serial_source: http"),
            "line.yaml:10: stations[0].serial_source: 'http' needs health.token_env or "
            "health.token_file",
        ),
        (
            edit("  id: pc1\n", "  id: pc/1\n"),
            "line.yaml:2: collector.id: 'pc/1' must not contain '/', '#', '+' or spaces",
        ),
        (
            edit("  - name: tester-1\n", "  - name: tester 1\n"),
            "line.yaml:12: devices[0].name: 'tester 1' is not a valid name",
        ),
        (
            edit("    host: 127.0.0.1\n", "    host: 127.0.0.1\n    poll_interval_ms: 5\n"),
            "line.yaml:16: devices[0].poll_interval_ms: "
            "Input should be greater than or equal to 10",
        ),
        (
            BASE + "mqtt:\n  password_env: A\n  password_file: /b\n",
            "line.yaml:26: mqtt: give password_env or password_file, not both",
        ),
        (
            BASE + "mqtt:\n  tls:\n    cert_file: /c.pem\n",
            "line.yaml:27: mqtt.tls: cert_file and key_file must be given together",
        ),
        (
            BASE + "mqtt:\n  version: 4\n",
            "line.yaml:27: mqtt.version: Input should be '5' or '3.1.1'; got 4",
        ),
        (
            edit(
                "buffer:\n  path: /tmp/buffer.db\n",
                "buffer:\n  path: /tmp/buffer.db\n  max_readings: 10\n",
            ),
            "line.yaml:7: buffer.max_readings: Input should be greater than or equal to 1000",
        ),
        ("collector: [\n", "line.yaml:2: (yaml): expected the node content"),
        ("- a\n- b\n", "line.yaml:1: (top level): the file must be a YAML mapping"),
    ],
)
def test_error_names_file_line_path_and_what_is_allowed(text: str, expected: str) -> None:
    found = problems(text)
    assert any(p.startswith(expected) for p in found), "\n".join(found)


def test_every_problem_is_reported_not_just_the_first() -> None:
    text = edit("  site: plant-a\n", "").replace("        address: 0\n", "        address: x\n")
    found = problems(text)
    assert len(found) == 2
    assert found[0].startswith("line.yaml:1: collector.site: required")
    assert found[1].startswith("line.yaml:18: devices[0].tags[0].address: Input should be a valid")


def test_tag_wider_than_the_device_request_limit() -> None:
    text = edit(
        "    host: 127.0.0.1\n",
        "    host: 127.0.0.1\n    workarounds: {max_registers_per_request: 4}\n",
    )
    assert any(
        "spans 8 registers, more than workarounds.max_registers_per_request (4)" in p
        for p in problems(text)
    )


def test_missing_password_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_SUCH_SECRET", raising=False)
    path = tmp_path / "c.yaml"
    path.write_text(BASE + "mqtt:\n  username: u\n  password_env: NO_SUCH_SECRET\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        f"{path}:28: mqtt.password_env: environment variable 'NO_SUCH_SECRET' is not set"
    ]
    monkeypatch.setenv("NO_SUCH_SECRET", "s3cret")
    password = load_config(path).mqtt.password()
    assert password is not None
    assert password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(load_config(path).mqtt.password())


def test_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    path = tmp_path / "c.yaml"
    path.write_text(BASE + f"mqtt:\n  username: u\n  password_file: {secret}\n")
    password = load_config(path).mqtt.password()
    assert password is not None
    assert password.get_secret_value() == "from-file"


def test_unreadable_file() -> None:
    with pytest.raises(ConfigError, match=r"nope.yaml:0: \(file\): cannot read"):
        load_config("/nonexistent/nope.yaml")


def test_check_command_ok_prints_the_request_plan(tmp_path: Path) -> None:
    text = (REPO / "config" / "minimal.yaml").read_text()
    path = tmp_path / "minimal.yaml"
    path.write_text(text.replace("/var/lib/collector/buffer.db", str(tmp_path / "b.db")))
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tester-1: modbus_tcp 192.0.2.10:502 unit 1: 1 tags -> 1 request(s) per poll" in (
        result.stdout
    )


def test_check_command_coalesces_the_example_line() -> None:
    result = run_cli(
        "check",
        "--config",
        str(REPO / "config" / "functional-test-line.yaml"),
        env={"COLLECTOR_MQTT_PASSWORD": "x"},
    )
    # The CA file of the example does not exist on a test machine: reported, not a traceback.
    assert result.returncode == 2
    assert "mqtt.tls.ca_file: file '/etc/collector/ca.pem' does not exist" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_check_command_reports_every_problem_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        textwrap.dedent(edit("  site: plant-a\n", "").replace("type: float32", "type: real"))
    )
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 2
    lines = result.stdout.strip().splitlines()
    assert lines[0] == f"{path}:1: collector.site: required field is missing"
    assert lines[1].startswith(f"{path}:19: devices[0].tags[0].type: Input should be 'bool'")
    assert "Traceback" not in result.stderr


CSV_BASE = BASE.replace(
    "    tags:\n      - name: voltage\n",
    "    tags_csv: map.csv\n    tags:\n      - name: voltage\n",
)
CSV_OK = """\
name,table,address,type,word_order,scale,unit,bit,count
force,input_register,0,int32,little,0.01,kN,,
,,,,,,,,
clamp,holding_register,20,bool,,,,3,
label,holding_register,30,string,,,,,4
"""


def csv_problems(tmp_path: Path, csv_text: str, config: str = CSV_BASE) -> list[str]:
    (tmp_path / "map.csv").write_text(csv_text)
    with pytest.raises(ConfigError) as info:
        parse_config(config, str(tmp_path / "line.yaml"))
    return info.value.problems


def test_tags_from_a_csv_register_map(tmp_path: Path) -> None:
    (tmp_path / "map.csv").write_text("\ufeff" + CSV_OK)  # with the BOM a spreadsheet writes
    config = parse_config(CSV_BASE, str(tmp_path / "line.yaml"))
    tags = {t.name: t for t in config.devices[0].tags}
    assert list(tags) == ["voltage", "serial", "force", "clamp", "label"]
    force = tags["force"]
    assert (force.table.value, force.address, force.type.value) == ("input_register", 0, "int32")
    assert (force.word_order.value if force.word_order else None, force.scale) == ("little", 0.01)
    assert force.unit == "kN"
    assert (tags["clamp"].bit, tags["label"].count) == (3, 4)


@pytest.mark.parametrize(
    ("csv_text", "expected"),
    [
        (
            CSV_OK.replace("force,input_register,0,int32", "force,input_register,0,flot32"),
            "map.csv:2: type: Input should be 'bool', 'int16'",
        ),
        (
            CSV_OK.replace("clamp,holding_register,20", "clamp,holding_register,-4"),
            "map.csv:4: address: Input should be greater than or equal to 0",
        ),
        (
            CSV_OK + "force,coil,9,bool,,,,,\n",
            "map.csv:6: name: duplicate tag name 'force' (also on line 2)",
        ),
        (
            CSV_OK.replace("name,table,address", "name,tabel,address"),
            "map.csv:1: (header): missing column(s) table; unknown column(s) tabel; allowed: "
            "name, table, address",
        ),
    ],
)
def test_csv_errors_name_the_file_line_and_column(
    tmp_path: Path, csv_text: str, expected: str
) -> None:
    found = csv_problems(tmp_path, csv_text)
    assert any(expected in p for p in found), found
    assert all(p.startswith(str(tmp_path / "map.csv")) for p in found)


def test_a_missing_csv_is_a_config_error_at_its_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(CSV_BASE, str(tmp_path / "line.yaml"))
    (problem,) = info.value.problems
    assert problem.startswith(f"{tmp_path / 'line.yaml'}:16: devices[0].tags_csv: cannot read ")
    assert "No such file" in problem
