"""``collector store run | check | migrate | gaps | unit | units | prune | report``
(docs/store.md; the report: docs/report.md, ``store/report/``).

Exit codes as the collector's: 0 success, 1 start-up failure (e.g. the database cannot be
reached for a query), 2 invalid configuration or a database schema this store must not run on
(store.migrate); ``gaps`` exits 3 when something is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from common.errors import ConfigError, StartupError
from store.config import StoreConfig, load_store_config
from store.migrate import SchemaRefused, migrate, schema_state

log = logging.getLogger("store")

EXIT_STARTUP, EXIT_CONFIG, EXIT_GAPS = 1, 2, 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="collector store", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, text: str, db: bool = True) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--config", type=Path, default=None, help="store.yaml")
        if db:
            cmd.add_argument("--db", default=None, help="database URL (instead of the config's)")
        return cmd

    run = command("run", "subscribe and store until SIGINT/SIGTERM", db=False)
    run.add_argument("--client-id", default=None, help="MQTT client id (instead of the config's)")
    command("check", "validate store.yaml, then read the database's schema revision")
    command("migrate", "upgrade the database's schema to this version's (prints from and to)")
    gaps = command("gaps", "per collector and outbox: high-water mark and missing seq ranges")
    gaps.add_argument("--json", action="store_true", help="JSON instead of a table")
    unit = command("unit", "a unit's genealogy as JSON (or CSV files)")
    unit.add_argument("serial")
    unit.add_argument("--csv", type=Path, default=None, metavar="DIR", help="write CSV files")
    units = command("units", "search unit records (JSON lines)")
    units.add_argument("--serial", default=None, help="serial, * as a wildcard")
    units.add_argument("--operation", default=None)
    units.add_argument("--verdict", default=None)
    units.add_argument("--work-order", default=None)
    units.add_argument("--golden", choices=["true", "false"], default=None)
    units.add_argument("--since", default=None, help="an age (36h, 7d) or an RFC 3339 time")
    units.add_argument("--until", default=None, help="an RFC 3339 time")
    units.add_argument("--limit", type=int, default=1000)
    prune = command("prune", "delete readings older than --older-than (unit records stay)")
    prune.add_argument("--older-than", default=None, help="an age such as 90d (default: config)")
    from store.report import cli as report_cli  # noqa: PLC0415 - its own options

    report = command("report", "the pilot-run report (docs/report.md)", db=False)
    report_cli.add_arguments(report)  # --db (default $STORE_DB_URL) and the report's options
    from store.record import cli as record_cli  # noqa: PLC0415 - audit verify, runs

    record_cli.add_commands(sub, command)
    return parser


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    try:
        config = load_store_config(args.config) if args.config else StoreConfig()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    if args.command in ("check", "run"):
        # A SQLite database that can never work stops check and run alike (store.sqlite_check);
        # a database server that is down is retried by run.
        from store.sqlite_check import database_problem  # noqa: PLC0415

        problem = database_problem(config.database.url, args.config)
        if problem is not None:
            print(problem, file=sys.stderr)
            return EXIT_CONFIG
    if args.command == "check":
        print(f"{args.config or '(defaults)'}: OK, database {_shown_url(config, args.db)}")
        return _check_schema(config, args.db)
    if args.command == "report":
        from store.report import cli as report_cli  # noqa: PLC0415

        if not args.db and args.config:
            args.db = config.database.url
        return report_cli.run(args)
    if args.command == "run":
        if args.client_id:
            config = config.model_copy(
                update={"mqtt": config.mqtt.model_copy(update={"client_id": args.client_id})}
            )
        return run_store(config)
    from store.record import cli as record_cli  # noqa: PLC0415

    if args.command in record_cli.COMMANDS:
        return record_cli.run(args, config)
    try:
        if args.command == "migrate":
            return _migrate(config, args.db)
        engine = _engine(config, args.db)
        if args.command == "gaps":
            return _gaps(engine, args.json)
        if args.command == "unit":
            return _unit(engine, args.serial, args.csv)
        if args.command == "units":
            return _units(engine, args)
        if args.command == "prune":
            return _prune(engine, config, args.older_than)
    except sa.exc.SQLAlchemyError as exc:
        print(f"database error: {getattr(exc, 'orig', None) or exc}", file=sys.stderr)
        return EXIT_STARTUP
    except (ValueError, SchemaRefused) as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_CONFIG  # pragma: no cover - argparse rejects unknown commands


def _shown_url(config: StoreConfig, url: str | None = None) -> str:
    return sa.engine.make_url(url or config.database.url).render_as_string(hide_password=True)


def _connect(config: StoreConfig, url: str | None) -> sa.Engine:
    from store.db import connect  # noqa: PLC0415
    from store.service import database_engine  # noqa: PLC0415

    return connect(url) if url else database_engine(config)


def _engine(config: StoreConfig, url: str | None) -> sa.Engine:
    """The database of a query command, at the schema head (a query on a new file finds
    empty tables; database.migrate: off refuses one that is not there)."""
    engine = _connect(config, url)
    migrate(engine, config.database.migrate, timescaledb=False)
    return engine


def _migrate(config: StoreConfig, url: str | None) -> int:
    engine = _connect(config, url)
    before = migrate(engine, "auto", config.database.timescaledb)
    if before.at_head:
        print(f"schema: {before.head}, the head already; nothing to do")
    else:
        shown = before.current or ("none (made before migrations)" if before.legacy else "none")
        print(f"schema: migrated from {shown} to {before.head}")
    return 0


def _check_schema(config: StoreConfig, url: str | None) -> int:
    """Print the database's schema state; exit as ``run`` would for it (2: it refuses)."""
    parsed = sa.engine.make_url(url or config.database.url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").exists():
        print("schema: no database file yet (run or migrate creates it)")
        return 0 if config.database.migrate == "auto" else EXIT_CONFIG
    try:
        state = schema_state(_connect(config, url))
    except (sa.exc.SQLAlchemyError, ValueError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        print(f"schema: cannot read the database: {reason}", file=sys.stderr)
        return EXIT_STARTUP
    print(f"schema: {state.describe()}")
    if not state.known:
        return EXIT_CONFIG
    if not state.at_head and config.database.migrate == "off":
        print("database.migrate is off: run `collector store migrate` before `run`",
              file=sys.stderr)  # fmt: skip
        return EXIT_CONFIG
    return 0


def _json(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


def _gaps(engine: sa.Engine, as_json: bool) -> int:
    from store.status import gap_report  # noqa: PLC0415

    report = gap_report(engine)
    if as_json:
        print(json.dumps([g.as_dict() for g in report], indent=2, default=str))
    else:
        print(f"{'collector':<20} {'outbox':<17} {'kind':<9} {'high water':>11} "
              f"{'highest':>11} {'missing':>9}  ranges")  # fmt: skip
        for g in report:
            shown = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b, _ in g.missing[:10])
            if len(g.missing) > 10:
                shown += f", ... ({len(g.missing)} ranges)"
            figures = f"{_text(g.high_water):>11} {_text(g.high):>11} {g.missing_count:>9}"
            print(f"{g.collector:<20} {g.outbox or '-':<17} {g.kind:<9} {figures}  {shown}")
            if g.never_assigned:  # announced by the collector: no error
                jumps = ", ".join(f"{a}-{b}" for a, b in g.never_assigned[:10])
                print(f"{'':<20} {'':<17} {'':<9} never assigned (no error): {jumps}")
    return EXIT_GAPS if any(g.missing for g in report) else 0


def _text(value: object) -> str:
    return "-" if value is None else str(value)


def _unit(engine: sa.Engine, serial: str, csv_dir: Path | None) -> int:
    from store.genealogy import unit_genealogy, write_csv  # noqa: PLC0415

    found = unit_genealogy(engine, serial)
    if found is None:
        print(f"no unit {serial!r} in the store", file=sys.stderr)
        return EXIT_STARTUP
    if csv_dir is not None:
        for path in write_csv(found, csv_dir):
            print(path)
        return 0
    print(json.dumps(found, indent=2, default=str, ensure_ascii=False))
    return 0


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An age (``90d``, ``36h``, ``15m``, ``30s``) back from now, or an RFC 3339 time."""
    now = now or datetime.now(UTC)
    units = {"d": 86_400, "h": 3600, "m": 60, "s": 1}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return now - timedelta(seconds=float(text[:-1]) * units[text[-1]])
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an age (90d, 36h, 15m) nor an RFC 3339 time"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _units(engine: sa.Engine, args: argparse.Namespace) -> int:
    from store.genealogy import UnitQuery, search_units  # noqa: PLC0415

    query = UnitQuery(
        serial=args.serial,
        operation=args.operation,
        verdict=args.verdict,
        work_order=args.work_order,
        golden=None if args.golden is None else args.golden == "true",
        since=None if args.since is None else parse_time(args.since),
        until=None if args.until is None else parse_time(args.until),
        limit=args.limit,
    )
    for unit in search_units(engine, query):
        print(_json(unit))
    return 0


def _prune(engine: sa.Engine, config: StoreConfig, older_than: str | None) -> int:
    from store.retention import prune_readings  # noqa: PLC0415

    if older_than is not None:
        cutoff = parse_time(older_than)
    elif config.retention.readings_max_age_days is not None:
        cutoff = datetime.now(UTC) - timedelta(days=config.retention.readings_max_age_days)
    else:
        print("nothing to prune: give --older-than or retention.readings_max_age_days",
              file=sys.stderr)  # fmt: skip
        return EXIT_CONFIG
    print(f"deleted {prune_readings(engine, cutoff)} reading(s) older than {cutoff.isoformat()}")
    return 0


def run_store(config: StoreConfig) -> int:
    from store.service import StoreService  # noqa: PLC0415

    async def main_loop() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        service = StoreService(config)
        log.info(
            "store: database %s, broker %s:%d, http %s",
            _shown_url(config),
            config.mqtt.host,
            config.mqtt.port,
            f"{config.http.host}:{config.http.port}" if config.http.enabled else "off",
        )
        await service.run(stop)

    try:
        asyncio.run(main_loop())
    except StartupError as exc:
        log.error("%s", exc)  # noqa: TRY400 - an expected start-up failure: no traceback
        return EXIT_STARTUP
    except SchemaRefused as exc:
        log.error("%s", exc)  # noqa: TRY400 - a schema this store must not touch: no traceback
        return EXIT_CONFIG
    return 0
