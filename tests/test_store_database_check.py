"""A store whose SQLite database can never work stops ``check`` and ``run`` with
``FILE:LINE: database.url: problem`` and exit 2 (issue 25, item 5); a PostgreSQL server that is
down is retried by ``run``, with one log line per episode. Real parts: the CLI in a process,
SQLite files, mosquitto."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from store.sqlite_check import sqlite_problem
from tests.conftest import REPO
from tests.helpers import Mosquitto, free_port, port_open, wait_until
from tests.store_fixtures import StoreProcess


def _store(command: str, config: Path) -> subprocess.CompletedProcess[str]:
    # Bounded well below a run that would go on forever "degraded" (what it did before).
    return subprocess.run(
        [sys.executable, "-m", "collector", "store", command, "--config", str(config)],
        capture_output=True, text=True, timeout=30, check=False, cwd=REPO,
    )  # fmt: skip


def _cases(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """name: (the SQLite path, the problem said, or its start)."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.txt").write_text("minutes of the pilot-run meeting\n" * 20)
    return {
        "missing folder": (
            f"{tmp_path}/missing/store.db",
            f"folder '{tmp_path}/missing' does not exist",
        ),
        "folder": (f"{tmp_path}/folder", f"'{tmp_path}/folder' is a folder, not a database file"),
        "not a database": (
            f"{tmp_path}/notes.txt",
            f"cannot open '{tmp_path}/notes.txt' as an SQLite database: file is not a database",
        ),
        "/proc": ("/proc/self/status", ""),  # which problem depends on the user: any one
    }


@pytest.mark.parametrize("case", ["missing folder", "folder", "not a database", "/proc"])
@pytest.mark.parametrize("command", ["check", "run"])
def test_a_sqlite_database_that_can_never_work_stops_check_and_run(
    tmp_path: Path, mosquitto: Mosquitto, case: str, command: str
) -> None:
    path, problem = _cases(tmp_path)[case]
    config = tmp_path / "store.yaml"
    config.write_text(
        f"database:\n  url: sqlite:///{path}\nmqtt:\n  port: {mosquitto.port}\n"
        f"http:\n  port: {free_port()}\n"
    )
    result = _store(command, config)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"{config}:2: database.url: {problem}"), line
    assert len(line) > len(f"{config}:2: database.url: ")


def test_check_tries_a_new_sqlite_database_says_ok_and_leaves_nothing(tmp_path: Path) -> None:
    # The file could be created (it was, to try), and run or migrate will create it.
    config = tmp_path / "store.yaml"
    config.write_text(f"database:\n  url: sqlite:///{tmp_path / 'new.db'}\n")
    result = _store("check", config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        f"{config}: OK, database sqlite:///{tmp_path / 'new.db'}",
        "schema: no database file yet (run or migrate creates it)",
    ]
    assert list(tmp_path.iterdir()) == [config]


def test_sqlite_problem_leaves_servers_alone() -> None:
    # PostgreSQL that does not answer may come back: not judged here, retried by run.
    assert sqlite_problem(f"postgresql://store@127.0.0.1:{free_port()}/store") is None


def test_a_postgresql_server_that_is_down_is_retried_with_one_line_per_episode(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    url = f"postgresql://store@127.0.0.1:{free_port()}/store"  # nothing listens there
    store = StoreProcess(tmp_path, mosquitto, url, ingest={"retry_min_ms": 50, "retry_max_ms": 100})
    # check says why it cannot read the database now (exit 1, a start-up failure, not a config
    # that can never work); run keeps retrying the server.
    checked = _store("check", store.config)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "schema: cannot read the database: connection failed" in checked.stderr
    assert "Connection refused" in checked.stderr
    with store.log.open("ab") as log:
        store.process = subprocess.Popen(
            [sys.executable, "-m", "collector", "store", "run", "--config", str(store.config)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_until(lambda: port_open(store.port), 20, "the store's HTTP API")
        wait_until(lambda: store.metric('store_db_errors_total{reason="down"}') >= 5, 30, "retries")
        assert store.process.poll() is None  # still running, still retrying
        retrying = [
            line
            for line in store.log.read_text().splitlines()
            if "nothing acknowledged, retrying" in line
        ]
        assert len(retrying) == 1, store.log.read_text()[-2000:]
        assert "database down: " in retrying[0]
    finally:
        store.kill()
