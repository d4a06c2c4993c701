"""`collector store report`: the pilot-run report as a file or on stdout.

The store's CLI adds the subcommand with ``add_arguments(parser)`` and calls ``run(args)``;
a CLI that already has a ``--db`` option and an engine passes ``add_arguments(parser,
db=False)`` and ``run(args, engine)``. ``python -m store.report.cli`` runs it alone. Exit
codes: 0 written, 1 the database cannot be read, 2 the protocol is invalid.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import sqlalchemy as sa

from common.errors import ConfigError
from store.report.protocol import load_protocol
from store.report.render import Format, render_report

DB_ENV = "STORE_DB_URL"


def add_arguments(parser: argparse.ArgumentParser, *, db: bool = True) -> None:
    parser.add_argument("--protocol", required=True, type=Path, help="the pilot protocol file")
    parser.add_argument(
        "--format", choices=[f.value for f in Format], default="html", help="default: html"
    )
    parser.add_argument("--out", type=Path, help="write here instead of stdout")
    if db:
        parser.add_argument(
            "--db",
            default=os.environ.get(DB_ENV),
            help=f"the database URL (sqlite:///PATH or postgresql://...); default ${DB_ENV}",
        )
    parser.add_argument(
        "--unit-base",
        default="",
        help="prefix of the units' genealogy links, e.g. http://store.example:8080 "
        "(default: /units/SERIAL on the same server)",
    )


def connect(url: str) -> sa.Engine:
    """The store's own connect() when the store package provides it, else a plain engine."""
    try:
        db = importlib.import_module("store.db")
    except ImportError:
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
        return sa.create_engine(url)
    return cast(Callable[[str], sa.Engine], db.connect)(url)


def run(args: argparse.Namespace, engine: sa.Engine | None = None) -> int:
    """Write the report; ``engine``: the caller's (kept open), else one for ``args.db``."""
    try:
        protocol = load_protocol(args.protocol)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    own = engine is None
    if engine is None:
        if not args.db:
            print(f"no database: give --db URL or set ${DB_ENV}", file=sys.stderr)
            return 2
        engine = connect(args.db)
    try:
        body = render_report(
            engine,
            protocol,
            args.format,
            protocol_name=args.protocol.name,
            unit_base=args.unit_base.rstrip("/"),
        )
    except sa.exc.SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        print(f"cannot read the store at {engine.url!r}: {reason}", file=sys.stderr)
        return 1
    finally:
        if own:
            engine.dispose()
    if args.out is None:
        sys.stdout.buffer.write(body)
    else:
        args.out.write_bytes(body)
        print(f"report written to {args.out} ({len(body)} bytes)", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="collector store report", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
