"""``collector store audit verify`` and ``collector store runs [list | show ID | report ID
[--format json|html]]``.

``audit verify`` exits 0 when the chain and every record row match, 1 naming the first entry
that does not (or when the database cannot be read), 2 on a bad command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from store.config import StoreConfig

COMMANDS = frozenset({"audit", "runs"})
EXIT_MISMATCH, EXIT_USAGE = 1, 2


def add_commands(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    audit = command("audit", "the pilot record's audit trail (docs/pilot-record.md)")
    audit.add_argument("action", choices=["verify"], help="verify: walk the hash chain")
    runs = command("runs", "pilot runs of the record: list, show ID, report ID (JSON)")
    runs.add_argument("action", choices=["list", "show", "report"])
    runs.add_argument("id", type=int, nargs="?", help="the run (show, report)")
    runs.add_argument("--version", type=int, default=None, help="report: protocol version")
    runs.add_argument(
        "--format", choices=["json", "html"], default="json", help="report: json or html"
    )
    runs.add_argument(
        "--unit-base", default="", help="report html: prefix of the unit links (the store's URL)"
    )


def _engine(config: StoreConfig, url: str | None, given_config: bool) -> sa.Engine | None:
    from store.db import connect  # noqa: PLC0415
    from store.service import database_engine  # noqa: PLC0415

    if url:
        return connect(url)
    if given_config:
        return database_engine(config)
    print("give --db URL or --config store.yaml", file=sys.stderr)
    return None


def run(args: argparse.Namespace, config: StoreConfig) -> int:
    if args.command == "runs" and args.action != "list" and args.id is None:
        print(f"runs {args.action}: give the run's id", file=sys.stderr)
        return EXIT_USAGE
    try:
        engine = _engine(config, args.db, args.config is not None)
    except (ValueError, sa.exc.ArgumentError) as exc:
        print(f"--db: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if engine is None:
        return EXIT_USAGE
    try:
        if args.command == "audit":
            return _verify(engine)
        return _runs(engine, args)
    except sa.exc.SQLAlchemyError as exc:
        print(f"database error: {getattr(exc, 'orig', None) or exc}", file=sys.stderr)
        return EXIT_MISMATCH


def _verify(engine: sa.Engine) -> int:
    from store.record.audit import verify  # noqa: PLC0415

    if not sa.inspect(engine).has_table("audit"):
        print("audit: no audit table: nothing recorded (0 entries)")
        return 0
    checked = verify(engine)
    if checked.ok:
        print(f"audit: OK, {checked.entries} entries, last hash {checked.last_hash}")
        return 0
    print(
        f"audit: entry {checked.first_bad_id} does not match: {checked.why} "
        f"({checked.entries} entries read)",
        file=sys.stderr,
    )
    return EXIT_MISMATCH


def _runs(engine: sa.Engine, args: argparse.Namespace) -> int:
    from store.db import create_schema  # noqa: PLC0415
    from store.record import runs  # noqa: PLC0415
    from store.record.errors import RecordError  # noqa: PLC0415
    from store.record.report import run_report  # noqa: PLC0415

    create_schema(engine, timescaledb=False)  # a new file: no runs, not an error
    try:
        if args.action == "list":
            with engine.connect() as conn:
                found: Any = runs.list_runs(conn)
        elif args.action == "show":
            with engine.connect() as conn:
                version = runs.find_version(conn, args.id)
                found = {
                    "id": args.id,
                    "name": version.run_name,
                    "versions": runs.version_rows(conn, args.id),
                    "approvals": runs.approval_rows(conn, args.id),
                }
        elif args.format == "html":
            from store.record.html import run_report_html  # noqa: PLC0415

            page = run_report_html(engine, args.id, args.version, args.unit_base)
            sys.stdout.write(page.decode("utf-8"))
            return 0
        else:
            found = run_report(engine, args.id, args.version)
    except RecordError as exc:
        print(exc.detail, file=sys.stderr)
        return EXIT_MISMATCH
    print(json.dumps(found, indent=2, ensure_ascii=False))
    return 0
