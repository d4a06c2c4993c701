"""Start-up failures are one clear line and exit code 1, never a traceback."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.conftest import REPO
from tests.helpers import run_cli


def config_with(tmp_path: Path, buffer: str, health_port: int) -> Path:
    text = (REPO / "config" / "minimal.yaml").read_text()
    text = text.replace("/var/lib/collector/buffer.db", buffer)
    path = tmp_path / "c.yaml"
    path.write_text(text + f"health:\n  port: {health_port}\n")
    return path


def test_buffer_that_cannot_be_opened(tmp_path: Path) -> None:
    result = run_cli("run", "--config", str(config_with(tmp_path, "/nonexistent/dir/b.db", 0)))
    assert result.returncode == 1
    assert (
        "cannot start: buffer /nonexistent/dir/b.db: cannot open: unable to open database file"
        in (result.stderr)
    )
    assert "Traceback" not in result.stderr


def test_health_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            "run", "--config", str(config_with(tmp_path, str(tmp_path / "b.db"), port))
        )
    assert result.returncode == 1
    assert f"cannot start: health: cannot listen on 127.0.0.1:{port}: Address already in use" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
