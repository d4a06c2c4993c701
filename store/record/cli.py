"""``collector store audit verify``, ``collector store runs [list | show ID | report ID
[--format json|html]]`` and ``collector store pilot open --protocol FILE``.

``pilot open`` does what ``POST /runs`` does, as the person of store.yaml's ``people`` whose
token it is given (``--token-file``, or the environment variable ``COLLECTOR_STORE_TOKEN``):
the same rule as over HTTP, every write by a named person. It prints the run's id, version
and SHA-256 as JSON; exit 2 for an unreadable or invalid protocol or an unknown token.

``audit verify`` exits 0 when the chain and every record row match, 1 naming the first entry
that does not (or when the database cannot be read), 2 on a bad command line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from store.config import StoreConfig

COMMANDS = frozenset({"audit", "runs", "pilot"})
#: Where ``pilot open`` reads the person's token when no --token-file is given.
TOKEN_ENV = "COLLECTOR_STORE_TOKEN"  # noqa: S105 - the name of the variable, not a token
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
    pilot = command("pilot", "open a pilot run from its protocol file (as POST /runs)")
    pilot.add_argument("action", choices=["open"])
    pilot.add_argument("--protocol", type=Path, required=True, help="the protocol YAML")
    pilot.add_argument(
        "--token-file", type=Path, default=None, help=f"the person's token (else ${TOKEN_ENV})"
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
    if args.command == "pilot":
        return _open(args, config)
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


def _open(args: argparse.Namespace, config: StoreConfig) -> int:
    """``pilot open``: the run (or its new version) opened by the token's person."""
    from store.record.errors import RecordError  # noqa: PLC0415
    from store.record.people import People  # noqa: PLC0415
    from store.record.runs import open_run  # noqa: PLC0415

    try:
        text = args.protocol.read_text(encoding="utf-8")
        token = (
            args.token_file.read_text(encoding="utf-8").strip()
            if args.token_file is not None
            else os.environ.get(TOKEN_ENV, "")
        )
    except (OSError, UnicodeDecodeError) as exc:
        print(f"pilot open: {exc}", file=sys.stderr)
        return EXIT_USAGE
    person = People(config.people).find(token)
    if person is None:
        # The token itself is never shown.
        print(
            f"pilot open: the token (--token-file or ${TOKEN_ENV}) is no person's of the "
            "config's people (give --config store.yaml)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    engine = _engine(config, args.db, args.config is not None)
    if engine is None:
        return EXIT_USAGE
    try:
        created, run_ = open_run(engine, person, text)
    except RecordError as exc:
        print(f"pilot open: {args.protocol}: {exc.detail}", file=sys.stderr)
        return EXIT_USAGE
    except sa.exc.SQLAlchemyError as exc:
        print(f"database error: {getattr(exc, 'orig', None) or exc}", file=sys.stderr)
        return EXIT_MISMATCH
    print(json.dumps({**run_, "created": created}))
    return 0
