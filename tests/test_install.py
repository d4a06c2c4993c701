"""deploy/install.sh under a root prefix (no container here: no user is created, systemctl is
not called): what it installs, that a second run changes nothing, and what --uninstall keeps."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "deploy" / "install.sh"


def install(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every file and folder under root with its mode, size and modification time."""
    out = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        out[str(path.relative_to(root))] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return out


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.slow
@pytest.mark.timeout(600)  # a pip install, on a busy machine
def test_install_twice_then_uninstall_and_purge(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = install("--prefix", str(root))
    assert "install: --prefix: no user created" in first.stdout
    venv = root / "opt/collector/venv/bin/collector"
    config = root / "etc/collector/collector.yaml"
    assert os.access(venv, os.X_OK)
    assert config.read_text() == (REPO / "config/minimal.yaml").read_text()
    assert (mode(root / "etc/collector"), mode(config)) == (0o750, 0o640)
    assert mode(root / "etc/collector/collector.env") == 0o600
    unit = root / "etc/systemd/system/collector.service"
    assert unit.read_text() == (REPO / "systemd/collector.service").read_text()
    assert (root / "opt/collector/docs/deployment.md").exists()
    # The installed command works, and takes the starter config.
    check = subprocess.run(
        [str(venv), "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    # A technician edits the config; running the installer again changes nothing at all.
    config.write_text(config.read_text().replace("line1-pc1", "line1-pc7"))
    before = snapshot(root)
    second = install("--prefix", str(root))
    assert snapshot(root) == before
    assert second.stdout.splitlines() == ["install: --prefix: no user created", "install: done"]
    # --uninstall removes the software and the unit, keeps the config and the buffer.
    state = root / "var/lib/collector"
    state.mkdir(parents=True)
    (state / "buffer.db").write_bytes(b"readings")
    install("--prefix", str(root), "--uninstall")
    assert not (root / "opt/collector").exists()
    assert not unit.exists()
    assert "line1-pc7" in config.read_text()
    assert (state / "buffer.db").read_bytes() == b"readings"
    # --purge removes those too.
    install("--prefix", str(root), "--uninstall", "--purge")
    assert not (root / "etc/collector").exists()
    assert not state.exists()


def test_the_reinstall_hash_covers_every_package_the_wheel_ships() -> None:
    # A change in a package the hash leaves out would not be installed by the next run.
    import tomllib

    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in include}
    hashed = next(line for line in SCRIPT.read_text().splitlines() if "find pyproject.toml" in line)
    assert packages == set(hashed.split()) & packages, hashed
    assert packages == {"contract", "common", "collector", "drivers", "store", "quality"}


def test_purge_alone_is_refused() -> None:
    result = subprocess.run(
        ["bash", str(SCRIPT), "--purge"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert "--purge goes with --uninstall" in result.stderr


def release_copy(dest: Path) -> Path:
    """The repository's files as an unpacked release has them: no .git, no venv."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    return dest


@pytest.mark.slow
@pytest.mark.timeout(600)  # three pip installs, on a busy machine
def test_install_from_a_release_twice_changes_nothing(tmp_path: Path) -> None:
    """From a folder without .git (an unpacked release tarball), a second run reinstalls
    nothing, though pip's build left files (build/, *.egg-info) in that folder; a change to
    the package's sources is installed."""
    source = release_copy(tmp_path / "shopfloor-collector-0.1.0")
    root = tmp_path / "root"
    first = install("--prefix", str(root), "--source", str(source))
    assert any(
        line.startswith("install: installed collector ") for line in first.stdout.splitlines()
    )
    before = snapshot(root)
    second = install("--prefix", str(root), "--source", str(source))
    assert second.stdout.splitlines() == ["install: --prefix: no user created", "install: done"]
    assert snapshot(root) == before
    # A fix in the contract package (outside collector/: the hash covers every package).
    reading = source / "contract" / "records.py"
    reading.write_text(reading.read_text() + "\n# a fix in the next release\n")
    third = install("--prefix", str(root), "--source", str(source))
    assert any(
        line.startswith("install: installed collector ") for line in third.stdout.splitlines()
    )
