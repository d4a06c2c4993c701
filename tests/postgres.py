"""A real PostgreSQL for tests and benchmarks: Debian's server binaries (initdb, pg_ctl) run on
a fresh cluster in a temporary folder, on a free loopback port, with the unix socket in that
folder too (nothing of the machine's own PostgreSQL is touched).

PostgreSQL refuses to run as root. When the tests run as root (CI does), the cluster belongs
to the ``postgres`` user that Debian's package creates, and the server runs as that user
(``runuser -u postgres``); the temporary folder is made in /tmp and handed to that user, since
pytest's own temporary folders are private to root. Any other user runs it as itself.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.helpers import free_port, port_open, wait_until


def postgres_bin() -> Path | None:
    """The newest /usr/lib/postgresql/*/bin that has initdb, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    return Path(found[-1]).parent if found else None


def _version(path: str) -> int:
    part = Path(path).parent.parent.name
    return int(part) if part.isdigit() else 0


class PostgresServer:
    def __init__(self) -> None:
        bin_dir = postgres_bin()
        assert bin_dir is not None, "PostgreSQL is not installed (apt-get install postgresql)"
        self.bin = bin_dir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="store-pg-"))
        self.data = self.root / "data"
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres"
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.db_user = self.user or pwd.getpwuid(os.geteuid()).pw_name

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        command = list(args)
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, check=check, capture_output=True, timeout=120)

    def init(self) -> None:
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", self.db_user,
            "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\n"
                # A test cluster: durability is the database's business, not what is tested.
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "shared_buffers = 128MB\nmax_connections = 50\n"
            )

    def start(self) -> None:
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
            "-w", "-t", "60", "start",
        )  # fmt: skip
        wait_until(lambda: port_open(self.port), 30, f"PostgreSQL on port {self.port}")

    def stop(self, mode: str = "fast") -> None:
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False
        )

    def create_database(self, name: str) -> str:
        self._run(
            str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
            self.db_user, name,
        )  # fmt: skip
        return self.url(name)

    def url(self, name: str = "postgres") -> str:
        return f"postgresql://{self.db_user}@127.0.0.1:{self.port}/{name}"

    def cleanup(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def require_postgres() -> None:
    """Store tests need Debian's PostgreSQL: fail on CI, skip (saying why) elsewhere."""
    import pytest  # the benchmarks use this module without pytest

    if postgres_bin() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed; .ci/run must install it")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql) - skipped")
