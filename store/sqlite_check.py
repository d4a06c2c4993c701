"""Whether a ``sqlite:///PATH`` database can work on this machine at all: ``collector store
check`` says why not, and ``run`` stops at once instead of retrying forever "degraded".

Only SQLite is judged here: its file is on this machine, so a missing folder, a folder, a file
in /proc or a file that is no database will never get better by waiting. A database server
(PostgreSQL) that does not answer may come back: the service retries it (store.service).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from urllib.parse import quote

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from common.yamlmodel import parse_yaml, read_text


def sqlite_problem(url: str) -> str | None:
    """Why the SQLite database of ``url`` can never be used here, or None (it opens, it was
    could be created, or ``url`` is not SQLite). A new file is created to try it, as the store
    would, and removed again."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        return f"not a database URL: {exc}"
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file:") or parsed.query.get("uri"):
        return None  # in memory, or an SQLite URI the store passes on as it is
    if "\0" in database:
        return f"{database!r} contains a NUL character"
    path = Path(database).absolute()
    folder = path.parent
    if path.is_dir():
        return f"{database!r} is a folder, not a database file"
    if not folder.exists():
        return f"folder {str(folder)!r} does not exist"
    if not folder.is_dir():
        return f"{str(folder)!r} is not a folder"
    if path.exists() and not path.is_file():
        return f"{database!r} is not a regular file (a device or a pipe)"
    if not os.access(folder, os.W_OK | os.X_OK):
        return (
            f"folder {str(folder)!r} is not writable by this user (SQLite needs its -wal and "
            "-shm files beside the database)"
        )
    existed = path.exists()
    try:
        # mode=rwc: read, write, create, as the store opens it; reading the schema reads the
        # file's header, so a file that is no database says so here.
        conn = sqlite3.connect(f"file:{quote(str(path))}?mode=rwc", uri=True, timeout=5)
        try:
            conn.execute("PRAGMA schema_version").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return f"cannot open {database!r} as an SQLite database: {exc}"
    finally:
        if not existed:
            # `check` leaves nothing behind: `run` or `migrate` creates the database.
            path.unlink(missing_ok=True)
    return None


def database_problem(url: str, config_path: Path | None) -> str | None:
    """``sqlite_problem`` as ``FILE:LINE: database.url: problem`` (store.yaml's line of the
    URL; line 1 when the file leaves it at its default)."""
    problem = sqlite_problem(url)
    if problem is None:
        return None
    if config_path is None:
        return f"(defaults): database.url: {problem}"
    doc = parse_yaml(read_text(config_path), str(config_path), empty_ok=True)
    return f"{config_path}:{doc.line(('database', 'url'))}: database.url: {problem}"
