"""A buffer.path that ``run`` cannot use is refused by ``collector check`` already (issue 25,
item 2): FILE:LINE: buffer.path: problem, exit 2, never a traceback; ``run`` says the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import CASES, run_cli

BASE = (CASES / "small-line.yaml").read_text()


def _cases(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """name: (the YAML value of buffer.path, the problem said)."""
    folder = tmp_path / "state"
    folder.mkdir()
    return {
        "empty": ('""', "is empty: give the SQLite file, e.g. /var/lib/collector/buffer.db"),
        "folder": (str(folder), f"{str(folder)!r} is a folder: give the SQLite file inside it"),
        "trailing slash": (
            f"{tmp_path}/later/",
            f"'{tmp_path}/later/' names a folder: give the SQLite file inside it",
        ),
        "/dev/null": (
            "/dev/null",
            "'/dev/null' is not a regular file (a device or a pipe): the buffer is an SQLite "
            "file, with its journal beside it",
        ),
        "NUL": (
            f'"{tmp_path}/b\\0.db"',
            f"'{tmp_path}/b\\x00.db' contains a NUL character",
        ),
    }


@pytest.mark.parametrize("case", ["empty", "folder", "trailing slash", "/dev/null", "NUL"])
@pytest.mark.parametrize("command", ["check", "run"])
def test_check_and_run_refuse_a_buffer_path_run_cannot_use(
    tmp_path: Path, case: str, command: str
) -> None:
    value, problem = _cases(tmp_path)[case]
    path = tmp_path / "line.yaml"
    path.write_text(BASE.replace("  path: /tmp/buffer.db\n", f"  path: {value}\n"))
    result = run_cli(command, "--config", str(path))
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    assert f"{path}:6: buffer.path: {problem}" in output.splitlines(), output
