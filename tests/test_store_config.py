"""store.yaml: the shipped example loads, mistakes are reported as FILE:LINE: path: problem,
and ``collector store check`` runs the same validation."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from common.errors import ConfigError
from store.cli import parse_time
from store.config import load_store_config, parse_store_config
from store.mqtt import topic_filters

REPO = Path(__file__).resolve().parent.parent


def test_example_config_loads_with_the_defaults_it_documents() -> None:
    config = load_store_config(REPO / "config" / "store.yaml")
    assert config.database.url == "sqlite:////var/lib/collector-store/store.db"
    assert config.http.host == "127.0.0.1"
    assert config.mqtt.shared_group is None
    assert (
        config.ingest.quarantine_max_rows,
        config.ingest.quarantine_max_total_bytes,
        config.ingest.quarantine_max_age_days,
    ) == (10_000, 64 * 1024 * 1024, 90.0)
    assert parse_store_config("") == parse_store_config(
        "mqtt: {receive_maximum: 200}\nhttp: {port: 8190}\n"
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("database:\n  url: mysql://x\n", "f.yaml:2: database.url: String should match pattern"),
        ("mqtt:\n  host: h\n  prot: 1\n", "f.yaml:3: mqtt.prot: unknown key"),
        (
            "ingest:\n  max_batch_messages: 0\n",
            "f.yaml:2: ingest.max_batch_messages: Input should be greater than or equal to 1",
        ),
        ("mqtt:\n  shared_group: a/b\n", "f.yaml:2: mqtt.shared_group: String should match"),
        ("http: [1]\n", "f.yaml:1: http: Input should be a valid dictionary"),
        (
            "mqtt: {reconnect_min_ms: 900, reconnect_max_ms: 100}\n",
            "f.yaml:1: (top level): mqtt.reconnect_max_ms must be >= mqtt.reconnect_min_ms",
        ),
        (
            "ingest:\n  quarantine_max_rows: 0\n",
            "f.yaml:2: ingest.quarantine_max_rows: Input should be greater than or equal to 10",
        ),
        (
            "ingest:\n  quarantine_max_age_days: 0\n",
            "f.yaml:2: ingest.quarantine_max_age_days: Input should be greater than 0",
        ),
        (
            "ingest:\n  quarantine_max_bytes: 100000\n  quarantine_max_total_bytes: 50000\n",
            "f.yaml:3: ingest.quarantine_max_total_bytes: is 50000, must be >= "
            "ingest.quarantine_max_bytes (100000): one kept payload must fit",
        ),
        (
            "ingest:\n  quarantine_max_total_bytes: 2000\n",
            "f.yaml:2: ingest.quarantine_max_total_bytes: is 2000, must be >= "
            "ingest.quarantine_max_bytes (65536)",
        ),
        (
            "ingest:\n  quarantine_max_rows: ten\n",
            "f.yaml:2: ingest.quarantine_max_rows: Input should be a valid integer",
        ),
        ("a: [\n", "f.yaml:2: (yaml): "),
    ],
)
def test_mistakes_name_file_line_and_field(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_store_config(text, "f.yaml")
    assert caught.value.problems[0].startswith(problem), caught.value.problems


def test_missing_secret_and_the_check_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "store.yaml"
    path.write_text("mqtt:\n  username: u\n  password_env: NO_SUCH_VARIABLE_HERE\n")
    monkeypatch.delenv("NO_SUCH_VARIABLE_HERE", raising=False)
    with pytest.raises(ConfigError, match="environment variable NO_SUCH_VARIABLE_HERE"):
        load_store_config(path)
    done = subprocess.run(
        [sys.executable, "-m", "collector", "store", "check", "--config", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "mqtt.password_env: environment variable NO_SUCH_VARIABLE_HERE is not set" in done.stderr


def test_topic_filters_with_and_without_a_shared_group() -> None:
    config = parse_store_config("mqtt: {shared_group: stores, topic_prefix: plant}\n")
    assert topic_filters(config.mqtt) == [
        "$share/stores/plant/+/+/+/readings", "$share/stores/plant/+/+/+/units",
        "$share/stores/plant/+/+/+/deviations",  # recorded on line PCs (store/record/line.py)
        "$share/stores/plant/+/+/+/gaps",  # what collectors say of seqs they will never send
        "plant/+/+/+/meta/+",  # retained: never shared
        "plant/+/+/+/context/#",  # unit-context versions (schema 3), retained: the same
    ]  # fmt: skip
    assert topic_filters(parse_store_config("").mqtt)[0] == "collector/+/+/+/readings"


def test_times_on_the_command_line() -> None:
    now = datetime(2026, 11, 21, 12, tzinfo=UTC)
    assert parse_time("36h", now) == now - timedelta(hours=36)
    assert parse_time("2026-11-20T00:00:00Z", now) == datetime(2026, 11, 20, tzinfo=UTC)
    with pytest.raises(ValueError, match="neither an age"):
        parse_time("yesterday", now)


def test_store_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    from tests.helpers import require_systemd_analyze

    analyze = require_systemd_analyze()
    unit = tmp_path / "collector-store.service"
    text = (REPO / "systemd" / "collector-store.service").read_text()
    collector = Path(sys.executable).with_name("collector")
    unit.write_text(text.replace("/opt/collector/venv/bin/collector", str(collector)))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
    for line in (
        "ExecStartPre=/opt/collector/venv/bin/collector store check --config",
        "ExecStart=/opt/collector/venv/bin/collector store run --config /etc/collector/store.yaml",
        "Type=notify",
        "User=collector-store",
        "ProtectSystem=strict",
    ):
        assert line in text, line
